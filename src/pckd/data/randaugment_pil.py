"""MLD's strong view in DataLoader workers (ImageFolder): the released RandAugment + Cutout on PIL images.

The same 14 ops, ranges and Cutout as :mod:`pckd.data.randaugment` (which runs them batched on the device),
here as the per-image Pillow calls of Jin et al.'s ``mdistiller/dataset/imagenet.py``, so a worker produces
what the released loader produced. :func:`apply_op` and :func:`cutout` take explicit parameters (the tests
compare them with the device version); :class:`RandAugmentCutout` draws them like the released code: ops and
magnitudes from Python's ``random``, the cut-out centre from NumPy's global generator (both seeded per worker
by PyTorch's DataLoader).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from pckd.data.randaugment import CUTOUT_FILL, CUTOUT_MAX, N_OPS_PER_IMAGE, OPS


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix)  # NEAREST, black fill: PIL's defaults


PIL_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Rotate": lambda img, v: img.rotate(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),  # type: ignore[arg-type]  # float, as released
    "TranslateX": lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
    "TranslateY": lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
}


def apply_op(img: Image.Image, name: str, magnitude: float) -> Image.Image:
    """One op of the released list on an RGB PIL image."""
    return PIL_OPS[name](img, magnitude)


def cutout(img: Image.Image, fraction: float, cx: float, cy: float) -> Image.Image:
    """The released ``Cutout(img, fraction)`` with the centre (cx, cy) given: nothing when fraction <= 0."""
    if fraction <= 0:
        return img
    size = fraction * img.size[0]
    w, h = img.size
    x0, y0 = int(max(0, cx - size / 2.0)), int(max(0, cy - size / 2.0))
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + size), min(h, y0 + size)), CUTOUT_FILL)
    return out


class RandAugmentCutout:
    """The released ``RandAugment(2, 10)``: two ops drawn with replacement, magnitudes uniform in their
    ranges, then Cutout of a side uniform in [0, 0.5) of the width; a PIL image in, a PIL image out."""

    def __call__(self, img: Image.Image) -> Image.Image:
        for name, low, high in random.choices(OPS, k=N_OPS_PER_IMAGE):
            img = apply_op(img, name, low + float(high - low) * random.random())
        fraction = random.random() * CUTOUT_MAX
        if fraction <= 0:
            return img
        w, h = img.size
        # np.random.uniform(w) is uniform(low=w, high=1.0): the released centre lies in (1, w]
        return cutout(img, fraction, float(np.random.uniform(w)), float(np.random.uniform(h)))
