"""Similarity-preserving KD (`sp`; Tung & Mori, ICCV 2019).

Equations, defaults with their sources and deviations: docs/methods/sp.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float, no_autocast
from pckd.params import Settings, hp


def similarity_matrix(f: Tensor) -> Tensor:
    """Row-L2-normalised batch Gram matrix of a feature map [B, ...] flattened per sample: [B, B]."""
    q = f.flatten(1)
    return F.normalize(q @ q.T, dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``||G~_s - G~_t||_F^2 / B^2`` (0-dim) for student/teacher features with the same batch size B.

    Computed in float32 (float64 inputs stay float64) with autocast disabled (the Gram matmul would otherwise run
    in bf16/fp16).
    """
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"sp_loss needs equal batch sizes, got student {tuple(f_s.shape)} teacher {tuple(f_t.shape)}")
    b = f_s.shape[0]
    with no_autocast(f_s):
        diff = similarity_matrix(as_float(f_s)) - similarity_matrix(as_float(f_t))
        return diff.pow(2).sum() / (b * b)


@dataclass
class SPParams(Settings):
    """Hyper-parameters of `sp` (config section ``sp.*``); defaults are RepDistiller's CIFAR-100 settings."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on labels (RepDistiller -r 1)")
    sp_weight: float = hp(3000.0, ge=0, doc="beta: weight of the similarity-preserving loss (RepDistiller -b 3000)")


@register_method("sp", SPParams, "similarity-preserving KD: CE + beta * ||G_s - G_t||_F^2 / B^2 on the last stage")
class SP(TeacherDistiller):
    """CE + ``sp_weight`` x similarity-preserving loss on ``stages[-1]``; no trainable heads."""

    params: SPParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: SPParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        feats_s, feats_t = self.features_of_standard_view(batch)  # teacher first
        losses = {
            "ce": p.ce_weight * self.cross_entropy(feats_s.logits, batch.labels),
            "sp": p.sp_weight * sp_loss(feats_s.stages[-1], feats_t.stages[-1]),
        }
        return StepOutput(logits=feats_s.logits, losses=losses)
