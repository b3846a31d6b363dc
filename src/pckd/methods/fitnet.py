"""FitNets hint learning (`fitnet`; Romero et al., ICLR 2015), single-stage variant.

Equations, defaults with their sources and deviations: docs/methods/fitnet.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float
from pckd.models.interface import feature_shapes
from pckd.params import Settings, hp


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Mean squared error over all elements between the regressed student map and the teacher's hint (0-dim).

    Computed in float32 (float64 inputs stay float64).
    """
    if f_s.shape != f_t.shape:
        raise ValueError(f"hint_loss needs equal shapes, got student {tuple(f_s.shape)} teacher {tuple(f_t.shape)}")
    return (as_float(f_s) - as_float(f_t)).pow(2).mean()


def regressor_conv(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Module:
    """The conv of the hint regressor mapping a (C_s, H_s, W_s) map onto (C_t, H_t, W_t) (see module docstring)."""
    if len(s_shape) != 3 or len(t_shape) != 3:
        raise UserError(
            f"fitnet needs (C, H, W) feature maps at fitnet.hint_layer, got student {tuple(s_shape)} and "
            f"teacher {tuple(t_shape)}; choose a convolutional stage"
        )
    (c_s, h_s, w_s), (c_t, h_t, w_t) = s_shape, t_shape
    if (h_s, w_s) == (2 * h_t, 2 * w_t):
        return nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    if (2 * h_s, 2 * w_s) == (h_t, w_t):
        return nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    if h_s >= h_t and w_s >= w_t:
        return nn.Conv2d(c_s, c_t, kernel_size=(1 + h_s - h_t, 1 + w_s - w_t))
    raise UserError(
        f"fitnet cannot regress the student map {tuple(s_shape)} onto the teacher hint {tuple(t_shape)}: the student "
        "map must be twice, half, or at least the teacher's spatial size; choose another fitnet.hint_layer"
    )


class HintRegressor(nn.Module):
    """conv (chosen by :func:`regressor_conv`) -> BatchNorm -> ReLU, from the student's map to the hint's shape."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = regressor_conv(s_shape, t_shape)
        self.bn = nn.BatchNorm2d(t_shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


@dataclass
class FitNetParams(Settings):
    """Hyper-parameters of `fitnet` (config section ``fitnet.*``); defaults are RepDistiller's CIFAR-100 settings."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on labels (RepDistiller -r 1)")
    hint_weight: float = hp(100.0, ge=0, doc="beta: weight of the hint MSE (RepDistiller -b 100)")
    hint_layer: int = hp(2, ge=0, doc="index into stages (stem = 0) of the guided/hint maps (RepDistiller --hint_layer 2)")


@register_method("fitnet", FitNetParams, "FitNets: CE + beta * MSE(regressor(student stage), teacher stage)")
class FitNet(TeacherDistiller):
    """CE + ``hint_weight`` x MSE between ``regressor(student.stages[l])`` and ``teacher.stages[l]``."""

    params: FitNetParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: FitNetParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        shapes_s, shapes_t = feature_shapes(student).stages, feature_shapes(teacher).stages
        layer = params.hint_layer
        if layer >= min(len(shapes_s), len(shapes_t)):
            raise UserError(
                f"fitnet.hint_layer={layer} is out of range: the student has {len(shapes_s)} stages {shapes_s} and the "
                f"teacher {len(shapes_t)} stages {shapes_t}; choose an index below {min(len(shapes_s), len(shapes_t))}"
            )
        self.regressor = HintRegressor(shapes_s[layer], shapes_t[layer])

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        x = batch.augment.standard(batch.images)
        hint = self.teacher_features(x).stages[p.hint_layer]  # teacher first: keeps peak memory low
        feats_s = self.student_features(x)
        guided = self.regressor(feats_s.stages[p.hint_layer])
        losses = {
            "ce": p.ce_weight * self.cross_entropy(feats_s.logits, batch.labels),
            "hint": p.hint_weight * hint_loss(guided, hint),
        }
        return StepOutput(logits=feats_s.logits, losses=losses)
