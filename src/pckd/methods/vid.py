"""Variational information distillation (`vid`; Ahn et al., CVPR 2019, "Variational Information Distillation
for Knowledge Transfer").

Equations, defaults with their sources and deviations: docs/methods/vid.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_loss
from pckd.methods.precision import no_autocast
from pckd.models.interface import feature_shapes
from pckd.params import Settings, hp


# ---- pure functions -------------------------------------------------------------------------------------
def match_spatial(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever of two [B, C, H, W] maps is taller to the other's spatial size (RepDistiller)."""
    s_size, t_size = (int(student.shape[2]), int(student.shape[3])), (int(teacher.shape[2]), int(teacher.shape[3]))
    if student.shape[2] > teacher.shape[2]:
        student = F.adaptive_avg_pool2d(student, t_size)
    elif student.shape[2] < teacher.shape[2]:
        teacher = F.adaptive_avg_pool2d(teacher, s_size)
    return student, teacher


def vid_nll(pred_mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Mean Gaussian NLL (no constant): ``mean 0.5 * ((pred - target)^2 / var_c + log var_c)``.

    ``pred_mean``, ``target``: [B, C, H, W]; ``variance``: [C], positive. The target is treated as a constant.
    Computed in float32 (float64 inputs stay float64) with autocast disabled.
    """
    dtype = torch.promote_types(pred_mean.dtype, torch.float32)
    with no_autocast(pred_mean):
        var = variance.to(dtype).view(1, -1, 1, 1)
        diff = pred_mean.to(dtype) - target.detach().to(dtype)
        return (0.5 * (diff.pow(2) / var + torch.log(var))).mean()


def inverse_softplus(value: float) -> float:
    """``alpha`` with ``softplus(alpha) = value`` (value > 0)."""
    return math.log(math.expm1(value))


# ---- heads ----------------------------------------------------------------------------------------------
class VIDHead(nn.Module):
    """Regressor of the teacher map's mean from the student map, and the learned per-channel variance."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, init_pred_var: float,
                 eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1, bias=False),
        )
        # alpha such that softplus(alpha) + eps = init_pred_var
        self.alpha = nn.Parameter(torch.full((out_channels,), inverse_softplus(init_pred_var - eps)))

    def variance(self) -> Tensor:
        """Per-channel variance ``softplus(alpha) + eps``, shape [C_t], in float32 (float64 stays float64)."""
        return F.softplus(self.alpha.to(torch.promote_types(self.alpha.dtype, torch.float32))) + self.eps

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The stage's VID loss ``L_k`` for a student map and the (constant) teacher map."""
        student, teacher = match_spatial(student, teacher)
        return vid_nll(self.regressor(student), teacher, self.variance())


# ---- method ---------------------------------------------------------------------------------------------
@dataclass
class VIDParams(Settings):
    """Hyper-parameters of `vid` (section ``vid.*``); CIFAR-100 defaults of RepDistiller."""

    ce_weight: float = hp(1.0, ge=0, doc="RepDistiller -r (gamma)")
    kd_weight: float = hp(0.0, ge=0, doc="RepDistiller -a (alpha): Hinton KD on top; 0 for the VID baseline")
    temperature: float = hp(4.0, gt=0, doc="KD temperature, used only when kd_weight > 0")
    vid_weight: float = hp(1.0, ge=0, doc="RepDistiller -b (beta), multiplies the sum over stage pairs")
    init_pred_var: float = hp(5.0, gt=0, doc="initial per-channel variance sigma^2 (VIDLoss init_pred_var)")
    eps: float = hp(1e-5, gt=0, doc="variance floor added to softplus(alpha) (VIDLoss eps)")

    def check(self, prefix: str) -> None:
        if not self.init_pred_var > self.eps:
            raise UserError(f"config key '{prefix}.init_pred_var'={self.init_pred_var!r} must be > {prefix}.eps "
                            f"({self.eps})")


@register_method("vid", VIDParams, "variational information distillation: CE + Gaussian NLL of teacher stage maps")
class VID(TeacherDistiller):
    """CE + beta * sum over stage pairs of the Gaussian NLL of the teacher map given the student map."""

    params: VIDParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: VIDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        s_stages, t_stages = feature_shapes(student).stages[1:], feature_shapes(teacher).stages[1:]
        if not s_stages or not t_stages:
            raise UserError("vid needs at least one stage after the stem in both networks (FeatureOutput.stages)")
        self.heads = nn.ModuleList(
            VIDHead(s[0], t[0], t[0], params.init_pred_var, params.eps) for s, t in zip(s_stages, t_stages)
        )

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s, t = self.features_of_standard_view(batch)  # teacher first
        per_stage = [head(fs, ft) for head, fs, ft in zip(self.heads, s.stages[1:], t.stages[1:])]
        losses = {
            "ce": p.ce_weight * self.cross_entropy(s.logits, batch.labels),
            "vid": p.vid_weight * torch.stack(per_stage).sum(),
        }
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(s.logits, t.logits, p.temperature)
        stats = {f"vid_stage{k + 1}": v.detach() for k, v in enumerate(per_stage)}
        stats["vid_var_mean"] = torch.cat([cast(VIDHead, h).variance() for h in self.heads]).mean().detach()
        return StepOutput(logits=s.logits, losses=losses, stats=stats)
