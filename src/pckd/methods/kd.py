"""Hinton knowledge distillation: KL between temperature-softened teacher and student outputs, times T^2.

``kd.logit_standardize: true`` z-scores both logit vectors per sample before the softmax (Sun et al., CVPR 2024;
the function shared with `ls`, docs/methods/ls.md); the CE term keeps the raw logits. Their released KD recipe
with it is T 2, CE 0.1, KD 9, which is what the `ls` method and its configs run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.data.batch import Batch
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.standardize import standardize_pair
from pckd.methods.weighting import WeightingParams
from pckd.params import Settings, hp


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) for each row, shape [B]; computed in float32 (float64 kept)."""
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    log_p_s = F.log_softmax(student_logits.to(dtype) / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(dtype) / T, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * (T * T)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """Batch-mean KD loss (the standard ``DistillKL``): mean over rows of :func:`kd_per_sample`."""
    return kd_per_sample(student_logits, teacher_logits, T).mean()


@dataclass
class KDParams(Settings):
    """Hyper-parameters of `kd` (CIFAR-100 benchmark defaults: CE 0.1, KD 0.9, T 4)."""

    temperature: float = hp(4.0, gt=0)
    ce_weight: float = hp(0.1, ge=0)
    kd_weight: float = hp(0.9, ge=0)
    logit_standardize: bool = hp(False, doc="z-score both logits per sample before the KD term (Sun et al. "
                                            "2024); their recipe with it: T 2, kd_weight 9 (= method ls)")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of the per-sample KD term")


@register_method("kd", KDParams, "Hinton KD: CE + T^2 * KL(teacher || student) on softened outputs")
class KD(TeacherDistiller):
    """Vanilla knowledge distillation."""

    params: KDParams

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        p = self.params
        s_kd, t_kd = standardize_pair(logits, teacher_logits, p.logit_standardize)
        losses = {
            "ce": p.ce_weight * self.cross_entropy(logits, batch.labels),
            "kd": p.kd_weight * self.weighting.mean(kd_per_sample(s_kd, t_kd, p.temperature), logits,
                                                    batch.labels, epoch),
        }
        return StepOutput(logits=logits, losses=losses)
