"""WTTM (`wttm`; Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching", ICLR 2024).

The student (at temperature 1) matches the power-transformed teacher, each sample weighted by the transform's
normaliser. Equations, defaults with their sources and deviations: docs/methods/wttm.md.
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


def transformed_teacher(teacher_logits: Tensor, exponent: float) -> tuple[Tensor, Tensor]:
    """(log q, U): the power transform q = p^l / U of p = softmax(z_t), in log space, and its normaliser
    U = sum_k p_k^l, shapes [B, K] and [B]; float32 at least."""
    scaled = exponent * F.log_softmax(as_float(teacher_logits), dim=1)  # l * log p
    log_u = torch.logsumexp(scaled, dim=1)
    return scaled - log_u[:, None], log_u.exp()


def ttm_per_sample(student_logits: Tensor, teacher_logits: Tensor, exponent: float) -> Tensor:
    """TTM per row, shape [B]: KL(q || softmax(z_s)) with q the power-transformed teacher (no student temperature)."""
    log_q, _ = transformed_teacher(teacher_logits, exponent)
    log_p_s = F.log_softmax(as_float(student_logits), dim=1)
    return (log_q.exp() * (log_q - log_p_s)).sum(dim=1)


def wttm_per_sample(student_logits: Tensor, teacher_logits: Tensor, exponent: float) -> Tensor:
    """WTTM per row, shape [B]: U * KL(q || softmax(z_s)), U = sum_k p_k^l the sample-adaptive weight (larger for
    a smoother teacher prediction)."""
    _, u = transformed_teacher(teacher_logits, exponent)
    return u * ttm_per_sample(student_logits, teacher_logits, exponent)


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, exponent: float) -> Tensor:
    """Batch-mean WTTM loss (the authors' ``WTTM`` module)."""
    return wttm_per_sample(student_logits, teacher_logits, exponent).mean()


@dataclass
class WTTMParams(Settings):
    """Hyper-parameters of `wttm` (section ``wttm.*``; see docs/methods/wttm.md for where they come from)."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on the labels (authors' -r 1)")
    wttm_weight: float = hp(4.0, ge=0, doc="weight beta of the WTTM term (authors' -b / -a; their README example 4)")
    exponent: float = hp(0.2, gt=0, doc="power l of the teacher transform p^l, the paper's gamma = 1/T (--ttm_l)")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of the per-sample WTTM term")


@register_method("wttm", WTTMParams, "WTTM: CE + U(p^T) * KL(power-transformed teacher || student at T=1)")
class WTTM(TeacherDistiller):
    """Weighted transformed teacher matching; the term is logged as ``wttm``."""

    params: WTTMParams

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        wttm = self.weighting.mean(wttm_per_sample(logits, teacher_logits, p.exponent), logits, batch.labels, epoch)
        losses = {"ce": p.ce_weight * self.cross_entropy(logits, batch.labels), "wttm": p.wttm_weight * wttm}
        return StepOutput(logits=logits, losses=losses)
