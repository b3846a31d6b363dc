"""Relational knowledge distillation (`rkd`; Park et al., CVPR 2019, "Relational Knowledge Distillation").

Equations, defaults with their sources and deviations: docs/methods/rkd.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_loss
from pckd.methods.precision import no_autocast
from pckd.params import Settings, hp

# RepDistiller's pdist clamps the squared distance at this value before the square root.
PDIST_EPS = 1e-12


# ---- pure functions -------------------------------------------------------------------------------------
def _rows(x: Tensor) -> Tensor:
    """Flatten to [B, d] in at least float32 (float64 stays float64)."""
    return x.reshape(x.shape[0], -1).to(torch.promote_types(x.dtype, torch.float32))


def pairwise_distances(e: Tensor, eps: float = PDIST_EPS) -> Tensor:
    """Euclidean distance matrix [B, B] of the rows of ``e`` [B, d], with a zero diagonal (RepDistiller's pdist)."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.T)).clamp(min=eps)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def normalised_distances(e: Tensor) -> Tensor:
    """Distance matrix divided by the mean of its positive entries (``psi_D``); needs at least 2 rows."""
    d = pairwise_distances(e)
    # entries are >= 0, so sum / count of positives is the mean of the positive entries (without a host sync)
    return d / (d.sum() / (d > 0).sum())


def triplet_angles(e: Tensor) -> Tensor:
    """``psi_A`` [B, B, B]: entry (i, j, k) is the cosine of the angle at e_i between e_j and e_k."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # [i, j] = e_j - e_i
    unit = F.normalize(diff, p=2, dim=2)  # zero differences stay zero vectors
    return torch.bmm(unit, unit.transpose(1, 2))


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Distance-wise RKD loss ``L_D`` between [B, ...] features (teacher treated as a constant)."""
    with no_autocast(student):
        s, t = _rows(student), _rows(teacher.detach())
        if s.shape[0] < 2:  # no pair: nothing to transfer (the mean over positive distances would be 0/0)
            return s.sum() * 0.0
        return F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Angle-wise RKD loss ``L_A`` between [B, ...] features (teacher treated as a constant)."""
    with no_autocast(student):
        s, t = _rows(student), _rows(teacher.detach())
        return F.smooth_l1_loss(triplet_angles(s).flatten(), triplet_angles(t).flatten())


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class RKDParams(Settings):
    """Hyper-parameters of `rkd` (section ``rkd.*``); CIFAR-100 defaults of RepDistiller."""

    ce_weight: float = hp(1.0, ge=0, doc="RepDistiller -r (gamma)")
    kd_weight: float = hp(0.0, ge=0, doc="RepDistiller -a (alpha): Hinton KD on top; 0 for the RKD baseline")
    temperature: float = hp(4.0, gt=0, doc="KD temperature, used only when kd_weight > 0")
    rkd_weight: float = hp(1.0, ge=0, doc="RepDistiller -b (beta), multiplies both RKD terms")
    distance_weight: float = hp(25.0, ge=0, doc="w_D of RKDLoss")
    angle_weight: float = hp(50.0, ge=0, doc="w_A of RKDLoss")


@register_method("rkd", RKDParams, "relational KD: CE + 25 * distance + 50 * angle relations of pooled features")
class RKD(TeacherDistiller):
    """CE + beta * (w_D * L_D + w_A * L_A) on the penultimate vectors; logs the two RKD terms separately."""

    params: RKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: RKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s, t = self.features_of_standard_view(batch)  # teacher first
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels),
            "rkd_dist": p.rkd_weight * p.distance_weight * rkd_distance_loss(s.pooled, t.pooled),
            "rkd_angle": p.rkd_weight * p.angle_weight * rkd_angle_loss(s.pooled, t.pooled),
        }
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(s.logits, t.logits, p.temperature)
        return StepOutput(logits=s.logits, losses=losses)
