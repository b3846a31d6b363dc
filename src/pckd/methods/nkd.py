"""NKD (`nkd`; Yang et al., "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels", ICCV 2023).

A target term weighted by the teacher's target probability plus a normalised non-target KD. Equations, defaults
with their sources and deviations: docs/methods/nkd.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.data.batch import Batch
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float
from pckd.methods.weighting import WeightingParams
from pckd.params import Settings, hp


def _target_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Boolean [B, K] mask, True at each row's label."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target.reshape(-1, 1), True)


def nkd_target_per_sample(student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
    """Target term per row, shape [B]: -p^T_y * log p^S_y at temperature 1, the teacher's p^T_y detached."""
    log_p_s = F.log_softmax(as_float(student_logits), dim=1)
    p_t = torch.softmax(as_float(teacher_logits.detach()), dim=1)
    idx = target.reshape(-1, 1)
    return -(p_t.gather(1, idx) * log_p_s.gather(1, idx)).squeeze(1)


def nkd_nontarget_per_sample(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float) -> Tensor:
    """Normalised non-target term per row, shape [B]: -T^2 * sum_{k != y} q^T_k log q^S_k, with q the softmax at
    temperature T over the non-target classes only (a cross-entropy: KL plus the teacher's entropy)."""
    mask = _target_mask(student_logits, target)
    log_q_s = F.log_softmax((as_float(student_logits) / T).masked_fill(mask, float("-inf")), dim=1)
    q_t = torch.softmax((as_float(teacher_logits) / T).masked_fill(mask, float("-inf")), dim=1)
    # At the label q_t is 0 and log q_s is -inf: drop that entry before multiplying (0 * -inf is NaN).
    return -(q_t * log_q_s.masked_fill(mask, 0.0)).sum(dim=1) * (T * T)


def nkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, gamma: float, T: float) -> Tensor:
    """Batch-mean NKD term ``target + gamma * non-target`` (the authors' ``NKDLoss``)."""
    tgt = nkd_target_per_sample(student_logits, teacher_logits, target)
    non = nkd_nontarget_per_sample(student_logits, teacher_logits, target, T)
    return (tgt + gamma * non).mean()


@dataclass
class NKDParams(Settings):
    """Hyper-parameters of `nkd` (section ``nkd.*``; the authors' CIFAR-100 distillation config)."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on the labels (the student head's loss)")
    target_weight: float = hp(1.0, ge=0, doc="weight of the target term -p^T_y log p^S_y (1 in the authors' code)")
    gamma: float = hp(3.5, ge=0, doc="weight of the normalised non-target term (NKDLoss gamma, CIFAR config)")
    temperature: float = hp(3.0, gt=0, doc="temperature of the non-target term (NKDLoss temp, CIFAR config)")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of both per-sample terms")


@register_method("nkd", NKDParams, "NKD: CE + teacher-weighted target term + normalised non-target KD")
class NKD(TeacherDistiller):
    """Normalised KD; the two parts are logged separately as ``nkd_target`` and ``nkd_non``."""

    params: NKDParams

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        reduce = self.weighting.mean
        tgt = reduce(nkd_target_per_sample(logits, teacher_logits, batch.labels), logits, batch.labels, epoch)
        non = reduce(nkd_nontarget_per_sample(logits, teacher_logits, batch.labels, p.temperature), logits,
                     batch.labels, epoch)
        losses = {
            "ce": p.ce_weight * self.cross_entropy(logits, batch.labels),
            "nkd_target": p.target_weight * tgt,
            "nkd_non": p.gamma * non,
        }
        return StepOutput(logits=logits, losses=losses)
