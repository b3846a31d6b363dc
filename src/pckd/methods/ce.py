"""Plain supervised training with cross-entropy: teachers, and students trained from scratch."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from pckd.data.batch import Batch
from pckd.methods.base import Distiller, StepOutput, register_method
from pckd.params import Settings, hp


@dataclass
class CEParams(Settings):
    """Hyper-parameters of `ce`."""

    label_smoothing: float = hp(0.0, ge=0, le=1)


@register_method("ce", CEParams, "cross-entropy only (train a teacher, or a student from scratch)")
class CrossEntropy(Distiller):
    """Supervised baseline; needs no teacher."""

    needs_teacher = False
    params: CEParams

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        x = batch.augment.standard(batch.images)
        logits = self.student(x)
        ce = F.cross_entropy(logits.float(), batch.labels, label_smoothing=self.params.label_smoothing)
        return StepOutput(logits=logits, losses={"ce": ce})
