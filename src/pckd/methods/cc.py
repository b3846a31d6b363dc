"""Correlation congruence (`cc`; Peng et al., ICCV 2019, "Correlation Congruence for Knowledge Distillation").

Equations, defaults with their sources and deviations: docs/methods/cc.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_loss
from pckd.methods.precision import as_float, no_autocast
from pckd.models.interface import feature_shapes
from pckd.params import Choice, Settings, hp


class CCKernel(Choice):
    """The correlation kernel (``cc.kernel``): RepDistiller's released form or the paper's Taylor-RBF form."""

    repdistiller = "repdistiller"
    gaussian = "gaussian"


# ---- pure functions -------------------------------------------------------------------------------------
def cc_repdistiller_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    """RepDistiller's correlation loss: mean over consecutive pairs (i, i+1) of ``<|s_i - t_i|, |s_{i+1} - t_{i+1}|>``.

    ``emb_s``, ``emb_t``: [B, d] embeddings (both may carry gradients: the teacher's embedding head trains).
    A batch of one sample has no pair and gives 0.
    """
    with no_autocast(emb_s):
        delta = (as_float(emb_s) - as_float(emb_t)).abs()
        if delta.shape[0] < 2:
            return delta.sum() * 0.0
        return (delta[:-1] * delta[1:]).sum(dim=1).mean()


def gaussian_correlation(z: Tensor, gamma: float, order: int) -> Tensor:
    """Order-``order`` Taylor approximation [B, B] of ``exp(-gamma ||z_i - z_j||^2)`` for L2-normalised rows."""
    sim = z @ z.T
    scale = math.exp(-2.0 * gamma)
    corr = torch.full_like(sim, scale)  # p = 0 term
    power = torch.ones_like(sim)
    for p in range(1, order + 1):
        power = power * sim
        corr = corr + scale * (2.0 * gamma) ** p / math.factorial(p) * power
    return corr


def cc_gaussian_loss(emb_s: Tensor, emb_t: Tensor, gamma: float, order: int) -> Tensor:
    """The paper's CC loss: mean squared difference of the Gaussian-kernel correlation matrices.

    ``emb_s``, ``emb_t``: [B, d] embeddings, expected L2-normalised (the Taylor form assumes unit vectors).
    """
    with no_autocast(emb_s):
        c_s = gaussian_correlation(as_float(emb_s), gamma, order)
        c_t = gaussian_correlation(as_float(emb_t), gamma, order)
        return (c_s - c_t).pow(2).mean()


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class CCParams(Settings):
    """Hyper-parameters of `cc` (section ``cc.*``); CIFAR-100 defaults of RepDistiller."""

    ce_weight: float = hp(1.0, ge=0, doc="RepDistiller -r (gamma)")
    kd_weight: float = hp(0.0, ge=0, doc="RepDistiller -a (alpha): Hinton KD on top; 0 for the CC baseline")
    temperature: float = hp(4.0, gt=0, doc="KD temperature, used only when kd_weight > 0")
    cc_weight: float = hp(0.02, ge=0, doc="RepDistiller -b (beta)")
    feat_dim: int = hp(128, ge=1, doc="embedding dimension of both heads (RepDistiller --feat_dim)")
    kernel: CCKernel = hp(CCKernel.repdistiller, doc="repdistiller (released code, default) | gaussian (paper's Taylor-RBF form)")
    gamma: float = hp(0.4, gt=0, doc="RBF gamma of the gaussian form (paper value)")
    order: int = hp(2, ge=0, doc="Taylor order P of the gaussian form (paper value)")


@register_method("cc", CCParams, "correlation congruence: CE + 0.02 * correlation of embedded pooled features")
class CC(TeacherDistiller):
    """CE + beta * L_CC between trainable 128-d embeddings of the student's and teacher's penultimate vectors."""

    params: CCParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: CCParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        self.embed_s = nn.Linear(feature_shapes(student).pooled, params.feat_dim)
        self.embed_t = nn.Linear(feature_shapes(teacher).pooled, params.feat_dim)

    def embed(self, head: nn.Linear, pooled: Tensor) -> Tensor:
        """One side's embedding; L2-normalised for the gaussian form only (RepDistiller's LinearEmbed is not)."""
        z = head(pooled.flatten(1))
        return F.normalize(as_float(z), p=2, dim=1) if self.params.kernel == "gaussian" else z

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s, t = self.features_of_standard_view(batch)  # teacher first
        z_s, z_t = self.embed(self.embed_s, s.pooled), self.embed(self.embed_t, t.pooled)
        if p.kernel == "gaussian":
            cc = cc_gaussian_loss(z_s, z_t, p.gamma, p.order)
        else:
            cc = cc_repdistiller_loss(z_s, z_t)
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels),
            "cc": p.cc_weight * cc,
        }
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(s.logits, t.logits, p.temperature)
        return StepOutput(logits=s.logits, losses=losses)
