"""Activation-boundary distillation (`ab`; Heo et al., AAAI 2019, "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons"), two-stage as in RepDistiller.

Equations, defaults with their sources and deviations: docs/methods/ab.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.fitnet import regressor_conv
from pckd.methods.precision import as_float
from pckd.models.interface import feature_shapes
from pckd.params import Settings, hp

# RepDistiller's ABLoss multiplies every stage's loss by 3/1000 (``l / 1000 * 3``).
AB_SCALE = 3.0 / 1000.0


# ---- pure loss functions ---------------------------------------------------------------------------------
def ab_stage_loss(source: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Unweighted AB loss of one stage: ``sum l(s, t) / B`` (see module docstring), 0-dim.

    ``source``: connector output [B, C, H, W]; ``target``: teacher map of the same shape, only its sign pattern
    ``t > 0`` is used (so pre- and post-activation teacher maps give the same loss). At least float32.
    """
    if source.shape != target.shape:
        raise ValueError(f"ab_stage_loss needs equal shapes, got {tuple(source.shape)} and {tuple(target.shape)}")
    s = as_float(source)
    on = target > 0
    below_neg_margin = (s + margin).pow(2) * ((s > -margin) & ~on)  # teacher off: push s below -m
    above_pos_margin = (s - margin).pow(2) * ((s <= margin) & on)  # teacher on: push s above +m
    return (below_neg_margin + above_pos_margin).sum() / s.shape[0]


def ab_stage_weights(n: int) -> list[float]:
    """RepDistiller's per-stage weights ``2^(k - n + 1)``, k = 0..n-1 (1 for the last stage)."""
    return [2.0 ** (k - n + 1) for k in range(n)]


def ab_losses(sources: Sequence[Tensor], targets: Sequence[Tensor], margin: float = 1.0) -> list[Tensor]:
    """Weighted per-stage AB losses ``w_k * 3/1000 * ab_stage_loss`` (their sum is ``L_AB``)."""
    if len(sources) != len(targets):
        raise ValueError(f"ab_losses needs as many student as teacher maps, got {len(sources)} and {len(targets)}")
    weights = ab_stage_weights(len(sources))
    return [w * AB_SCALE * ab_stage_loss(s, t, margin) for w, s, t in zip(weights, sources, targets)]


# ---- two-stage helpers (also used by `ft` and `fsp`) -----------------------------------------------------
def in_init_stage(epoch: int, init_epochs: int) -> bool:
    """Whether ``epoch`` (counted from 1) belongs to the init stage of a two-stage method."""
    return epoch <= init_epochs


# ---- heads ----------------------------------------------------------------------------------------------
class ABConnector(nn.Module):
    """conv (chosen by size, 1x1 for equal sizes) -> BatchNorm, from a student stage map to the teacher's shape."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], stage: int) -> None:
        super().__init__()
        try:
            self.conv = regressor_conv(s_shape, t_shape)
        except UserError:
            raise UserError(
                f"ab cannot connect the student's stage {stage} map {tuple(s_shape)} to the teacher's "
                f"{tuple(t_shape)}: the student map must be twice, half, or at least the teacher's spatial size"
            ) from None
        self.bn = nn.BatchNorm2d(t_shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class ABParams(Settings):
    """Hyper-parameters of `ab` (section ``ab.*``); defaults are RepDistiller's CIFAR-100 settings."""

    ce_weight: float = hp(1.0, ge=0, doc="main stage: weight of the cross-entropy (RepDistiller -r 1)")
    ab_weight: float = hp(0.0, ge=0, doc="main stage: weight of L_AB; 0 as RepDistiller (its loop sets loss_kd = 0 for abound)")
    margin: float = hp(1.0, ge=0, doc="m of the alternative L2 hinge (ABLoss margin)")
    init_epochs: int = hp(30, ge=0, doc="epochs 1..init_epochs train only L_AB (RepDistiller --init_epochs 30)")


@register_method("ab", ABParams, "activation boundaries: init stage on the AB hinge loss, then CE")
class AB(TeacherDistiller):
    """Init stage: ``L_AB`` through per-stage connectors; main stage: CE (+ ``ab_weight * L_AB``)."""

    params: ABParams
    has_unused_parameters = True  # the connectors train in the init stage only

    def __init__(self, student: nn.Module, teacher: nn.Module, params: ABParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        s_shapes, t_shapes = feature_shapes(student).stages[1:], feature_shapes(teacher).stages[1:]
        if len(s_shapes) != len(t_shapes) or not s_shapes:
            raise UserError(
                f"ab needs as many stages after the stem in student and teacher, got student {s_shapes} and "
                f"teacher {t_shapes}; choose a pair with equally many stages"
            )
        self.connectors = nn.ModuleList(ABConnector(s, t, k + 1) for k, (s, t) in enumerate(zip(s_shapes, t_shapes)))

    def _ab_terms(self, s_stages: list[Tensor], t_stages: list[Tensor]) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Weighted per-stage losses and their stats (per-stage values, sign agreement with the teacher)."""
        sources = [conn(f) for conn, f in zip(self.connectors, s_stages)]
        per_stage = ab_losses(sources, t_stages, self.params.margin)
        stats = {f"ab_stage{k + 1}": v.detach() for k, v in enumerate(per_stage)}
        with torch.no_grad():  # fraction of units on the teacher's side of the boundary
            agree = [((s > 0) == (t > 0)).float().mean() for s, t in zip(sources, t_stages)]
        stats["ab_agree"] = torch.stack(agree).mean()
        return per_stage, stats

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s, t = self.features_of_standard_view(batch)  # teacher first
        if in_init_stage(epoch, p.init_epochs):
            per_stage, stats = self._ab_terms(s.stages[1:], t.stages[1:])
            return StepOutput(logits=s.logits, losses={"ab_init": torch.stack(per_stage).sum()}, stats=stats)
        losses = {"ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels)}
        stats = {}
        if p.ab_weight > 0:
            per_stage, stats = self._ab_terms(s.stages[1:], t.stages[1:])
            losses["ab"] = p.ab_weight * torch.stack(per_stage).sum()
        return StepOutput(logits=s.logits, losses=losses, stats=stats)


__all__ = ["AB", "ABConnector", "ABParams", "ab_losses", "ab_stage_loss", "ab_stage_weights",
           "in_init_stage"]
