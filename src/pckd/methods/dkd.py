"""Decoupled Knowledge Distillation (`dkd`; Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

Equations, defaults with their sources and deviations: docs/methods/dkd.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.data.batch import Batch
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.standardize import standardize_pair
from pckd.methods.weighting import WeightingParams
from pckd.params import Settings, hp


def _loss_dtype(student_logits: Tensor, teacher_logits: Tensor) -> torch.dtype:
    """float32 at least (bf16/fp16 inputs are upcast), float64 kept."""
    return torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)


def _target_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Boolean [B, K] mask, True at each row's label."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, target.reshape(-1, 1), True)


def _binary_log_probs(log_p: Tensor, mask: Tensor) -> Tensor:
    """[B, 2] log of (target mass, non-target mass) from full log-probabilities [B, K]."""
    target = (log_p * mask).sum(dim=1)  # one entry per row is selected; avoids -inf * 0
    rest = log_p.masked_fill(mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([target, rest], dim=1)


def _column(T: float | Tensor) -> float | Tensor:
    """A temperature that divides [B, K] logits: a float or 0-dim tensor as it is, one per row as [B, 1]."""
    return T.reshape(-1, 1) if isinstance(T, Tensor) and T.dim() > 0 else T


def tckd_per_sample(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float | Tensor) -> Tensor:
    """Target-class KD per row, shape [B]: T^2 * KL(b^T || b^S) over the binary (target, non-target) masses.
    ``T`` is a float, or a tensor (0-dim, or one per row) that may carry gradient (CTKD's learned temperature)."""
    dtype = _loss_dtype(student_logits, teacher_logits)
    mask = _target_mask(student_logits, target)
    log_b_s = _binary_log_probs(F.log_softmax(student_logits.to(dtype) / _column(T), dim=1), mask)
    log_b_t = _binary_log_probs(F.log_softmax(teacher_logits.to(dtype) / _column(T), dim=1), mask)
    return (log_b_t.exp() * (log_b_t - log_b_s)).sum(dim=1) * (T * T)


def nckd_per_sample(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float | Tensor) -> Tensor:
    """Non-target-class KD per row, shape [B]: T^2 * KL(p~^T || p~^S) over the classes other than the label
    (``T`` as in :func:`tckd_per_sample`)."""
    dtype = _loss_dtype(student_logits, teacher_logits)
    mask = _target_mask(student_logits, target)
    log_q_s = F.log_softmax((student_logits.to(dtype) / _column(T)).masked_fill(mask, float("-inf")), dim=1)
    log_q_t = F.log_softmax((teacher_logits.to(dtype) / _column(T)).masked_fill(mask, float("-inf")), dim=1)
    # At the label both logs are -inf: drop that term (it is 0 * (-inf - -inf)) before multiplying.
    diff = (log_q_t - log_q_s).masked_fill(mask, 0.0)
    return (log_q_t.exp() * diff).sum(dim=1) * (T * T)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float, beta: float,
             T: float) -> Tensor:
    """Batch-mean DKD loss ``alpha * TCKD + beta * NCKD`` (mdistiller's ``dkd_loss``, without the warm-up)."""
    tckd = tckd_per_sample(student_logits, teacher_logits, target, T)
    nckd = nckd_per_sample(student_logits, teacher_logits, target, T)
    return (alpha * tckd + beta * nckd).mean()


def warmup_factor(epoch: int, warmup: int) -> float:
    """mdistiller's linear ramp of the KD part: min(epoch / warmup, 1), epochs counted from 1; 1 if warmup=0."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


@dataclass
class DKDParams(Settings):
    """Hyper-parameters of `dkd` (config section ``dkd.*``; mdistiller CIFAR-100 defaults)."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on the labels (mdistiller DKD.CE_WEIGHT)")
    alpha: float = hp(1.0, ge=0, doc="weight of TCKD (DKD.ALPHA)")
    beta: float = hp(8.0, ge=0, doc="weight of NCKD (DKD.BETA); mdistiller's configs set it per pair (2 / 6 / 8)")
    temperature: float = hp(4.0, gt=0, doc="softmax temperature T of both parts (DKD.T)")
    warmup: int = hp(20, ge=0, doc="epochs of the linear ramp of the KD part, min(epoch / warmup, 1); 0 = none (DKD.WARMUP)")
    logit_standardize: bool = hp(False, doc="z-score both logits per sample before TCKD/NCKD (Sun et al. 2024); "
                                            "their recipe with it: T 2, alpha and beta x 9")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of the per-sample TCKD and NCKD")


@register_method("dkd", DKDParams, "Decoupled KD: CE + ramp * (alpha * TCKD + beta * NCKD), mdistiller recipe")
class DKD(TeacherDistiller):
    """Decoupled knowledge distillation; the two parts are logged separately as ``tckd`` and ``nckd``."""

    params: DKDParams

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        ramp = warmup_factor(epoch, p.warmup)
        reduce = self.weighting.mean
        s_kd, t_kd = standardize_pair(logits, teacher_logits, p.logit_standardize)
        tckd = reduce(tckd_per_sample(s_kd, t_kd, batch.labels, p.temperature), logits, batch.labels, epoch)
        nckd = reduce(nckd_per_sample(s_kd, t_kd, batch.labels, p.temperature), logits, batch.labels, epoch)
        losses = {
            "ce": p.ce_weight * self.cross_entropy(logits, batch.labels),
            "tckd": (ramp * p.alpha) * tckd,
            "nckd": (ramp * p.beta) * nckd,
        }
        stats = {"kd_ramp": torch.tensor(ramp, device=logits.device)}
        return StepOutput(logits=logits, losses=losses, stats=stats)
