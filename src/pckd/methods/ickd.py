"""Inter-Channel Correlation KD (`ickd`; Liu et al., "Exploring Inter-Channel Correlation for Diversity-preserved
Knowledge Distillation", ICCV 2021). Defaults follow the released CIFAR-100 code (ADLab-AutoDrive/ICKD,
``Cifar100/distiller_zoo/ICKD.py``, ``helper/loops.py``, ``train_student.py``, ``README.md``).

Equations, defaults with their sources and deviations: docs/methods/ickd.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_loss
from pckd.methods.precision import no_autocast
from pckd.models.interface import feature_shapes
from pckd.params import Settings, hp


# ---- pure functions -------------------------------------------------------------------------------------
def channel_gram(feature: Tensor) -> Tensor:
    """Row-normalised channel Gram matrices: [B, C, H, W] -> [B, C, C], ``normalize(f f^T, dim=2)`` per sample.

    Computed in float32 (float64 inputs stay float64) with autocast disabled.
    """
    dtype = torch.promote_types(feature.dtype, torch.float32)
    with no_autocast(feature):
        f = feature.to(dtype).flatten(2)  # [B, C, H*W]
        return F.normalize(f @ f.transpose(1, 2), dim=2)


def ickd_loss(student_map: Tensor, teacher_map: Tensor) -> Tensor:
    """``sum (G_s - G_t)^2 / (C * B)`` of the row-normalised channel Gram matrices (0-dim).

    student_map: [B, C, H_s, W_s], already embedded to the teacher's channel count; teacher_map:
    [B, C, H_t, W_t] (the spatial sizes may differ).
    """
    if student_map.shape[:2] != teacher_map.shape[:2]:
        raise ValueError(f"ickd: batch/channels differ: {tuple(student_map.shape)} vs {tuple(teacher_map.shape)}")
    b, c = student_map.shape[:2]
    diff = channel_gram(student_map) - channel_gram(teacher_map)
    return diff.pow(2).sum() / (c * b)


# ---- hyper-parameters -------------------------------------------------------------------------------------
@dataclass
class ICKDParams(Settings):
    """Hyper-parameters of `ickd` (config section ``ickd.*``; the released CIFAR-100 recipe)."""

    ce_weight: float = hp(1.0, ge=0, doc="-r: weight of the cross-entropy")
    kd_weight: float = hp(1.0, ge=0, doc="-a: weight of Hinton KD ('ICKD-C' row: 1; 'w/o KL' row: 0)")
    ickd_weight: float = hp(2.5, ge=0, doc="-b: weight of the inter-channel correlation loss")
    temperature: float = hp(4.0, gt=0, doc="--kd_T, used only when kd_weight > 0")


# ---- the method -------------------------------------------------------------------------------------------
class ChannelEmbed(nn.Sequential):
    """1x1 convolution (no bias) + BatchNorm2d: the released code's ``Embed`` of the student's last map."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, kernel_size=1, bias=False), nn.BatchNorm2d(c_out))


@register_method("ickd", ICKDParams, "inter-channel correlation KD: CE + KD + MSE of channel Gram matrices")
class ICKD(TeacherDistiller):
    """CE + KD + ``ickd_weight`` x the distance between student and teacher channel correlations."""

    params: ICKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module, params: ICKDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        c_s = feature_shapes(student).stages[-1][0]
        c_t = feature_shapes(teacher).stages[-1][0]
        self.embed = ChannelEmbed(c_s, c_t)

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s_out, t_out = self.features_of_standard_view(batch)  # teacher first
        logits = s_out.logits
        losses = {"ce": p.ce_weight * self.cross_entropy(logits, batch.labels)}
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(logits, t_out.logits, p.temperature)
        embedded = self.embed(s_out.stages[-1])
        losses["ickd"] = p.ickd_weight * ickd_loss(embedded, t_out.stages[-1])
        return StepOutput(logits=logits, losses=losses)
