"""DIST (`dist`; Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022).

Inter- and intra-class Pearson-correlation relations of the softened predictions. Equations, defaults with their
sources and deviations: docs/methods/dist.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pckd.data.batch import Batch
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.precision import as_float
from pckd.methods.weighting import WeightingParams
from pckd.params import Settings, hp

PEARSON_EPS = 1e-8  # added to the product of the norms, as in the authors' code


def pearson_rows(a: Tensor, b: Tensor, eps: float = PEARSON_EPS) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (rows [N, D] -> [N]), with ``eps``
    added to the product of the centred norms so constant rows give 0 instead of 0/0."""
    a_c = a - a.mean(dim=1, keepdim=True)
    b_c = b - b.mean(dim=1, keepdim=True)
    return (a_c * b_c).sum(dim=1) / (a_c.norm(dim=1) * b_c.norm(dim=1) + eps)


def _probs(logits: Tensor, T: float) -> Tensor:
    return torch.softmax(as_float(logits) / T, dim=1)


def inter_class_per_sample(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """Inter-class relation per sample, shape [B]: T^2 * (1 - pearson(p^S_i, p^T_i)) over the classes of row i,
    with p = softmax(z / T); float32 at least."""
    return (1.0 - pearson_rows(_probs(student_logits, T), _probs(teacher_logits, T))) * (T * T)


def intra_class_relation(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """Intra-class relation of the batch, a scalar: T^2 * (1 - mean over classes c of pearson(p^S_{:,c},
    p^T_{:,c})), each correlation taken over the samples of the batch (a batch statistic, not per sample)."""
    p_s, p_t = _probs(student_logits, T), _probs(teacher_logits, T)
    return (1.0 - pearson_rows(p_s.t(), p_t.t()).mean()) * (T * T)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float, gamma: float, T: float) -> Tensor:
    """The DIST term ``beta * inter + gamma * intra`` of one batch (the authors' ``DIST`` module)."""
    inter = inter_class_per_sample(student_logits, teacher_logits, T).mean()
    return beta * inter + gamma * intra_class_relation(student_logits, teacher_logits, T)


@dataclass
class DISTParams(Settings):
    """Hyper-parameters of `dist` (section ``dist.*``; the authors' CIFAR-100 config ``dist_cifar.yaml``)."""

    ce_weight: float = hp(1.0, ge=0, doc="weight of the cross-entropy on the labels (ori_loss_weight)")
    kd_weight: float = hp(2.0, ge=0, doc="weight of the whole DIST term (kd_loss_weight)")
    beta: float = hp(1.0, ge=0, doc="weight of the inter-class relation inside the DIST term")
    gamma: float = hp(1.0, ge=0, doc="weight of the intra-class relation inside the DIST term")
    temperature: float = hp(4.0, gt=0, doc="softmax temperature tau of both relations (kd: dist_t4)")
    weighting: WeightingParams = hp(factory=WeightingParams,
                                    doc="sample weighting of the per-sample inter-class term (intra is per batch)")


@register_method("dist", DISTParams, "DIST: CE + inter- and intra-class Pearson relations of softened outputs")
class DIST(TeacherDistiller):
    """DIST; the two relations are logged separately as ``inter`` and ``intra`` (each times kd_weight)."""

    params: DISTParams

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        logits, teacher_logits = self.logits_of_standard_view(batch)  # teacher first
        inter = self.weighting.mean(inter_class_per_sample(logits, teacher_logits, p.temperature), logits,
                                    batch.labels, epoch)
        intra = intra_class_relation(logits, teacher_logits, p.temperature)
        losses = {
            "ce": p.ce_weight * self.cross_entropy(logits, batch.labels),
            "inter": (p.kd_weight * p.beta) * inter,
            "intra": (p.kd_weight * p.gamma) * intra,
        }
        return StepOutput(logits=logits, losses=losses)
