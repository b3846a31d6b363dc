"""PCKD: Preview-based Category Contrastive Knowledge Distillation (Ding et al., TCSVT 2025).

The student is trained on 4 rotated copies of every image with

    L = ce * CE(unrotated) + kd * (1/B) sum_i w_i KD_i + ccc * (1/4B) sum_{i,j} w_i l_ij
        + fa * (2 - 2 mean cos(MLP(f_s), f_t)) + ca * MSE([W_s|b_s], [W_t|b_t])

where w_i is the *preview* weight of sample i (1 for easy samples, exp(-s_i^2) for hard ones, with a
difficulty threshold that grows every epoch). The equations, the places where the released code and the paper
differ, and every default's origin are in ``docs/methods/pckd.md``.

Layout: pure loss functions first (each works on float32, or float64 when given float64), then the weighting
component that turns per-sample terms into scalars, then the hyper-parameters and the Distiller.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.engine.distributed import (
    all_gather_rows,
    global_mean,
    is_distributed,
    is_main_process,
)
from pckd.errors import UserError
from pckd.methods import kd as _kd
from pckd.methods.base import Distiller, EpochWriter, StepOutput, register_method
from pckd.models.interface import centres

PREVIEW_MODES = ("off", "preview", "curriculum", "focal")
CCC_FORMS = ("supcon", "centers")

# The released SupCon code adds this to the (max-shifted) denominator before the log.
SUPCON_EPS = 1e-7


# ---- numeric helpers ---------------------------------------------------------------------------------------
def _acc(x: Tensor) -> Tensor:
    """Accumulation dtype: float64 stays float64, everything else (bf16/fp16/fp32) becomes float32."""
    return x if x.dtype == torch.float64 else x.float()


@contextlib.contextmanager
def _no_autocast(x: Tensor) -> Iterator[None]:
    """Disable autocast so the matmuls of a loss really run in float32 (bf16 would round 57x-scaled logits)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


# ---- pure loss functions -----------------------------------------------------------------------------------
kd_per_sample = _kd.kd_per_sample  # T^2 * KL per row, [B]; the project's one KD formula (see pckd.methods.kd)


def difficulty(ce_per_sample: Tensor, batch_mean_ce: Optional[Tensor] = None) -> Tensor:
    """Eq. 5: difficulty s_i = CE_i / mean CE, shape [B].

    ``batch_mean_ce`` defaults to the mean of ``ce_per_sample``; under DDP pass the global mean
    (:func:`pckd.engine.distributed.global_mean`). Gradients flow through both unless the caller detaches.
    The mean is clamped to the dtype's smallest normal number so a batch with CE exactly 0 everywhere gives
    s = 0 (weight 1) instead of 0/0 = NaN.
    """
    ce = _acc(ce_per_sample)
    mean = ce.mean() if batch_mean_ce is None else batch_mean_ce.to(ce.dtype)
    return ce / mean.clamp_min(torch.finfo(ce.dtype).tiny)


def preview_threshold(epoch: int, gamma: float) -> float:
    """Eq. 7: the difficulty threshold t = gamma ** epoch (epochs counted from 1)."""
    return float(gamma) ** int(epoch)


def preview_weights(
    ce_per_sample: Tensor, epoch: int, gamma: float, batch_mean_ce: Optional[Tensor] = None
) -> Tensor:
    """Eqs. 5-7: w_i = 1 if s_i <= gamma**epoch else exp(-s_i^2), shape [B].

    Not detached here: with a differentiable ``ce_per_sample`` the hard samples' weights carry gradient (the
    released code's KD term); the weighting component decides whether to detach.
    """
    s = difficulty(ce_per_sample, batch_mean_ce)
    t = preview_threshold(epoch, gamma)
    return torch.where(s <= t, torch.ones_like(s), torch.exp(-s * s))


def curriculum_weights(
    ce_per_sample: Tensor, epoch: int, gamma: float, batch_mean_ce: Optional[Tensor] = None
) -> Tensor:
    """Curriculum variant (Table IX): w_i = 1 if s_i <= gamma**epoch else 0, shape [B]."""
    s = difficulty(ce_per_sample, batch_mean_ce)
    t = preview_threshold(epoch, gamma)
    return (s <= t).to(s.dtype)


def focal_weights(probs_true: Tensor, power: float = 2.0) -> Tensor:
    """Focal variant (Table VIII): w_i = (1 - p_{i,y_i})^power, shape [B], from the true-class probability."""
    p = _acc(probs_true)
    return (1.0 - p).clamp_min(0.0).pow(power)


def uniform_weights(ce_per_sample: Tensor) -> Tensor:
    """``preview: off``: every weight is 1 (no gradient), shape [B]."""
    return torch.ones_like(_acc(ce_per_sample)).detach()


def category_profiles(embedding: Tensor, class_centres: Tensor) -> Tensor:
    """Category-similarity profile ``normalize(embedding) @ centres^T``, [N, K] (Eq. 4, released code).

    The centres (classifier weights [K, d]) are not normalised and no bias is added, as in the released code.
    """
    with _no_autocast(embedding):
        e = F.normalize(_acc(embedding), dim=1)
        return e @ class_centres.to(e.dtype).t()


def category_center_contrast(
    profiles_s: Tensor, profiles_t: Tensor, labels: Tensor, tau: float, base_tau: float,
    rows: Optional[slice] = None,
) -> Tensor:
    """Eq. 4 as released (``ccc: supcon``): supervised contrast over the stacked profiles, shape [N].

    Anchors A = [profiles_s; profiles_t] (2N x K) with labels [labels; labels]; s_rq = <A_r, A_q> / tau.
    For every anchor r, with m_r the (detached) row maximum including r itself,

        log p_rq = (s_rq - m_r) - log(sum_{q' != r} exp(s_rq' - m_r) + 1e-7)
        l_r      = -(tau / base_tau) * mean_{q in P(r)} log p_rq,     P(r) = {q != r : label_q = label_r}

    and the result is l[:N] + l[N:] (the two halves of each copy summed). An anchor without any positive
    contributes 0. The epsilon sits after the max shift exactly as in the released code.

    ``rows``: compute only the copies ``rows`` (their anchors in both halves) against all 2N columns, shape
    [len(rows)]. Under DDP the profiles are gathered from every rank and each rank takes its own rows, so the
    contrast runs over the global batch.
    """
    n = profiles_s.shape[0]
    if profiles_t.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"profiles {tuple(profiles_s.shape)}/{tuple(profiles_t.shape)} and labels "
                         f"{tuple(labels.shape)} disagree on N")
    rows = slice(0, n) if rows is None else rows
    with _no_autocast(profiles_s):
        ps = _acc(profiles_s)
        anchors = torch.cat([ps, profiles_t.to(ps.dtype)], dim=0)
        lab = labels.reshape(-1).repeat(2)
        if rows.start == 0 and rows.stop == n:  # every anchor: no gather of rows
            own, m = torch.arange(2 * n, device=anchors.device), n
            sim = anchors @ anchors.t() / tau
        else:
            local = torch.arange(rows.start, rows.stop, device=anchors.device)
            own, m = torch.cat([local, local + n]), rows.stop - rows.start
            sim = anchors[own] @ anchors.t() / tau
        sim = sim - sim.max(dim=1, keepdim=True).values.detach()  # cancels out up to the epsilon
        not_self = own[:, None] != torch.arange(2 * n, device=sim.device)[None, :]
        positive = (lab[own][:, None] == lab[None, :]) & not_self
        denom = (sim.exp() * not_self).sum(dim=1, keepdim=True)
        log_prob = sim - torch.log(denom + SUPCON_EPS)
        pos = positive.to(sim.dtype)
        n_pos = pos.sum(dim=1)
        # clamp: an anchor with no positive has a zero numerator and must give 0, not 0/0
        mean_log_prob_pos = (pos * log_prob).sum(dim=1) / n_pos.clamp_min(1.0)
        per_anchor = -(tau / base_tau) * mean_log_prob_pos
        return per_anchor[:m] + per_anchor[m:]


def category_center_contrast_centers(
    emb_s: Tensor, emb_t: Tensor, centres_s: Tensor, centres_t: Tensor, labels: Tensor, tau: float
) -> Tensor:
    """Eq. 4 as the paper reads (``ccc: centers``): sample-to-centre cosine softmax, shape [N].

    l_n = CE_k(cos(emb_s_n, W_s_k) / tau, y_n) + CE_k(cos(emb_t_n, W_t_k) / tau, y_n): each embedded student
    feature is pulled to its class centre and pushed from the other K-1 centres, once against the student's
    centres and once against the teacher's. The caller detaches the teacher centres.
    """
    with _no_autocast(emb_s):
        dtype = _acc(emb_s).dtype

        def cosine_ce(emb: Tensor, cen: Tensor) -> Tensor:
            logits = F.normalize(emb.to(dtype), dim=1) @ F.normalize(cen.to(dtype), dim=1).t() / tau
            return F.cross_entropy(logits, labels, reduction="none")

        return cosine_ce(emb_s, centres_s) + cosine_ce(emb_t, centres_t)


def feature_alignment(projected_student: Tensor, teacher_feature: Tensor) -> Tensor:
    """Eq. 2: 2 - 2 * mean_n cos(g(f_s)_n, f_t_n), a scalar; equals the mean squared distance of unit vectors.

    The teacher feature is detached.
    """
    with _no_autocast(projected_student):
        s = F.normalize(_acc(projected_student), dim=1)
        t = F.normalize(_acc(teacher_feature.detach()).to(s.dtype), dim=1)
        return 2.0 - 2.0 * (s * t).sum(dim=1).mean()


def center_alignment(
    w_s: Tensor, b_s: Optional[Tensor], w_t: Tensor, b_t: Optional[Tensor]
) -> Optional[Tensor]:
    """Eq. 3 as released: mean squared error between [W_s | b_s] and [W_t | b_t], a scalar.

    The bias is appended as an extra column (a missing bias is simply left out). Returns None when the two
    matrices differ in shape (e.g. a 64-d student under a 128-d teacher): the term is then skipped, as in the
    released code. The teacher side is detached.
    """

    def stacked(w: Tensor, b: Optional[Tensor]) -> Tensor:
        return w if b is None else torch.cat([w, b.unsqueeze(1)], dim=1)

    m_s = stacked(w_s, b_s)
    m_t = stacked(w_t.detach(), None if b_t is None else b_t.detach())
    if m_s.shape != m_t.shape:
        return None
    m_s = _acc(m_s)
    return F.mse_loss(m_s, m_t.to(m_s.dtype))


def weighted_mean(per_sample: Tensor, weights: Tensor, copies: int = 1) -> Tensor:
    """sum_n w_{n // copies} * x_n / numel(x), a scalar.

    ``per_sample`` has ``copies`` consecutive entries per sample (flat index ``copies*i + j``), so the weight of
    sample i covers entries copies*i .. copies*i + copies-1. The divisor is the number of entries (B or 4B), not
    the sum of the weights: down-weighting lowers the loss instead of redistributing it (released code).
    """
    if per_sample.numel() != weights.numel() * copies:
        raise ValueError(f"{per_sample.numel()} per-sample values do not match {weights.numel()} weights "
                         f"x {copies} copies")
    x = _acc(per_sample).reshape(-1)
    w = weights.reshape(-1).to(x.dtype)
    if copies > 1:
        w = w.repeat_interleave(copies)
    return (w * x).sum() / x.numel()


# ---- the weighting component -------------------------------------------------------------------------------
class PreviewWeighting:
    """Per-sample weights and their reduction, shared by every per-sample term (KD, CCC, CE, ...).

    mode: ``preview`` (Eqs. 5-7), ``curriculum`` (hard samples get 0), ``focal`` ((1-p_y)^power, always
        detached) or ``off`` (all ones).
    gamma: threshold growth t = gamma**epoch.
    detach: detach the weights (default). ``False`` lets the preview/curriculum weight carry gradient into the
        CE values it was computed from (the released code's KD term).
    """

    def __init__(self, mode: str = "preview", gamma: float = 1.005, detach: bool = True,
                 focal_power: float = 2.0) -> None:
        if mode not in PREVIEW_MODES:
            raise ValueError(f"preview mode {mode!r} is not one of {', '.join(PREVIEW_MODES)}")
        self.mode = mode
        self.gamma = float(gamma)
        self.detach = bool(detach)
        self.focal_power = float(focal_power)

    def threshold(self, epoch: int) -> float:
        """The difficulty threshold of ``epoch`` (counted from 1)."""
        return preview_threshold(epoch, self.gamma)

    def weights(self, ce_per_sample: Tensor, probs_true: Optional[Tensor], epoch: int,
                batch_mean_ce: Optional[Tensor] = None) -> Tensor:
        """Weights [B] of the samples whose per-sample CE (and true-class probability, for ``focal``) are given.

        ``batch_mean_ce`` defaults to the global mean over all ranks of ``ce_per_sample`` (Eq. 5 under DDP).
        """
        if self.mode == "off":
            return uniform_weights(ce_per_sample)
        if self.mode == "focal":
            if probs_true is None:
                raise ValueError("focal weighting needs the true-class probabilities")
            return focal_weights(probs_true.detach(), self.focal_power)
        ce = ce_per_sample.detach() if self.detach else ce_per_sample
        if batch_mean_ce is None:
            batch_mean_ce = global_mean(ce)
        elif self.detach:
            batch_mean_ce = batch_mean_ce.detach()
        fn = preview_weights if self.mode == "preview" else curriculum_weights
        w = fn(ce, epoch, self.gamma, batch_mean_ce)
        return w.detach() if self.detach else w

    @staticmethod
    def reduce(per_sample: Tensor, weights: Tensor, copies: int = 1) -> Tensor:
        """Weighted sum divided by the number of entries; see :func:`weighted_mean`."""
        return weighted_mean(per_sample, weights, copies)


# ---- hyper-parameters --------------------------------------------------------------------------------------
def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _check_number(key: str, value: float, *, positive: bool = False, minimum: Optional[float] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{key}={value!r} must be a finite number")
    if positive and value <= 0:
        raise UserError(f"{key}={value!r} must be > 0")
    if minimum is not None and value < minimum:
        raise UserError(f"{key}={value!r} must be >= {minimum:g}")


@dataclass
class PreviewParams:
    """The preview section ``pckd.preview.*`` (Eqs. 5-7 and their ablations)."""

    mode: str = "preview"  # off | preview | curriculum | focal
    detach: bool = True  # False = released code (the KD weight carries gradient; the CCC weight never does)
    on_ce: bool = False  # also weight CE (Table VII)
    focal_power: float = 2.0  # exponent of (1 - p_y) in `focal` mode (the released focal_loss uses 2)

    def __post_init__(self) -> None:
        _check_choice("pckd.preview.mode", self.mode, PREVIEW_MODES)
        _check_number("pckd.preview.focal_power", self.focal_power, minimum=0.0)


@dataclass
class PCKDParams:
    """Hyper-parameters of `pckd` (section ``pckd.*``); CIFAR-100 defaults from spec/decisions.md."""

    temperature: float = 4.0  # KD temperature T
    ce_weight: float = 1.0
    kd_weight: float = 1.0  # the paper's value is stripped; 1 is the project's assumption, 0 = "w/o L_KD"
    ccc_weight: float = 0.05
    fa_weight: float = 20.0
    ca_weight: float = 1.0  # skipped automatically when the classifier shapes differ
    ccc: str = "supcon"  # supcon (released code) | centers (paper's reading)
    ccc_tau: float = 4.0  # SupCon temperature of the released code
    ccc_base_tau: float = 0.07  # SupCon base temperature (loss scale tau / base_tau = 57.14)
    centers_tau: float = 0.1  # cosine temperature of `ccc: centers` (paper's value stripped; assumption)
    mlp_hidden_mult: int = 16  # feature-alignment MLP hidden width = mult * d_teacher
    n_rotations: int = 4
    gamma: float = 1.005  # threshold growth; configs with a resnet20 student use 1.015
    ccc_global: bool = True  # DDP: supcon contrast over the gathered global batch (False: within each rank)
    preview: PreviewParams = field(default_factory=PreviewParams)

    def __post_init__(self) -> None:
        if isinstance(self.preview, dict):  # plain mappings from code or YAML
            self.preview = PreviewParams(**self.preview)
        _check_number("pckd.temperature", self.temperature, positive=True)
        for name in ("ce_weight", "kd_weight", "ccc_weight", "fa_weight", "ca_weight"):
            _check_number(f"pckd.{name}", getattr(self, name), minimum=0.0)
        _check_choice("pckd.ccc", self.ccc, CCC_FORMS)
        for name in ("ccc_tau", "ccc_base_tau", "centers_tau", "gamma"):
            _check_number(f"pckd.{name}", getattr(self, name), positive=True)
        for name in ("mlp_hidden_mult", "n_rotations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"pckd.{name}={value!r} must be an integer >= 1")


# ---- the method --------------------------------------------------------------------------------------------
def _feature_mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Feature-alignment projector g: Linear -> BatchNorm1d -> ReLU -> Linear (BYOL-style head)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.BatchNorm1d(d_hidden), nn.ReLU(inplace=True),
                         nn.Linear(d_hidden, d_out))


def _gather_rows(x: Tensor) -> Tensor:
    """Concatenate a 1-d tensor of per-rank length from every rank (collective; identity when not distributed)."""
    if not is_distributed():
        return x
    n = torch.tensor([x.numel()], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=x.dtype, device=x.device)
    padded[: x.numel()] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


PROBES_PER_GROUP = 8  # the Fig. 6-style plot follows the 8 easiest and 8 hardest samples of the first epoch


@register_method("pckd", PCKDParams,
                 "PCKD: 4-rotation KD + category-centre contrast/alignment + feature alignment, preview-weighted")
class PCKD(Distiller):
    """Preview-based Category Contrastive KD (Ding et al., TCSVT 2025).

    Heads (trained with the student): ``fa_head`` d_s -> mult*d_t -> d_t (feature alignment), ``embed_s``
    d_s -> d_s and ``embed_t`` d_s -> d_t (category-centre contrast). A head whose loss weight is 0 is not built
    (under DDP an unused parameter would be an error).
    """

    params: PCKDParams

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: PCKDParams,
                 num_classes: int) -> None:
        super().__init__(student, teacher, params, num_classes)
        p = params
        if teacher is None:
            # only a CE-only ablation (Table VII: every distillation weight 0) can run without a teacher
            used = [k for k in ("kd_weight", "ccc_weight", "fa_weight", "ca_weight") if getattr(p, k) > 0]
            if used:
                raise UserError(f"method pckd needs a teacher for pckd.{used[0]}: set teacher.arch "
                                "(and teacher.checkpoint)")
        d_s = int(student.penultimate_dim)
        d_t = int(teacher.penultimate_dim) if teacher is not None else d_s
        self.weighting = PreviewWeighting(p.preview.mode, p.gamma, p.preview.detach, p.preview.focal_power)
        self.fa_head = _feature_mlp(d_s, p.mlp_hidden_mult * d_t, d_t) if p.fa_weight > 0 else None
        if p.ccc_weight > 0:
            self.embed_s: nn.Linear | None = nn.Linear(d_s, d_s)
            self.embed_t: nn.Linear | None = nn.Linear(d_s, d_t)
        else:
            self.embed_s = self.embed_t = None

        # Eq. 3 needs [W|b] of equal shapes; decide once and say so once.
        self.use_ca = False
        if p.ca_weight > 0:
            shape_s, shape_t = self._stacked_shape(student), self._stacked_shape(teacher)
            self.use_ca = shape_s == shape_t
            if not self.use_ca:
                warnings.warn(
                    f"pckd: centre alignment (pckd.ca_weight={p.ca_weight:g}) skipped: the student's classifier "
                    f"[W|b] is {shape_s} but the teacher's is {shape_t}; it needs equal shapes",
                    stacklevel=2,
                )

        # per-sample records of the current epoch (device tensors, concatenated at epoch end)
        self._records: dict[str, list[Tensor]] = {k: [] for k in ("index", "label", "difficulty", "weight")}
        self.history: dict[str, Any] = {"probe_indices": [], "probe_groups": [], "epochs": []}

    @classmethod
    def uses_teacher(cls, params: PCKDParams) -> bool:
        """Only the CE-only ablations (every distillation weight 0, Tables VI/VII) run without a teacher."""
        return any(getattr(params, k) > 0 for k in ("kd_weight", "ccc_weight", "fa_weight", "ca_weight"))

    @staticmethod
    def _stacked_shape(model: nn.Module) -> tuple[int, int]:
        w, b = centres(model)  # type: ignore[arg-type]
        return (int(w.shape[0]), int(w.shape[1]) + (0 if b is None else 1))

    # ---- training step ---------------------------------------------------------------------------------
    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        """One step: 4 rotated views, one student and one teacher forward, the weighted terms of Eq. 8.

        Returns the student logits of the unrotated copies, the weighted terms ce/kd/ccc/fa/ca (a term whose
        weight is 0, or CA with mismatched classifier shapes, is absent) and the preview stats.
        """
        p = self.params
        n_rot = p.n_rotations
        labels = batch.labels
        views = batch.augment.rotated_views(batch.images, n_rot)  # [nB], flat index n*i + j
        need_teacher_forward = p.kd_weight > 0 or p.fa_weight > 0
        # Teacher first: its forward then runs before the student's activations are held for the backward,
        # which measured ~25% less CPU time per step than the other order (benchmarks/README.md).
        out_t = self.teacher_features(views) if need_teacher_forward else None
        out_s = self.student.forward_features(views)

        logits = out_s.logits[::n_rot]  # unrotated copies (j = 0)
        ce_i = F.cross_entropy(_acc(logits), labels, reduction="none")  # float64 stays float64

        # Preview weights; the batch-mean CE is global under DDP (Eq. 5 over the global batch).
        grad_weights = self.weighting.mode in ("preview", "curriculum") and not self.weighting.detach
        ce_src = ce_i if grad_weights else ce_i.detach()
        mean_ce = global_mean(ce_src)
        probs_true = None
        if self.weighting.mode == "focal":
            probs_true = F.softmax(_acc(logits.detach()), dim=1).gather(1, labels[:, None]).squeeze(1)
        w = self.weighting.weights(ce_src, probs_true, epoch, mean_ce)
        w_const = w.detach()  # the CCC weight never carries gradient (released code)
        s = difficulty(ce_i.detach(), mean_ce.detach())
        t = self.weighting.threshold(epoch)

        losses: dict[str, Tensor] = {}
        if p.ce_weight > 0:
            ce = self.weighting.reduce(ce_i, w) if p.preview.on_ce else ce_i.mean()
            losses["ce"] = p.ce_weight * ce
        if p.kd_weight > 0:
            assert out_t is not None
            kd_i = kd_per_sample(logits, out_t.logits[::n_rot], p.temperature)
            losses["kd"] = p.kd_weight * self.weighting.reduce(kd_i, w)
        if p.ccc_weight > 0:
            losses["ccc"] = p.ccc_weight * self.weighting.reduce(self._ccc(out_s.pooled, labels), w_const, n_rot)
        if p.fa_weight > 0:
            assert out_t is not None and self.fa_head is not None
            losses["fa"] = p.fa_weight * feature_alignment(self.fa_head(out_s.pooled), out_t.pooled)
        if self.use_ca:
            w_s, b_s = centres(self.student)  # type: ignore[arg-type]
            w_t, b_t = centres(self.teacher, detach=True)  # type: ignore[arg-type]
            ca = center_alignment(w_s, b_s, w_t, b_t)
            assert ca is not None
            losses["ca"] = p.ca_weight * ca

        hard = (s > t).float()
        stats = {
            "threshold": torch.full((), t, device=s.device),
            "hard_fraction": hard.mean(),
            "weight_mean": w_const.mean(),
            "weight_min": w_const.min(),
        }
        if self.training:
            self._record(batch.index, labels, s, w_const)
        return StepOutput(logits=logits, losses=losses, stats=stats)

    def _ccc(self, f_s: Tensor, labels: Tensor) -> Tensor:
        """Per-copy category-centre contrast [nB] of the student features of all copies."""
        p = self.params
        assert self.embed_s is not None and self.embed_t is not None
        labels_all = labels.repeat_interleave(p.n_rotations)
        w_s, _ = centres(self.student)  # type: ignore[arg-type]
        w_t, _ = centres(self.teacher, detach=True)  # type: ignore[arg-type]
        e_s, e_t = self.embed_s(f_s), self.embed_t(f_s)  # both embed the *student* feature (released code)
        if p.ccc == "centers":
            return category_center_contrast_centers(e_s, e_t, w_s, w_t, labels_all, p.centers_tau)
        u_s, u_t = category_profiles(e_s, w_s), category_profiles(e_t, w_t)
        if p.ccc_global and is_distributed():
            # One differentiable gather of [u_s | u_t | label]: this rank's anchors against the global batch;
            # each rank's gradient flows back to the rank owning the copy (labels are exact in float32).
            k = u_s.shape[1]
            packed, rows = all_gather_rows(torch.cat([u_s, u_t, labels_all[:, None].to(u_s.dtype)], dim=1))
            u_s, u_t, labels_all = packed[:, :k], packed[:, k:2 * k], packed[:, 2 * k].long()
            return category_center_contrast(u_s, u_t, labels_all, p.ccc_tau, p.ccc_base_tau, rows=rows)
        return category_center_contrast(u_s, u_t, labels_all, p.ccc_tau, p.ccc_base_tau)

    # ---- per-sample records ----------------------------------------------------------------------------
    def _record(self, index: Tensor, labels: Tensor, s: Tensor, w: Tensor) -> None:
        """Keep this step's (index, label, difficulty, weight) on the device; no host sync."""
        rec = self._records
        rec["index"].append(index.detach().to(device=s.device, dtype=torch.long, non_blocking=True))
        rec["label"].append(labels.detach().long())
        rec["difficulty"].append(s.detach().float())
        rec["weight"].append(w.detach().float())

    def on_epoch_start(self, epoch: int) -> None:
        for values in self._records.values():
            values.clear()

    def epoch_records(self) -> dict[str, Tensor] | None:
        """This epoch's records gathered over ranks, on the CPU, sorted by index with duplicates dropped."""
        if not self._records["index"]:
            return None
        cols = {k: _gather_rows(torch.cat(v)) for k, v in self._records.items()}
        cols = {k: v.cpu() for k, v in cols.items()}
        # DistributedSampler pads with repeated samples: keep one row per dataset index (the last seen)
        order = torch.argsort(cols["index"], stable=True)
        cols = {k: v[order] for k, v in cols.items()}
        idx = cols["index"]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[:-1] = idx[1:] != idx[:-1]
        return {k: v[keep] for k, v in cols.items()}

    def on_epoch_end(self, epoch: int, writer: EpochWriter) -> None:
        """Histograms, ``preview_records.csv`` (this epoch), ``preview_history.json`` and ``preview_weights.png``.

        Collective under DDP (records are gathered from every rank): call it on every rank; only rank 0 writes.
        """
        records = self.epoch_records()
        for values in self._records.values():
            values.clear()
        if records is None:
            return
        t = self.weighting.threshold(epoch)
        self._update_history(epoch, t, records)
        if not is_main_process():
            return
        writer.histogram("pckd/difficulty", records["difficulty"], epoch)
        writer.histogram("pckd/weight", records["weight"], epoch)
        last = self.history["epochs"][-1]
        # exact epoch values; the step stats' epoch means average per-batch values (a mean of batch minima)
        for key in ("weight_easy", "weight_hard", "hard_fraction", "weight_mean", "weight_min"):
            if last[key] is not None:
                writer.scalar(f"pckd/{key}", last[key], epoch)
        run_dir = Path(writer.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._write_records_csv(run_dir / "preview_records.csv", records)
        _atomic_write_text(run_dir / "preview_history.json", json.dumps(self.history, indent=1) + "\n")
        self._plot_history(run_dir / "preview_weights.png")

    def _update_history(self, epoch: int, t: float, rec: dict[str, Tensor]) -> None:
        s, w, idx = rec["difficulty"].double(), rec["weight"].double(), rec["index"]
        hard = s > t

        def mean_or_none(x: Tensor) -> float | None:
            return float(x.mean()) if x.numel() else None

        h = self.history
        if not h["probe_indices"]:  # pick the probes once, at the first recorded epoch
            order = torch.argsort(s, stable=True)
            k = min(PROBES_PER_GROUP, idx.numel() // 2)
            easy, hardest = order[:k], order[order.numel() - k:].flip(0)
            h["probe_indices"] = [int(i) for i in idx[easy]] + [int(i) for i in idx[hardest]]
            h["probe_groups"] = ["easy"] * k + ["hard"] * k
            h["probe_epoch"] = int(epoch)
        position = {int(i): n for n, i in enumerate(idx.tolist())}
        probe_w = [float(w[position[i]]) if i in position else None for i in h["probe_indices"]]
        probe_s = [float(s[position[i]]) if i in position else None for i in h["probe_indices"]]
        entry = {
            "epoch": int(epoch),
            "threshold": float(t),
            "samples": int(idx.numel()),
            "hard_fraction": float(hard.double().mean()),
            "weight_mean": float(w.mean()),
            "weight_min": float(w.min()),
            "weight_easy": mean_or_none(w[~hard]),
            "weight_hard": mean_or_none(w[hard]),
            "probe_weights": probe_w,
            "probe_difficulty": probe_s,
        }
        h["epochs"] = [e for e in h["epochs"] if e["epoch"] != epoch] + [entry]  # a re-run epoch replaces

    @staticmethod
    def _write_records_csv(path: Path, rec: dict[str, Tensor]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["index", "label", "difficulty", "weight"])
            rows = zip(rec["index"].tolist(), rec["label"].tolist(), rec["difficulty"].tolist(),
                       rec["weight"].tolist())
            out.writerows((i, y, f"{d:.6g}", f"{w:.6g}") for i, y, d, w in rows)
        os.replace(tmp, path)

    def _plot_history(self, path: Path) -> None:
        """Fig. 6-style plot: probe-sample weights and the mean weight of easy / hard samples per epoch."""
        from matplotlib.backends.backend_agg import (
            FigureCanvasAgg,  # Agg, without touching pyplot's state
        )
        from matplotlib.figure import Figure

        h = self.history
        epochs = [e["epoch"] for e in h["epochs"]]
        fig = Figure(figsize=(11, 4.2))
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        first = h.get("probe_epoch", epochs[0] if epochs else 1)
        for n, (group, index) in enumerate(zip(h["probe_groups"], h["probe_indices"])):
            ys = [e["probe_weights"][n] if n < len(e["probe_weights"]) else None for e in h["epochs"]]
            ys = [math.nan if y is None else y for y in ys]
            color = "tab:red" if group == "hard" else "tab:blue"
            label = f"{group} at epoch {first}" if n in (0, len(h["probe_groups"]) // 2) else None
            ax1.plot(epochs, ys, color=color, alpha=0.6, lw=1, marker="." if len(epochs) < 30 else None,
                     label=label)
        ax1.set(title="preview weight of 16 probe samples", xlabel="epoch", ylabel="weight", ylim=(-0.03, 1.05))
        ax1.legend(loc="lower left", fontsize=8)

        def series(key: str) -> list[float]:
            return [math.nan if e[key] is None else e[key] for e in h["epochs"]]

        mark = "o" if len(epochs) < 30 else None
        ax2.plot(epochs, series("weight_easy"), color="tab:blue", marker=mark, label="mean weight, easy (s <= t)")
        ax2.plot(epochs, series("weight_hard"), color="tab:red", marker=mark, label="mean weight, hard (s > t)")
        ax2.plot(epochs, series("hard_fraction"), color="tab:gray", ls="--", marker=mark, label="hard fraction")
        ax2.set(title="easy vs hard samples", xlabel="epoch", ylim=(-0.03, 1.05))
        twin = ax2.twinx()
        twin.plot(epochs, series("threshold"), color="tab:green", ls=":", label="threshold t")
        twin.set_ylabel("threshold t = gamma^epoch")
        lines = ax2.get_lines() + twin.get_lines()
        ax2.legend(lines, [ln.get_label() for ln in lines], loc="center right", fontsize=8)
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)

    # ---- checkpointed state ----------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        """The preview history (plain lists/dicts/floats, loadable with ``weights_only``) and, when saved
        mid-epoch, this rank's per-sample records of the epoch so far (CPU tensors), so a resumed epoch
        reports the same records as an uninterrupted one (in one process; under DDP only rank 0's part)."""
        state: dict[str, Any] = {"preview_history": json.loads(json.dumps(self.history))}
        if self._records["index"]:
            state["epoch_records"] = {k: torch.cat(v).detach().cpu() for k, v in self._records.items()}
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        history = state.get("preview_history")
        if history is not None:
            self.history = json.loads(json.dumps(history))
        records = state.get("epoch_records")
        if records:
            device = next(self.student.parameters()).device
            self._records = {k: [records[k].to(device)] for k in self._records}


__all__ = [
    "PCKD", "PCKDParams", "PreviewParams", "PreviewWeighting", "category_center_contrast",
    "category_center_contrast_centers", "category_profiles", "center_alignment", "curriculum_weights",
    "difficulty", "feature_alignment", "focal_weights", "kd_per_sample", "preview_threshold", "preview_weights",
    "uniform_weights", "weighted_mean",
]
