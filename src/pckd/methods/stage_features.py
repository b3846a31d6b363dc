"""Stage feature maps shared by the stage-wise methods (AT, NST, FT, FSP, ...): spatial matching and pairing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pckd.errors import UserError
from pckd.models.interface import feature_shapes


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool whichever map is larger down to the smaller (H, W) (RepDistiller's rule)."""
    h, w = min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3])
    if tuple(f_s.shape[2:]) != (h, w):
        f_s = F.adaptive_avg_pool2d(f_s, (h, w))
    if tuple(f_t.shape[2:]) != (h, w):
        f_t = F.adaptive_avg_pool2d(f_t, (h, w))
    return f_s, f_t


def check_paired_stages(method: str, student: nn.Module, teacher: nn.Module) -> None:
    """UserError unless student and teacher expose the same number (>= 2) of stages, each after the stem a
    (C, H, W) map; the message names both shape lists.

    Shared by the stage-wise methods (``at``, ``nst``, ...) that pair ``stages[1:]`` one to one.
    """
    shapes_s, shapes_t = feature_shapes(student).stages, feature_shapes(teacher).stages
    if len(shapes_s) < 2 or len(shapes_t) < 2:
        raise UserError(
            f"{method} needs at least two feature stages (stem + one stage) in student and teacher, got student "
            f"stages {shapes_s} and teacher stages {shapes_t}"
        )
    if any(len(shape) != 3 for shape in shapes_s[1:] + shapes_t[1:]):
        raise UserError(
            f"{method} needs (C, H, W) feature maps at every stage after the stem, got student stages {shapes_s} and "
            f"teacher stages {shapes_t}; use convolutional models"
        )
    if len(shapes_s) != len(shapes_t):
        raise UserError(
            f"{method} pairs student and teacher stages one to one, but the student has {len(shapes_s)} stages "
            f"{shapes_s} and the teacher {len(shapes_t)} stages {shapes_t}; choose a pair with equally many stages"
        )
