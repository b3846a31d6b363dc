"""The losses of the built-in methods as plain functions and as ``nn.Module`` s, for use in any training loop.

Every function takes student and teacher tensors and returns a loss; the ``*_per_sample`` forms return one value
per sample so a :class:`~pckd.methods.weighting.SampleWeighting` (or your own weights) can reduce them.
"""

from __future__ import annotations

from torch import Tensor, nn

from pckd.methods.at import at_loss
from pckd.methods.ckd import ckd_loss, ckd_per_sample
from pckd.methods.dkd import dkd_loss, nckd_per_sample, tckd_per_sample
from pckd.methods.fitnet import hint_loss
from pckd.methods.kd import kd_loss, kd_per_sample
from pckd.methods.ls import ls_loss, ls_per_sample
from pckd.methods.nst import nst_loss
from pckd.methods.pckd import (
    category_center_contrast,
    category_center_contrast_centers,
    category_profiles,
    center_alignment,
    feature_alignment,
)
from pckd.methods.pkt import pkt_loss
from pckd.methods.rkd import rkd_angle_loss, rkd_distance_loss
from pckd.methods.sp import sp_loss
from pckd.methods.standardize import standardize
from pckd.methods.weighting import SampleWeighting, WeightingMode


class KDLoss(nn.Module):
    """Hinton KD: T^2 * KL(softmax(t/T) || softmax(s/T)), the batch mean (``kd_loss``)."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return kd_loss(student_logits, teacher_logits, self.temperature)


class DKDLoss(nn.Module):
    """Decoupled KD: alpha * TCKD + beta * NCKD (``dkd_loss``; the warm-up ramp is the caller's)."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return dkd_loss(student_logits, teacher_logits, target, self.alpha, self.beta, self.temperature)


class CKDLoss(nn.Module):
    """Sample-wise contrastive KD: InfoNCE between L2-normalised teacher and student logits over the batch."""

    def __init__(self, tau: float = 1.0, symmetric: bool = False, negatives: str = "teacher_student") -> None:
        super().__init__()
        self.tau, self.symmetric, self.negatives = float(tau), bool(symmetric), str(negatives)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return ckd_loss(student_logits, teacher_logits, self.tau, self.symmetric, self.negatives)


class StandardizedKDLoss(nn.Module):
    """KD on per-sample z-scored logits (logit standardisation, Sun et al. CVPR 2024)."""

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return ls_loss(student_logits, teacher_logits, self.temperature)


__all__ = [
    "CKDLoss", "DKDLoss", "KDLoss", "SampleWeighting", "StandardizedKDLoss", "WeightingMode", "at_loss",
    "category_center_contrast", "category_center_contrast_centers", "category_profiles", "center_alignment",
    "ckd_loss", "ckd_per_sample", "dkd_loss", "feature_alignment", "hint_loss", "kd_loss", "kd_per_sample",
    "ls_loss", "ls_per_sample", "nckd_per_sample", "nst_loss", "pkt_loss", "rkd_angle_loss",
    "rkd_distance_loss", "sp_loss", "standardize", "tckd_per_sample",
]
