"""Multi-level logit distillation (`mld`; Jin et al., "Multi-Level Logit Distillation", CVPR 2023).

Instance-level KD, batch-level and class-level correlation matching, each summed over the temperatures
{T, 3, 5, 2, 6}, on a weak (crop + flip) and a strong (RandAugment + Cutout) view, plus CE on both views. By
default it computes what the released ``mdistiller/distillers/KD_ours.py`` computes, quirks included;
``mld.corrected: true`` fixes them. Equations, each quirk, defaults and their sources: docs/methods/mld.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.data.batch import Batch
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_per_sample
from pckd.methods.precision import as_float, no_autocast
from pckd.methods.standardize import standardize_pair
from pckd.params import Settings, hp


# ---- pure functions ----------------------------------------------------------------------------------------
def _probs(logits: Tensor, T: float) -> Tensor:
    return F.softmax(as_float(logits) / T, dim=1)


def class_correlation_gap(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """The released ``cc_loss(..., reduce=False)``: ((P_t^T P_t - P_s^T P_s) ** 2) / K, a [K, K] matrix, with
    P = softmax(logits / T) over the K classes ([B, K]); ``cc_loss`` itself is its sum."""
    p_s, p_t = _probs(student_logits, T), _probs(teacher_logits, T)
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2) / p_t.shape[1]


def batch_correlation_gap(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """The released ``bc_loss(..., reduce=False)``: ((P_t P_t^T - P_s P_s^T) ** 2) / B, a [B, B] matrix;
    ``bc_loss`` itself is its sum."""
    p_s, p_t = _probs(student_logits, T), _probs(teacher_logits, T)
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2) / p_t.shape[0]


def below_percentile(values: Tensor, percentile: float) -> Tensor:
    """Boolean mask ``values <= np.percentile(values, percentile)`` (linear interpolation, NumPy's default),
    computed on the device (``torch.quantile`` interpolates alike)."""
    v = as_float(values.detach())
    return v <= torch.quantile(v, percentile / 100.0)


def confidence_masks(teacher_weak_logits: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """(sample mask [B], class mask [K]) of the released code, from the teacher's weak-view softmax (T = 1):
    a sample counts where its top probability is at most the batch's ``percentile``-th percentile; a class
    counts where its probability summed over the batch is at most the classes' percentile."""
    p = F.softmax(as_float(teacher_weak_logits.detach()), dim=1)
    return below_percentile(p.max(dim=1).values, percentile), below_percentile(p.sum(dim=0), percentile)


@dataclass
class MLDTerms:
    """The loss terms of one step before the weights (each already summed over the temperatures), and the
    masks they used."""

    ce: Tensor
    kd_weak: Tensor
    kd_strong: Tensor
    cc_weak: Tensor
    bc_weak: Tensor
    cc_strong: Tensor | None  # computed by the released code but never added to its loss: None there
    bc_strong: Tensor | None
    sample_mask: Tensor
    class_mask: Tensor


def _total(values: list[Tensor]) -> Tensor:
    return torch.stack(values).sum()


def mld_terms(s_weak: Tensor, s_strong: Tensor, t_weak: Tensor, t_strong: Tensor, labels: Tensor,
              temperatures: list[float], percentile: float = 50.0, corrected: bool = False,
              standardize: bool = False) -> MLDTerms:
    """The terms of ``KD_ours.forward_train`` from student/teacher logits of the weak and strong views.

    Released (``corrected=False``), with m the sample mask and c the class mask (:func:`confidence_masks`):
      kd_weak   = sum_T mean_i KD_i(T) * mean(m)          kd_loss returns the batch mean: the mask only rescales
      kd_strong = sum_T mean_i KD_i(T) on the strong view, except that its last two temperatures (2 and 6 by
                  default) use the weak logits
      cc_weak   = sum_T sum(cc(T)) * mean(c);  bc_weak = sum_T sum(bc(T)) * mean(m)
      cc/bc of the strong view are computed there and dropped: None here.
    Corrected: the masks select (kd_weak = sum_T mean_i m_i KD_i(T); cc and bc sum the entries of the masked
    columns, what the released broadcast ``matrix * mask`` selects, without its 1/numel), every strong term uses
    the strong logits, and cc_strong (unmasked) and bc_strong (masked by m) are added.
    ``standardize`` z-scores the logits of the KD terms only (Sun et al.'s MLKD.py). CE is summed over both views.
    """
    m, c = confidence_masks(t_weak, percentile)
    dtype = as_float(s_weak).dtype
    m_f, c_f = m.to(dtype), c.to(dtype)
    sw_kd, tw_kd = standardize_pair(s_weak, t_weak, standardize)
    ss_kd, ts_kd = standardize_pair(s_strong, t_strong, standardize)
    ce = F.cross_entropy(as_float(s_weak), labels) + F.cross_entropy(as_float(s_strong), labels)
    temps = list(temperatures)
    if not corrected:
        strong = [(ss_kd, ts_kd) if k < len(temps) - 2 else (sw_kd, tw_kd) for k in range(len(temps))]
        return MLDTerms(
            ce=ce,
            kd_weak=_total([kd_per_sample(sw_kd, tw_kd, T).mean() * m_f.mean() for T in temps]),
            kd_strong=_total([kd_per_sample(s, t, T).mean() for (s, t), T in zip(strong, temps)]),
            cc_weak=_total([class_correlation_gap(s_weak, t_weak, T).sum() * c_f.mean() for T in temps]),
            bc_weak=_total([batch_correlation_gap(s_weak, t_weak, T).sum() * m_f.mean() for T in temps]),
            cc_strong=None, bc_strong=None, sample_mask=m, class_mask=c)
    return MLDTerms(
        ce=ce,
        kd_weak=_total([(kd_per_sample(sw_kd, tw_kd, T) * m_f).mean() for T in temps]),
        kd_strong=_total([kd_per_sample(ss_kd, ts_kd, T).mean() for T in temps]),
        cc_weak=_total([(class_correlation_gap(s_weak, t_weak, T) * c_f).sum() for T in temps]),
        bc_weak=_total([(batch_correlation_gap(s_weak, t_weak, T) * m_f).sum() for T in temps]),
        cc_strong=_total([class_correlation_gap(s_strong, t_strong, T).sum() for T in temps]),
        bc_strong=_total([(batch_correlation_gap(s_strong, t_strong, T) * m_f).sum() for T in temps]),
        sample_mask=m, class_mask=c)


# ---- the method ------------------------------------------------------------------------------------------
@dataclass
class MLDParams(Settings):
    """Hyper-parameters of `mld` (config section ``mld.*``; the released CIFAR-100 defaults)."""

    temperature: float = hp(4.0, gt=0, doc="base temperature T (KD.TEMPERATURE; 1 in the ImageNet config)")
    extra_temperatures: list[float] = hp(factory=lambda: [3.0, 5.0, 2.0, 6.0], gt=0,
                                         doc="the other temperatures every term is summed over, in the released "
                                             "order (the strong sums' last two use weak logits unless corrected)")
    ce_weight: float = hp(0.1, ge=0, doc="weight of CE on each view (KD.LOSS.CE_WEIGHT)")
    kd_weight: float = hp(0.9, ge=0, doc="weight of every KD, cc and bc term (KD.LOSS.KD_WEIGHT)")
    percentile: float = hp(50.0, ge=0, le=100, doc="percentile of the teacher's confidence below which the "
                                                    "masks keep a sample / a class (np.percentile(..., 50))")
    corrected: bool = hp(False, doc="fix the released code's quirks: masks select samples/classes, strong terms "
                                    "use strong logits, strong cc/bc are added (docs/methods/mld.md)")
    logit_standardize: bool = hp(False, doc="z-score the logits of the KD terms (Sun et al. 2024, MLKD.py); their "
                                            "recipe with it: T 2, kd_weight 9")

    def check(self, prefix: str) -> None:
        """At least two extra temperatures: the released strong sum takes its last two from the weak view."""
        if len(self.extra_temperatures) < 2:
            raise UserError(f"config key '{prefix}.extra_temperatures'={self.extra_temperatures!r} needs at least "
                            "2 temperatures; the released set is [3.0, 5.0, 2.0, 6.0]")

    @property
    def temperatures(self) -> list[float]:
        """{T, 3, 5, 2, 6} in the released order."""
        return [float(self.temperature), *(float(t) for t in self.extra_temperatures)]


@register_method("mld", MLDParams, "multi-level logit KD: instance/batch/class terms over 5 temperatures on weak + "
                                   "strong (RandAugment) views, released code's quirks unless mld.corrected")
class MLD(TeacherDistiller):
    """Multi-level logit distillation on a weak and a strong view."""

    params: MLDParams
    strong_view = True

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        x_weak = batch.augment.standard(batch.images)
        x_strong = batch.augment.strong(batch.images)
        t_weak = self.teacher_features(x_weak).logits  # teacher first (see Distiller)
        t_strong = self.teacher_features(x_strong).logits
        # two student forwards, as released: each view's BatchNorm statistics are its own
        s_weak, s_strong = self.student(x_weak), self.student(x_strong)
        with no_autocast(s_weak):  # the correlation matmuls in float32, not in an autocast dtype
            terms = mld_terms(s_weak, s_strong, t_weak, t_strong, batch.labels, p.temperatures, p.percentile,
                              p.corrected, p.logit_standardize)
        w = p.kd_weight
        losses = {"ce": p.ce_weight * terms.ce, "kd_weak": w * terms.kd_weak, "kd_strong": w * terms.kd_strong,
                  "cc": w * terms.cc_weak, "bc": w * terms.bc_weak}
        if terms.cc_strong is not None and terms.bc_strong is not None:
            losses.update(cc_strong=w * terms.cc_strong, bc_strong=w * terms.bc_strong)
        stats = {"mask_fraction": terms.sample_mask.float().mean(),
                 "class_mask_fraction": terms.class_mask.float().mean()}
        return StepOutput(logits=s_weak, losses=losses, stats=stats)
