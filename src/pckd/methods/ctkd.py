"""CTKD (`ctkd`; Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023).

KD whose temperature is a learnable parameter trained adversarially: a gradient-reversal layer makes the
temperature *maximise* the KD loss while the student minimises it, with a cosine curriculum on the reversal's
strength. Equations, defaults with their sources and deviations: docs/methods/ctkd.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float
from pckd.methods.weighting import WeightingParams
from pckd.params import Settings, hp


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-strength``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(x: Tensor, strength: float) -> Tensor:
    """``x`` unchanged; the gradient that flows back through it is multiplied by ``-strength``."""
    out = _GradientReversal.apply(x, float(strength))
    assert isinstance(out, Tensor)
    return out


def cosine_strength(epoch: int, lambda_min: float, lambda_max: float, loops: int) -> float:
    """The curriculum of the reversal strength: lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * e / loops)) / 2
    with e = min(epoch, loops) (epochs counted from 1), so it rises from lambda_min at epoch 0 to lambda_max at
    epoch ``loops`` and stays there; ``loops = 0`` gives lambda_max from the start."""
    if loops <= 0:
        return float(lambda_max)
    e = min(max(epoch, 0), loops)
    return lambda_min + (lambda_max - lambda_min) * (1.0 - math.cos(math.pi * e / loops)) / 2.0


def bounded_temperature(raw: Tensor, t_start: float, t_range: float) -> Tensor:
    """T = t_start + t_range * sigmoid(raw): the temperature stays in (t_start, t_start + t_range)."""
    return t_start + t_range * torch.sigmoid(raw)


def kd_per_sample_at(student_logits: Tensor, teacher_logits: Tensor, T: Tensor) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per row, shape [B], for a tensor temperature T (0-dim or [B])
    that may carry gradient; float32 at least."""
    T = as_float(T)
    T_col = T.reshape(-1, 1) if T.dim() > 0 else T
    log_p_s = F.log_softmax(as_float(student_logits) / T_col, dim=1)
    log_p_t = F.log_softmax(as_float(teacher_logits) / T_col, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * (T * T)


@dataclass
class CTKDParams(Settings):
    """Hyper-parameters of `ctkd` (section ``ctkd.*``; the authors' CIFAR-100 script ``run_cifar_distill.sh``)."""

    ce_weight: float = hp(0.1, ge=0, doc="weight of the cross-entropy (authors' -r 0.1)")
    kd_weight: float = hp(0.9, ge=0, doc="weight of the KD term at the learned temperature (authors' -a 0.9)")
    t_start: float = hp(1.0, gt=0, doc="lowest temperature: T = t_start + t_range * sigmoid(theta) (--t_start)")
    t_range: float = hp(20.0, gt=0, doc="span of the temperature above t_start (the authors' --t_end 20)")
    init_raw: float = hp(1.0, doc="initial theta of the global temperature (the authors' torch.ones(1): T = 15.6)")
    lambda_min: float = hp(0.0, ge=0, doc="reversal strength at epoch 0 (the authors' -decay_max 0)")
    lambda_max: float = hp(1.0, ge=0, doc="reversal strength from epoch `lambda_loops` on (-decay_min -1)")
    lambda_loops: int = hp(10, ge=0, doc="epochs of the cosine rise of the strength (--decay_loops 10)")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of the per-sample KD term")


@register_method("ctkd", CTKDParams, "CTKD: CE + KD at a learnable temperature trained adversarially (GRL, cosine)")
class CTKD(TeacherDistiller):
    """Curriculum temperature KD with the global temperature; logs ``temperature`` and ``grl_lambda``."""

    params: CTKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: CTKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        self.temperature_raw = nn.Parameter(torch.full((1,), float(params.init_raw)))

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        strength = cosine_strength(epoch, p.lambda_min, p.lambda_max, p.lambda_loops)
        raw = reverse_gradient(self.temperature_raw, strength)
        T = bounded_temperature(raw, p.t_start, p.t_range).squeeze(0)
        kd = self.weighting.mean(kd_per_sample_at(logits, teacher_logits, T), logits, batch.labels, epoch)
        losses = {"ce": p.ce_weight * self.cross_entropy(logits, batch.labels), "kd": p.kd_weight * kd}
        stats = {"temperature": T.detach(), "grl_lambda": torch.tensor(strength, device=logits.device)}
        return StepOutput(logits=logits, losses=losses, stats=stats)
