"""Label checks, the quick-run subsets behind data.classes / data.train_limit / data.test_limit, and the
one-time resize behind data.resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.errors import UserError


def check_labels(labels: Tensor, num_classes: int, source: str) -> None:
    """Raise a UserError naming ``source`` unless every label lies in ``[0, num_classes)``."""
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise UserError(
            f"data: label {bad} in '{source}' is outside [0, {num_classes}) for its {num_classes} class names; "
            "the labels and the class list of this dataset do not match, fix or replace the file"
        )


def select_classes(
    images: Tensor, labels: Tensor, n_classes: int, available: int | None = None
) -> tuple[Tensor, Tensor]:
    """Keep the images of the first ``n_classes`` classes (labels < n_classes); labels stay as they are,
    since they are already ``0..n_classes-1``. ``available`` (the dataset's class count) is checked against."""
    if n_classes < 1 or (available is not None and n_classes > available):
        limit = f"1..{available}" if available is not None else "a positive number"
        raise UserError(f"data.classes={n_classes} is out of range; set it to {limit} or remove it")
    keep = labels < n_classes
    return images[keep], labels[keep]


def limit(images: Tensor, labels: Tensor, n: int, key: str = "data.train_limit") -> tuple[Tensor, Tensor]:
    """Keep the first ``n`` images (all of them when there are fewer); ``key`` names the setting in errors."""
    if n < 1:
        raise UserError(f"{key}={n} must be a positive number of images; set it to at least 1 or remove it")
    return images[:n], labels[:n]


def resize_images(images: Tensor, side: int, chunk: int = 2048) -> Tensor:
    """uint8 [N,3,H,W] -> uint8 [N,3,side,side] by antialiased bilinear resizing (rounded), in chunks of
    ``chunk`` images so a large set never needs a float copy of itself; unchanged when already that size."""
    if images.shape[-2:] == (side, side):
        return images
    out = torch.empty((images.shape[0], images.shape[1], side, side), dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk].float()
        resized = F.interpolate(block, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = resized.round().clamp(0, 255).to(torch.uint8)
    return out
