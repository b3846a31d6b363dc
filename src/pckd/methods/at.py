"""Attention transfer (`at`; Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

Equations, defaults with their sources and deviations: docs/methods/at.md.
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


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """``normalize_L2(mean_c |f|^p)`` of a [B, C, H, W] map, flattened to [B, H*W] (rows of unit L2 norm).

    ``|f|^p`` is the paper's definition; for the default p = 2 it equals RepDistiller's ``f.pow(2)``.
    """
    return F.normalize(f.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_stage_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """AT loss of one stage (0-dim): mean over batch and positions of the squared attention-map difference.

    Maps of different spatial size are first pooled to the smaller size (:func:`match_spatial`). Computed in
    float32 (float64 inputs stay float64) with autocast disabled.
    """
    with no_autocast(f_s):
        f_s, f_t = match_spatial(as_float(f_s), as_float(f_t))
        return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


def at_loss(stages_s: list[Tensor], stages_t: list[Tensor], p: float = 2.0) -> Tensor:
    """Sum of :func:`at_stage_loss` over paired stages (equal-length lists)."""
    if len(stages_s) != len(stages_t):
        raise ValueError(f"at_loss needs as many student as teacher stages, got {len(stages_s)} and {len(stages_t)}")
    return torch.stack([at_stage_loss(s, t, p) for s, t in zip(stages_s, stages_t)]).sum()


@dataclass
class ATParams(Settings):
    """Hyper-parameters of `at` (config section ``at.*``); defaults are RepDistiller's CIFAR-100 settings."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on labels (RepDistiller -r 1)")
    at_weight: float = hp(1000.0, ge=0, doc="beta: weight of the summed attention-transfer loss (RepDistiller -b 1000)")
    p: float = hp(2.0, gt=0, doc="exponent of the activations in the attention map (RepDistiller Attention(p=2))")


@register_method("at", ATParams, "attention transfer: CE + beta * sum over stages of attention-map MSE")
class AT(TeacherDistiller):
    """CE + ``at_weight`` x sum over ``stages[1:]`` of the attention-map loss; no trainable heads."""

    params: ATParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: ATParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        check_paired_stages("at", student, teacher)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        feats_s, feats_t = self.features_of_standard_view(batch)  # teacher first
        losses = {
            "ce": p.ce_weight * self.cross_entropy(feats_s.logits, batch.labels),
            "at": p.at_weight * at_loss(feats_s.stages[1:], feats_t.stages[1:], p.p),
        }
        return StepOutput(logits=feats_s.logits, losses=losses)
