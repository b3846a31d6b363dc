"""Probabilistic knowledge transfer (`pkt`; Passalis & Tefas, ECCV 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer").

Equations, defaults with their sources and deviations: docs/methods/pkt.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_loss
from pckd.methods.precision import no_autocast
from pckd.params import Settings, hp

# RepDistiller's eps: added to the norms and to both probabilities inside the log.
PKT_EPS = 1e-7


# ---- pure functions -------------------------------------------------------------------------------------
def cosine_probabilities(x: Tensor, eps: float = PKT_EPS) -> Tensor:
    """Row-stochastic matrix [B, B] of rescaled cosine similarities between the rows of ``x`` [B, d]."""
    unit = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    unit = torch.where(torch.isnan(unit), torch.zeros_like(unit), unit)  # as the reference code does
    kernel = (unit @ unit.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = PKT_EPS) -> Tensor:
    """PKT loss between [B, ...] features: mean over B^2 entries of ``P_t log((P_t + eps) / (P_s + eps))``.

    Computed in float32 (float64 inputs stay float64) with autocast disabled; the teacher is a constant.
    """
    dtype = torch.promote_types(student.dtype, torch.float32)
    with no_autocast(student):
        p_s = cosine_probabilities(student.reshape(student.shape[0], -1).to(dtype), eps)
        p_t = cosine_probabilities(teacher.detach().reshape(teacher.shape[0], -1).to(dtype), eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class PKTParams(Settings):
    """Hyper-parameters of `pkt` (section ``pkt.*``); CIFAR-100 defaults of RepDistiller."""

    ce_weight: float = hp(1.0, ge=0, doc="RepDistiller -r (gamma)")
    kd_weight: float = hp(0.0, ge=0, doc="RepDistiller -a (alpha): Hinton KD on top; 0 for the PKT baseline")
    temperature: float = hp(4.0, gt=0, doc="KD temperature, used only when kd_weight > 0")
    pkt_weight: float = hp(30000.0, ge=0, doc="RepDistiller -b (beta)")


@register_method("pkt", PKTParams, "probabilistic KT: CE + 30000 * KL of cosine-kernel distributions (pooled)")
class PKT(TeacherDistiller):
    """CE + beta * L_PKT on the penultimate vectors."""

    params: PKTParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: PKTParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s, t = self.features_of_standard_view(batch)  # teacher first
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels),
            "pkt": p.pkt_weight * pkt_loss(s.pooled, t.pooled),
        }
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(s.logits, t.logits, p.temperature)
        return StepOutput(logits=s.logits, losses=losses)
