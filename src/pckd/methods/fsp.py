"""Flow of solution procedure (`fsp`; Yim et al., CVPR 2017, "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning"), two-stage as in RepDistiller.

Equations, defaults with their sources and deviations: docs/methods/fsp.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.ab import in_init_stage
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float, no_autocast
from pckd.methods.stage_features import match_spatial
from pckd.models.interface import feature_shapes
from pckd.params import Settings, hp


# ---- pure loss functions ---------------------------------------------------------------------------------
def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """FSP matrix [B, C_top, C_bottom] of two maps, the larger pooled to the smaller size; at least float32."""
    with no_autocast(bottom):  # the product is a batched matmul: keep it out of bf16
        bottom, top = match_spatial(as_float(bottom), as_float(top))
        bottom, top = bottom.flatten(2), top.flatten(2)
        return torch.bmm(top, bottom.transpose(1, 2)) / bottom.shape[2]


def fsp_matrices(stages: Sequence[Tensor]) -> list[Tensor]:
    """FSP matrices of every consecutive pair of ``stages`` (len(stages) - 1 of them)."""
    return [fsp_matrix(bottom, top) for bottom, top in pairwise(stages)]


def fsp_losses(s_stages: Sequence[Tensor], t_stages: Sequence[Tensor]) -> list[Tensor]:
    """Per-pair ``mean (G_s - G_t)^2`` over batch and matrix entries (their sum is ``L_FSP``)."""
    if len(s_stages) != len(t_stages):
        raise ValueError(f"fsp_losses needs as many student as teacher maps, got {len(s_stages)} and {len(t_stages)}")
    return [(g_s - g_t).pow(2).mean() for g_s, g_t in zip(fsp_matrices(s_stages), fsp_matrices(t_stages))]


def check_fsp_pair(s_shapes: Sequence[tuple[int, ...]], t_shapes: Sequence[tuple[int, ...]]) -> None:
    """Raise :class:`UserError` unless both networks have equally many stages (>= 2) with equal channel counts."""
    s_channels, t_channels = [s[0] for s in s_shapes], [t[0] for t in t_shapes]
    if len(s_shapes) < 2 or s_channels != t_channels:
        raise UserError(
            f"fsp needs equal channel counts at every stage (stem included), got student stages {list(s_shapes)} "
            f"and teacher stages {list(t_shapes)}; FSP does not support this pair, choose another method or pair"
        )


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class FSPParams(Settings):
    """Hyper-parameters of `fsp` (section ``fsp.*``); defaults are RepDistiller's CIFAR-100 settings."""

    ce_weight: float = hp(1.0, ge=0, doc="main stage: weight of the cross-entropy (RepDistiller -r 1)")
    fsp_weight: float = hp(0.0, ge=0, doc="main stage: weight of L_FSP; 0 as RepDistiller (its loop sets loss_kd = 0 for fsp)")
    init_epochs: int = hp(30, ge=0, doc="epochs 1..init_epochs train only L_FSP (RepDistiller --init_epochs 30)")


@register_method("fsp", FSPParams, "flow of solution procedure: init stage on FSP-matrix MSE, then CE")
class FSP(TeacherDistiller):
    """Init stage: MSE between student and teacher FSP matrices; main stage: CE (+ ``fsp_weight * L_FSP``)."""

    params: FSPParams
    has_unused_parameters = True  # the init stage does not use the student's classifier

    def __init__(self, student: nn.Module, teacher: nn.Module, params: FSPParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        check_fsp_pair(feature_shapes(student).stages, feature_shapes(teacher).stages)

    def _fsp_terms(self, s_stages: list[Tensor], t_stages: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        per_pair = fsp_losses(s_stages, t_stages)
        return torch.stack(per_pair).sum(), {f"fsp_pair{k + 1}": v.detach() for k, v in enumerate(per_pair)}

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s, t = self.features_of_standard_view(batch)  # teacher first
        if in_init_stage(epoch, p.init_epochs):
            loss, stats = self._fsp_terms(s.stages, t.stages)
            return StepOutput(logits=s.logits, losses={"fsp_init": loss}, stats=stats)
        losses = {"ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels)}
        stats = {}
        if p.fsp_weight > 0:
            loss, stats = self._fsp_terms(s.stages, t.stages)
            losses["fsp"] = p.fsp_weight * loss
        return StepOutput(logits=s.logits, losses=losses, stats=stats)
