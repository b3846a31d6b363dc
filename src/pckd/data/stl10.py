"""STL-10 from its binary distribution (``stl10_binary/``), as uint8 tensors.

The files are those of the official archive (and of torchvision's ``STL10``): ``train_X.bin`` / ``test_X.bin``
hold the images as raw uint8, 3 x 96 x 96 per image, each channel plane stored column-major (so a plane read
row-major is the transposed image); ``train_y.bin`` / ``test_y.bin`` hold one uint8 label per image, 1..10;
``class_names.txt`` (optional) names the classes in label order. The unlabelled split is not read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pckd.errors import UserError

FOLDER = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def _find_folder(root: Path) -> Path | None:
    """``root/stl10_binary`` or ``root`` itself, whichever holds ``train_X.bin``."""
    for candidate in (root / FOLDER, root):
        if (candidate / "train_X.bin").is_file():
            return candidate
    return None


def _download(root: Path) -> None:
    from torchvision import datasets

    try:
        datasets.STL10(str(root), split="train", download=True)  # fetches and md5-checks the whole archive
    except Exception as exc:  # network and archive errors alike end the same way for the user
        reason = " ".join(str(exc).split())
        raise UserError(
            f"data.download: could not fetch STL-10 into '{root}' ({type(exc).__name__}: {reason}); "
            f"check the internet connection or copy {FOLDER}/ there yourself and set data.download=false"
        ) from exc


def _class_names(folder: Path) -> list[str]:
    path = folder / "class_names.txt"
    if not path.is_file():
        return list(CLASSES)
    names = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(names) != len(CLASSES):
        raise UserError(f"data.root: '{path}' names {len(names)} classes, STL-10 has {len(CLASSES)}; "
                        "restore the original file or delete it")
    return names


def read_stl10_split(folder: Path, split: str) -> tuple[Tensor, Tensor]:
    """Images uint8 [N,3,96,96] and labels int64 [N] (0..9) of ``split`` (train | test) under ``folder``."""
    x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    for path in (x_path, y_path):
        if not path.is_file():
            raise UserError(f"data.root: '{path}' is missing; restore the complete {FOLDER}/ folder "
                            "or set data.download=true on an empty data.root")
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size == 0 or raw.size % IMAGE_BYTES:
        raise UserError(f"data.root: '{x_path}' has {raw.size} bytes, not a whole number of 3x96x96 images; "
                        "the file is truncated or not STL-10: replace it with the original")
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64)
    n = raw.size // IMAGE_BYTES
    if labels.size != n:
        raise UserError(f"data.root: '{y_path}' has {labels.size} labels for the {n} images of '{x_path}'; "
                        "replace both files with the originals")
    bad = labels[(labels < 1) | (labels > len(CLASSES))]
    if bad.size:
        raise UserError(f"data.root: label {int(bad[0])} in '{y_path}' is outside 1..{len(CLASSES)}; "
                        "the file is corrupt or not STL-10: replace it with the original")
    # [N, C, W, H] as stored (column-major planes) -> [N, C, H, W]
    images = torch.from_numpy(raw.reshape(n, 3, SIDE, SIDE)).transpose(2, 3).contiguous()
    return images, torch.from_numpy(labels - 1)


def load_stl10(root: str | os.PathLike, train: bool, download: bool = False) -> tuple[Tensor, Tensor, list[str]]:
    """One labelled split of STL-10: images uint8 [N,3,96,96], labels int64 [N] in 0..9, class names.

    ``root`` holds ``stl10_binary/`` (or is that folder); ``download`` fetches the official archive through
    torchvision when the files are missing."""
    root_path = Path(root).expanduser()
    folder = _find_folder(root_path)
    if folder is None and download:
        _download(root_path)
        folder = _find_folder(root_path)
    if folder is None:
        raise UserError(f"data.root: no STL-10 files under '{root_path}' (expected {root_path / FOLDER}/"
                        "train_X.bin); set data.root=... or data.download=true to fetch them (needs internet)")
    images, labels = read_stl10_split(folder, "train" if train else "test")
    return images, labels, _class_names(folder)
