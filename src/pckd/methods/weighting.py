"""Per-sample weighting: the reducer that turns per-sample loss terms into scalars, for any method.

A method computes a term per sample (KD, DKD, CKD, ...) and hands it to a :class:`SampleWeighting` together
with the per-sample cross-entropy it already has; the weighting decides how much each sample counts:

* ``none`` (alias ``off``): every sample counts fully, the plain batch mean;
* ``preview`` (PCKD, Eqs. 5-7): difficulty s_i = CE_i / mean(CE); w_i = 1 if s_i <= gamma^epoch else exp(-s_i^2);
* ``curriculum`` (Table IX): w_i = 1 if s_i <= gamma^epoch else 0;
* ``focal`` (Table VIII): w_i = (1 - p_{i,y})^power, detached.

Weighted sums are divided by the number of entries, not by the sum of weights (PCKD's released code), so
down-weighting lowers a term instead of redistributing it. Under DDP the batch mean of CE is the global mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.distributed import global_mean
from pckd.errors import UserError
from pckd.methods.precision import as_float
from pckd.params import Choice, Settings, hp


class WeightingMode(Choice):
    """How per-sample terms are weighted (``<method>.weighting.mode``, PCKD's ``pckd.preview.mode``)."""

    none = "none"
    preview = "preview"
    curriculum = "curriculum"
    focal = "focal"
    off = "none"  # alias: the PCKD paper's "preview off" ablation


# ---- pure functions ----------------------------------------------------------------------------------------
def difficulty(ce_per_sample: Tensor, batch_mean_ce: Tensor | None = None) -> Tensor:
    """Eq. 5: difficulty s_i = CE_i / mean CE, shape [B].

    ``batch_mean_ce`` defaults to the mean of ``ce_per_sample``; under DDP pass the global mean
    (:func:`pckd.distributed.global_mean`). Gradients flow through both unless the caller detaches. The mean is
    clamped to the dtype's smallest normal number so a batch with CE exactly 0 everywhere gives s = 0 (weight 1)
    instead of 0/0 = NaN.
    """
    ce = as_float(ce_per_sample)
    mean = ce.mean() if batch_mean_ce is None else batch_mean_ce.to(ce.dtype)
    return ce / mean.clamp_min(torch.finfo(ce.dtype).tiny)


def preview_threshold(epoch: int, gamma: float) -> float:
    """Eq. 7: the difficulty threshold t = gamma ** epoch (epochs counted from 1)."""
    return float(gamma) ** int(epoch)


def preview_weights(ce_per_sample: Tensor, epoch: int, gamma: float,
                    batch_mean_ce: Tensor | None = None) -> Tensor:
    """Eqs. 5-7: w_i = 1 if s_i <= gamma**epoch else exp(-s_i^2), shape [B].

    Not detached here: with a differentiable ``ce_per_sample`` the hard samples' weights carry gradient (the
    released code's KD term); :class:`SampleWeighting` decides whether to detach.
    """
    s = difficulty(ce_per_sample, batch_mean_ce)
    t = preview_threshold(epoch, gamma)
    return torch.where(s <= t, torch.ones_like(s), torch.exp(-s * s))


def curriculum_weights(ce_per_sample: Tensor, epoch: int, gamma: float,
                       batch_mean_ce: Tensor | None = None) -> Tensor:
    """Curriculum variant (Table IX): w_i = 1 if s_i <= gamma**epoch else 0, shape [B]."""
    s = difficulty(ce_per_sample, batch_mean_ce)
    t = preview_threshold(epoch, gamma)
    return (s <= t).to(s.dtype)


def focal_weights(probs_true: Tensor, power: float = 2.0) -> Tensor:
    """Focal variant (Table VIII): w_i = (1 - p_{i,y_i})^power, shape [B], from the true-class probability."""
    p = as_float(probs_true)
    return (1.0 - p).clamp_min(0.0).pow(power)


def uniform_weights(ce_per_sample: Tensor) -> Tensor:
    """Mode ``none``: every weight is 1 (no gradient), shape [B]."""
    return torch.ones_like(as_float(ce_per_sample)).detach()


def weighted_mean(per_sample: Tensor, weights: Tensor, copies: int = 1) -> Tensor:
    """sum_n w_{n // copies} * x_n / numel(x), a scalar.

    ``per_sample`` has ``copies`` consecutive entries per sample (flat index ``copies*i + j``), so the weight of
    sample i covers entries copies*i .. copies*i + copies-1. The divisor is the number of entries (B or 4B), not
    the sum of the weights.
    """
    if per_sample.numel() != weights.numel() * copies:
        raise ValueError(f"{per_sample.numel()} per-sample values do not match {weights.numel()} weights "
                         f"x {copies} copies")
    x = as_float(per_sample).reshape(-1)
    w = weights.reshape(-1).to(x.dtype)
    if copies > 1:
        w = w.repeat_interleave(copies)
    return (w * x).sum() / x.numel()


def true_class_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """p_{i,y_i} = softmax(logits)_i[y_i] (detached, float32+), shape [B]: the input of ``focal`` weights."""
    return F.softmax(as_float(logits.detach()), dim=1).gather(1, labels[:, None]).squeeze(1)


# ---- the component -----------------------------------------------------------------------------------------
class SampleWeighting:
    """Per-sample weights and their reduction.

    mode: a :class:`WeightingMode`. gamma: threshold growth t = gamma**epoch (preview, curriculum). detach:
    detach the weights (default); ``False`` lets the preview/curriculum weight carry gradient into the CE values
    it was computed from (PCKD's released KD term). focal_power: the exponent of ``focal``.
    """

    def __init__(self, mode: str = WeightingMode.preview, gamma: float = 1.005,
                 detach: bool = True, focal_power: float = 2.0) -> None:
        try:  # any Choice whose values are these words (PCKD's PreviewMode says "off" for "none")
            self.mode = WeightingMode.parse(str(mode), "weighting.mode")
        except UserError as exc:  # built in code, not from a config: a programming error
            raise ValueError(str(exc)) from None
        self.gamma = float(gamma)
        self.detach = bool(detach)
        self.focal_power = float(focal_power)

    @property
    def grad_through_weights(self) -> bool:
        """Whether the weights carry gradient (preview/curriculum with ``detach=False``)."""
        return self.mode in (WeightingMode.preview, WeightingMode.curriculum) and not self.detach

    def threshold(self, epoch: int) -> float:
        """The difficulty threshold of ``epoch`` (counted from 1)."""
        return preview_threshold(epoch, self.gamma)

    def weights(self, ce_per_sample: Tensor, probs_true: Tensor | None, epoch: int,
                batch_mean_ce: Tensor | None = None) -> Tensor:
        """Weights [B] of the samples whose per-sample CE (and true-class probability, for ``focal``) are given.

        ``batch_mean_ce`` defaults to the global mean over all ranks of ``ce_per_sample`` (Eq. 5 under DDP).
        """
        if self.mode == WeightingMode.none:
            return uniform_weights(ce_per_sample)
        if self.mode == WeightingMode.focal:
            if probs_true is None:
                raise ValueError("focal weighting needs the true-class probabilities")
            return focal_weights(probs_true.detach(), self.focal_power)
        ce = ce_per_sample.detach() if self.detach else ce_per_sample
        if batch_mean_ce is None:
            batch_mean_ce = global_mean(ce)
        elif self.detach:
            batch_mean_ce = batch_mean_ce.detach()
        fn = preview_weights if self.mode == WeightingMode.preview else curriculum_weights
        w = fn(ce, epoch, self.gamma, batch_mean_ce)
        return w.detach() if self.detach else w

    @staticmethod
    def reduce(per_sample: Tensor, weights: Tensor, copies: int = 1) -> Tensor:
        """Weighted sum divided by the number of entries; see :func:`weighted_mean`."""
        return weighted_mean(per_sample, weights, copies)

    def mean(self, per_sample: Tensor, logits: Tensor, labels: Tensor, epoch: int) -> Tensor:
        """The weighted batch mean of ``per_sample`` [B], with weights from the student ``logits`` and the
        ``labels`` of the same samples. Mode ``none`` is exactly ``per_sample.mean()``."""
        if self.mode == WeightingMode.none:
            return per_sample.mean()
        ce_i = F.cross_entropy(as_float(logits), labels, reduction="none")
        src = ce_i if self.grad_through_weights else ce_i.detach()
        probs = true_class_probability(logits, labels) if self.mode == WeightingMode.focal else None
        return self.reduce(per_sample, self.weights(src, probs, epoch))


@dataclass
class WeightingParams(Settings):
    """A method's ``weighting.*`` section: how its per-sample terms are weighted (default: not at all)."""

    mode: WeightingMode = hp(WeightingMode.none, doc="none | preview | curriculum | focal (the PCKD paper's axis)")
    gamma: float = hp(1.005, gt=0, doc="preview/curriculum threshold growth t = gamma^epoch")
    detach: bool = hp(True, doc="detach the weights (False: preview/curriculum weights carry gradient)")
    focal_power: float = hp(2.0, ge=0, doc="exponent of (1 - p_y) in focal mode")

    def build(self) -> SampleWeighting:
        """The reducer these settings describe."""
        return SampleWeighting(self.mode, self.gamma, self.detach, self.focal_power)


__all__ = [
    "SampleWeighting", "WeightingMode", "WeightingParams", "curriculum_weights", "difficulty", "focal_weights",
    "preview_threshold", "preview_weights", "true_class_probability", "uniform_weights", "weighted_mean",
]
