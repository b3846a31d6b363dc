"""KD with logit standardisation (`ls`; Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

Formerly registered as ``lskd``; renamed because the PCKD paper's "LSKD" [30] is another method (Li, Cheng and
Han, TCSVT 2024) with no public code or equations (docs/methods/ls.md).

Teacher and student logits are each z-scored per sample before the usual temperature softmax, so the student
matches the teacher's logit *relations* rather than their range and scale:

    Z(z) = (z - mean(z)) / (std(z) + 1e-7)        mean and std over the K classes of one row,
                                                  std unbiased (divides by K - 1), as torch.std by default
    KD_Z = T^2 * KL(softmax(Z(z^T) / T) || softmax(Z(z^S) / T)),   batch mean
    loss = ce_weight * CE + kd_weight * KD_Z

This follows the authors' released code (github sunshangquan/logit-standardization-KD,
``mdistiller/distillers/KD.py``: ``normalize`` uses ``logit.std`` with its default unbiased estimate and adds
1e-7 to the std; the KL is multiplied by ``temperature**2`` after standardisation). Here T is the paper's "base
temperature" (the effective per-sample temperature is T * std(z)).

Defaults are their CIFAR-100 recipe for KD (README: ``--logit-stand --base-temp 2 --kd-weight 9``): T 2,
KD weight 9, CE weight 0.1 (the CE weight of mdistiller's KD and of the repo's CTKD script
``-r 0.1 -a 9 --kd_T 2``), on the usual 240-epoch CIFAR schedule. All released configs use these values for
every pair; a few of the released training logs are named with base temperature 3 (vgg13 pairs, ResNet50 ->
MobileNetV2), which the configs do not reproduce.

Every term is per sample, so under DDP each rank averages its own shard (no cross-rank communication).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pckd.data.batch import Batch
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_per_sample
from pckd.methods.standardize import standardize
from pckd.methods.weighting import WeightingParams
from pckd.params import Settings, hp


def ls_per_sample(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """T^2 * KL(softmax(Z(teacher)/T) || softmax(Z(student)/T)) for each row, shape [B]."""
    return kd_per_sample(standardize(student_logits), standardize(teacher_logits), T)


def ls_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """Batch mean of :func:`ls_per_sample`."""
    return ls_per_sample(student_logits, teacher_logits, T).mean()


@dataclass
class LSParams(Settings):
    """Hyper-parameters of `ls` (config section ``ls.*``; the authors' CIFAR-100 KD recipe)."""

    temperature: float = hp(2.0, gt=0, doc="base temperature T applied to the standardised logits (--base-temp 2)")
    ce_weight: float = hp(0.1, ge=0, doc="weight of the cross-entropy on the labels")
    kd_weight: float = hp(9.0, ge=0, doc="weight of the standardised KD term (--kd-weight 9)")
    weighting: WeightingParams = hp(factory=WeightingParams, doc="sample weighting of the per-sample KD term")


@register_method("ls", LSParams, "KD on per-sample z-scored logits (logit standardisation), CE 0.1 + 9 KD, T 2")
class LS(TeacherDistiller):
    """Vanilla KD on z-score standardised teacher and student logits."""

    params: LSParams

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        losses = {
            "ce": p.ce_weight * self.cross_entropy(logits, batch.labels),
            "ls": p.kd_weight * self.weighting.mean(ls_per_sample(logits, teacher_logits, p.temperature),
                                                    logits, batch.labels, epoch),
        }
        return StepOutput(logits=logits, losses=losses)
