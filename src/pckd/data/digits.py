"""The embedded dataset of ``pckd demo``: scikit-learn's 8x8 handwritten digits, shaped like CIFAR.

It ships inside scikit-learn (no download). Each 8x8 grey image (values 0..16) is scaled to 0..255, upscaled
to 32x32 by nearest-neighbour (every pixel becomes a 4x4 block: exact integer values, identical on every
platform, and the strokes stay sharp) and repeated over 3 channels. The split is fixed: 360 test images drawn
stratified by class with seed 0, the other 1437 for training.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

TEST_SIZE = 360
SPLIT_SEED = 0
CLASS_NAMES = [str(d) for d in range(10)]
UPSCALE = 4  # 8x8 -> 32x32, the CIFAR zoo's input side
IMAGE_SIZE = 8 * UPSCALE


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N,8,8]
    big = grey.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)  # nearest-neighbour
    rgb = np.ascontiguousarray(np.broadcast_to(big[:, None], (grey.shape[0], 3, IMAGE_SIZE, IMAGE_SIZE)))
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        rgb, labels, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=labels
    )
    return x_train, y_train, x_test, y_test


def load_digits_split(train: bool) -> tuple[Tensor, Tensor, list[str]]:
    """One split: images uint8 [N,3,32,32], labels int64 [N], class names ``"0".."9"`` (fresh tensors)."""
    x_train, y_train, x_test, y_test = _arrays()
    images, labels = (x_train, y_train) if train else (x_test, y_test)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), list(CLASS_NAMES)


@lru_cache(maxsize=1)
def digits_normalization() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of the training split scaled to [0, 1] (all channels are equal)."""
    x_train = _arrays()[0].astype(np.float64) / 255.0
    mean = tuple(float(v) for v in x_train.mean(axis=(0, 2, 3)))
    std = tuple(float(v) for v in x_train.std(axis=(0, 2, 3)))
    return mean, std  # type: ignore[return-value]
