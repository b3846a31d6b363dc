"""CTKD (`ctkd`; Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023).

KD (and optionally DKD) whose temperature is learned adversarially: a gradient-reversal layer makes the
temperature *maximise* the distillation loss while the student minimises it, with a cosine curriculum on the
reversal's strength. The temperature is one global parameter or predicted per sample by a small MLP. Equations,
defaults with their sources and deviations: docs/methods/ctkd.md.
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
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.dkd import nckd_per_sample, tckd_per_sample
from pckd.methods.precision import as_float
from pckd.methods.weighting import WeightingParams
from pckd.params import Choice, Settings, hp


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


class InstanceTemperature(nn.Module):
    """CTKD's instance-wise temperature module: an MLP on the (detached) teacher and student logits of each sample,
    [B, 2K] -> [B] raw values (``bounded_temperature`` maps them into the temperature range).

    The last layer starts at zero weights and bias ``init_raw``, so every sample starts at the global module's
    initial temperature."""

    def __init__(self, num_classes: int, hidden: int, init_raw: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(2 * num_classes, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, float(init_raw))

    def forward(self, teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
        # Detached: the module learns from the loss through T only; the student's logits get no reversed gradient.
        x = torch.cat([teacher_logits.detach(), student_logits.detach()], dim=1).to(self.hidden.weight.dtype)
        return self.out(F.relu(self.hidden(x))).squeeze(1)


class TemperatureModule(Choice):
    """Where CTKD's temperature comes from: one learned value (``global``), or one per sample (``instance``)."""

    # A member's name is what a saved config.yaml holds; "global" is a keyword, so it is set through the namespace.
    locals()["global"] = "global"
    instance = "instance"


GLOBAL, INSTANCE = TemperatureModule["global"], TemperatureModule["instance"]


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
    temperature_module: TemperatureModule = hp(GLOBAL, doc="global: one learned temperature "
                                               "(the authors' Global_T); instance: an MLP predicts one per sample")
    instance_hidden: int = hp(128, ge=1, doc="hidden width of the instance-wise MLP (the project's choice: the "
                                             "authors' module is not in their repository)")
    dkd_weight: float = hp(0.0, ge=0, doc="weight of DKD at the learned temperature (the authors' -b with "
                                          "--distill dkd; their DKD+CTKD: -r 1 -a 0 -b 1)")
    dkd_alpha: float = hp(1.0, ge=0, doc="DKD's TCKD weight (the authors' --dkd_alpha 1)")
    dkd_beta: float = hp(2.0, ge=0, doc="DKD's NCKD weight (the authors' --dkd_beta 2)")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of the per-sample KD/DKD terms")


@register_method("ctkd", CTKDParams, "CTKD: CE + KD (and/or DKD) at a learnable temperature, global or per sample, "
                                    "trained adversarially (GRL, cosine)")
class CTKD(TeacherDistiller):
    """Curriculum temperature distillation; logs ``temperature`` (the batch mean for instance-wise) and
    ``grl_lambda``, and ``kd`` / ``dkd`` for the terms whose weight is not 0."""

    params: CTKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: CTKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        if params.kd_weight == 0 and params.dkd_weight == 0:
            raise UserError("ctkd.kd_weight and ctkd.dkd_weight are both 0: nothing would train the temperature; "
                            "set ctkd.kd_weight (KD+CTKD) or ctkd.dkd_weight (DKD+CTKD) above 0")
        self.temperature_raw: nn.Parameter | None = None
        self.instance_temperature: InstanceTemperature | None = None
        if params.temperature_module == INSTANCE:
            self.instance_temperature = InstanceTemperature(data.num_classes, params.instance_hidden, params.init_raw)
        else:
            self.temperature_raw = nn.Parameter(torch.full((1,), float(params.init_raw)))

    def raw_temperature(self, logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """theta before the reversal: shape [1] (global) or [B] (instance-wise)."""
        if self.instance_temperature is not None:
            return self.instance_temperature(teacher_logits, logits)
        assert self.temperature_raw is not None
        return self.temperature_raw

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        strength = cosine_strength(epoch, p.lambda_min, p.lambda_max, p.lambda_loops)
        raw = reverse_gradient(self.raw_temperature(logits, teacher_logits), strength)
        T = bounded_temperature(raw, p.t_start, p.t_range)
        T = T.squeeze(0) if self.instance_temperature is None else T
        reduce = self.weighting.mean
        losses = {"ce": p.ce_weight * self.cross_entropy(logits, batch.labels)}
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * reduce(kd_per_sample_at(logits, teacher_logits, T), logits, batch.labels,
                                                epoch)
        if p.dkd_weight > 0:
            dkd = (p.dkd_alpha * tckd_per_sample(logits, teacher_logits, batch.labels, T)
                   + p.dkd_beta * nckd_per_sample(logits, teacher_logits, batch.labels, T))
            losses["dkd"] = p.dkd_weight * reduce(dkd, logits, batch.labels, epoch)
        stats = {"temperature": T.detach().mean(), "grl_lambda": torch.tensor(strength, device=logits.device)}
        if self.instance_temperature is not None:
            stats["temperature_std"] = T.detach().std(unbiased=False)
        return StepOutput(logits=logits, losses=losses, stats=stats)
