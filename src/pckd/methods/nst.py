"""Neuron selectivity transfer (`nst`; Huang & Wang, 2017, "Like What You Like").

Equations, defaults with their sources and deviations: docs/methods/nst.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float, no_autocast
from pckd.methods.stage_features import check_paired_stages, match_spatial
from pckd.params import Settings, hp


def poly_kernel_mean(a: Tensor, b: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Mean of ``(a_i . b_j + c)^degree`` over all sample-wise pairs (i, j) and the batch (0-dim).

    a: [B, Ca, N], b: [B, Cb, N] (rows already normalised).
    """
    return (torch.bmm(a, b.transpose(1, 2)) + c).pow(degree).mean()


def nst_stage_loss(f_s: Tensor, f_t: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Polynomial-kernel MMD^2 between the normalised channel maps of one stage, batch mean (0-dim).

    f_s: [B, Cs, Hs, Ws], f_t: [B, Ct, Ht, Wt]; the larger map is pooled to the smaller (H, W) first. Computed
    in float32 (float64 inputs stay float64) with autocast disabled (the kernel matmuls would otherwise run in
    bf16/fp16).
    """
    with no_autocast(f_s):
        f_s, f_t = match_spatial(as_float(f_s), as_float(f_t))
        s = F.normalize(f_s.flatten(2), dim=2)
        t = F.normalize(f_t.flatten(2), dim=2)
        return (
            poly_kernel_mean(t, t, degree, c).detach()
            + poly_kernel_mean(s, s, degree, c)
            - 2 * poly_kernel_mean(s, t, degree, c)
        )


def nst_loss(stages_s: list[Tensor], stages_t: list[Tensor], degree: int = 2, c: float = 0.0) -> Tensor:
    """Sum of :func:`nst_stage_loss` over paired stages (equal-length lists)."""
    if len(stages_s) != len(stages_t):
        raise ValueError(f"nst_loss needs as many student as teacher stages, got {len(stages_s)} and {len(stages_t)}")
    return torch.stack([nst_stage_loss(s, t, degree, c) for s, t in zip(stages_s, stages_t)]).sum()


@dataclass
class NSTParams(Settings):
    """Hyper-parameters of `nst` (config section ``nst.*``); defaults are RepDistiller's CIFAR-100 settings."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on labels (RepDistiller -r 1)")
    nst_weight: float = hp(50.0, ge=0, doc="beta: weight of the summed MMD^2 loss (RepDistiller -b 50)")
    degree: int = hp(2, ge=1, doc="d of the polynomial kernel (x.y + c)^d, a positive integer (RepDistiller: 2)")
    c: float = hp(0.0, doc="c of the polynomial kernel (RepDistiller: 0)")


@register_method("nst", NSTParams, "neuron selectivity transfer: CE + beta * polynomial-kernel MMD^2 per stage")
class NST(TeacherDistiller):
    """CE + ``nst_weight`` x sum over ``stages[1:]`` of the polynomial-kernel MMD^2; no trainable heads."""

    params: NSTParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: NSTParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        check_paired_stages("nst", student, teacher)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        feats_s, feats_t = self.features_of_standard_view(batch)  # teacher first
        losses = {
            "ce": p.ce_weight * self.cross_entropy(feats_s.logits, batch.labels),
            "nst": p.nst_weight * nst_loss(feats_s.stages[1:], feats_t.stages[1:], p.degree, p.c),
        }
        return StepOutput(logits=feats_s.logits, losses=losses)
