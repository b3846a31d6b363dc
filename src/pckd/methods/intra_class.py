"""Intra-class contrastive teacher training (`intra_class`; Yuan et al. 2025, arXiv 2509.22053).

The network being trained sits in ``student`` (no teacher is needed); once trained it serves as the teacher of
an ordinary KD run. Neither the paper's equations nor its code are public, so this file implements the
project's own formulation of the abstract, fixed in docs/defaults.md ("Intra-class contrastive teacher"):

* two crop+flip views per image, CE on both (averaged);
* h = L2-normalised penultimate feature; anchor = one view, positive = the other view of the same image,
  negatives = *other images of the same class*: those in the batch (both views) plus a per-class FIFO queue of
  detached features from recent batches (:class:`ClassQueue`);
* ``l = -log( e^{p/tau} / (e^{p/tau} + sum_n e^{s_n/tau}) )``, symmetrised over the two views;
* margin gate: an anchor counts only when its detached probability margin ``p_y - max_{k!=y} p_k >= delta``;
* ``L = ce_weight * CE + contrast_weight * mean over gated anchors`` (0 when none passes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.distributed import all_gather_cat
from pckd.errors import UserError
from pckd.methods.base import Distiller, StepOutput, register_method
from pckd.methods.precision import no_autocast
from pckd.models.interface import feature_dim
from pckd.params import Choice, Settings, hp


class MarginMode(Choice):
    """Whether the margin gate applies (``intra_class.margin``)."""

    gate = "gate"
    none = "none"


MARGIN_MODES = tuple(m.value for m in MarginMode)


# ---- pure functions -------------------------------------------------------------------------------------
def intra_class_contrast(
    h1: Tensor, h2: Tensor, labels: Tensor, queue_feats: Tensor, queue_labels: Tensor, tau: float
) -> Tensor:
    """Per-anchor intra-class InfoNCE losses, shape [2B]: anchors of view 1 (rows 0..B-1), then of view 2.

    Args:
        h1, h2: [B, d] features of the two views, expected L2-normalised (similarity = dot product = cosine).
        labels: [B] class of each image.
        queue_feats: [M, d] cached features (treated as constants); queue_labels: [M]. Entries whose label is
            negative (e.g. -1 for an empty queue slot) never match a class and are ignored.
        tau: temperature.

    For anchor a (image i, view v) with positive p = <h_a, h_{i, other view}> and negatives s_n = <h_a, h_n> for
    every n in {both views of images j != i with y_j = y_i} and {queue entries of class y_i}:
    ``l_a = -log( e^{p/tau} / (e^{p/tau} + sum_n e^{s_n/tau}) )``.
    An anchor without negatives gets ``-log 1 = 0``, exactly as the formula says (no special case).
    Computed in float32 (float64 inputs stay float64), with autocast disabled.
    """
    b = h1.shape[0]
    dtype = torch.promote_types(h1.dtype, torch.float32)
    with no_autocast(h1):
        z = torch.cat([h1, h2]).to(dtype)  # [2B, d]
        y = torch.cat([labels, labels])
        idx = torch.arange(2 * b, device=z.device)
        image = idx % b
        partner = (idx + b) % (2 * b)  # the other view of the same image

        sim = z @ z.T / tau
        positive = sim[idx, partner]
        same_class_other_image = (y[:, None] == y[None, :]) & (image[:, None] != image[None, :])
        batch_neg = sim.masked_fill(~same_class_other_image, float("-inf"))

        queue_sim = z @ queue_feats.to(dtype).T / tau  # [2B, M]
        queue_neg = queue_sim.masked_fill(y[:, None] != queue_labels[None, :], float("-inf"))

        # The positive is always present, so logsumexp is finite even when every negative is masked.
        everything = torch.cat([positive[:, None], batch_neg, queue_neg], dim=1)
        return torch.logsumexp(everything, dim=1) - positive


def margin_gate(logits: Tensor, labels: Tensor, delta: float) -> Tensor:
    """bool [B]: the (detached) softmax margin ``p_y - max_{k != y} p_k`` is at least ``delta``."""
    with torch.no_grad():
        p = torch.softmax(logits.detach().float(), dim=1)
        p_true = p.gather(1, labels[:, None]).squeeze(1)
        p_other = p.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        return (p_true - p_other) >= delta


# ---- per-class feature queue ----------------------------------------------------------------------------
class ClassQueue(nn.Module):
    """Per-class first-in-first-out queues of detached feature vectors.

    Buffers: ``feats`` [K, Q, d] (float32), ``fill`` [K] (valid entries per class, <= Q) and ``ptr`` [K] (the
    slot the next feature of that class goes to = the oldest entry once the queue is full). Row k of ``feats``
    holds class k, so labels are implied by the row.

    Updates are out-of-place (the buffers are rebound, never written in place): tensors handed out earlier,
    e.g. the queue snapshot inside this step's autograd graph, stay valid after :meth:`enqueue`.
    """

    feats: Tensor
    fill: Tensor
    ptr: Tensor

    def __init__(self, num_classes: int, size: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.size, self.dim = num_classes, size, dim
        self.register_buffer("feats", torch.zeros(num_classes, size, dim))
        self.register_buffer("fill", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, feats: Tensor, labels: Tensor) -> None:
        """Append ``feats`` [N, d] to the queues of ``labels`` [N], in order; the oldest entries are overwritten.

        Vectorised and free of host synchronisation: a stable sort groups the samples by class, each sample's
        rank within its class gives its slot ``(ptr + rank) % Q``. When a class has more than Q new samples,
        several map to one slot; every one of them writes the newest sample of that slot (the winner), so the
        scatter is deterministic whatever order the duplicates are written in.
        """
        feats = feats.detach().to(device=self.feats.device, dtype=self.feats.dtype)
        labels = labels.to(self.fill.device)
        n, q = labels.shape[0], self.size
        counts = torch.zeros_like(self.fill).scatter_add_(0, labels, torch.ones_like(labels))
        order = torch.argsort(labels, stable=True)
        cls = labels[order]
        pos = torch.arange(n, device=labels.device)
        rank_in_class = pos - (torch.cumsum(counts, 0) - counts)[cls]
        count = counts[cls]
        winner = pos + q * torch.div(count - 1 - rank_in_class, q, rounding_mode="floor")
        slot = (self.ptr[cls] + rank_in_class) % q
        self.feats = self.feats.index_put((cls, slot), feats[order[winner]])
        self.ptr = (self.ptr + counts) % q
        self.fill = torch.clamp(self.fill + counts, max=q)

    def slots(self) -> tuple[Tensor, Tensor]:
        """Every slot, flattened: feats [K*Q, d] and labels [K*Q] with -1 marking empty slots (no host sync)."""
        labels = torch.arange(self.num_classes, device=self.fill.device)[:, None].expand(-1, self.size)
        valid = torch.arange(self.size, device=self.fill.device)[None, :] < self.fill[:, None]
        return self.feats.reshape(-1, self.dim), torch.where(valid, labels, -1).reshape(-1)

    def negatives(self) -> tuple[Tensor, Tensor]:
        """The valid entries only: feats [M, d], labels [M] (class by class, in slot order; syncs the host)."""
        feats, labels = self.slots()
        keep = labels >= 0
        return feats[keep], labels[keep]

    def ordered(self, k: int) -> Tensor:
        """Class ``k``'s valid features from oldest to newest, [fill_k, d] (for inspection and tests)."""
        fill, ptr = int(self.fill[k]), int(self.ptr[k])
        start = ptr if fill == self.size else 0  # once full, the write pointer sits on the oldest entry
        index = (start + torch.arange(fill, device=self.feats.device)) % self.size
        return self.feats[k, index]

    def fill_fraction(self) -> Tensor:
        """Mean over classes of fill / Q (0-dim; 0 for a zero-size queue)."""
        return self.fill.float().mean() / max(self.size, 1)


# ---- hyper-parameters and the method --------------------------------------------------------------------
@dataclass
class IntraClassParams(Settings):
    """Hyper-parameters of `intra_class` (config section ``intra_class.*``). All are the project's assumptions
    (docs/defaults.md), since the paper's values are not public.

    ce_weight: weight of the (two-view mean) cross-entropy.
    contrast_weight: lambda, weight of the gated intra-class contrast (0.1).
    tau: temperature of the contrast (0.5).
    delta: probability-margin threshold of the gate (0.5).
    margin: ``gate`` (apply the margin gate) or ``none`` (every anchor counts).
    queue_size: cached features per class (32).
    """

    ce_weight: float = hp(1.0, ge=0)
    contrast_weight: float = hp(0.1, ge=0)
    tau: float = hp(0.5, gt=0)
    delta: float = hp(0.5, ge=-1, le=1)
    margin: MarginMode = hp(MarginMode.gate)
    queue_size: int = hp(32, ge=0)


@register_method(
    "intra_class",
    IntraClassParams,
    "teacher training: CE on two views + margin-gated intra-class contrast against same-class negatives",
)
class IntraClass(Distiller):
    """Trains ``student`` (the future teacher) with CE + gated intra-class contrast; needs no teacher."""

    needs_teacher = False
    second_view = "weak"  # ImageFolder workers make an independent second crop + flip of each image
    params: IntraClassParams

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, params: IntraClassParams, data: DataInfo
    ) -> None:
        super().__init__(student, teacher, params, data)
        queue = ClassQueue(data.num_classes, int(params.queue_size), feature_dim(student))
        # Kept out of the module tree (like the teacher): the queue is identical on every rank by construction
        # (it is fed gathered features), so DDP's per-step buffer broadcast would only waste bandwidth. It is
        # checkpointed through method_state() and moved by _apply().
        self.__dict__["_queue"] = queue

    @property
    def queue(self) -> ClassQueue:
        return self.__dict__["_queue"]

    def _apply(self, fn: Callable, recurse: bool = True) -> IntraClass:
        super()._apply(fn, recurse)
        self.queue._apply(fn, recurse)
        return self

    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        b = batch.size
        x = torch.cat([batch.augment.standard(batch.images), batch.augment.another_view(batch.images)])
        out = self.student_features(x)  # one forward over both views
        logits1, logits2 = out.logits.float().chunk(2)
        labels = batch.labels
        ce = 0.5 * (F.cross_entropy(logits1, labels) + F.cross_entropy(logits2, labels))

        h = F.normalize(out.pooled.float(), dim=1)
        h1, h2 = h[:b], h[b:]
        per_anchor = intra_class_contrast(h1, h2, labels, *self.queue.slots(), tau=p.tau)
        if p.margin == "gate":
            gate = torch.cat([margin_gate(logits1, labels, p.delta), margin_gate(logits2, labels, p.delta)])
        else:
            gate = torch.ones_like(per_anchor, dtype=torch.bool)
        gate_f = gate.to(per_anchor.dtype)
        # Masked mean with a clamped count: 0 (not NaN) when no anchor passes, and no host sync.
        intra = (per_anchor * gate_f).sum() / gate_f.sum().clamp(min=1.0)

        if self.training and p.queue_size > 0:
            # After the loss, so the current images never act as their own negatives; one view per image keeps
            # the cache free of near-duplicate pairs. Under DDP every rank enqueues the global batch.
            self.queue.enqueue(all_gather_cat(h1.detach()), all_gather_cat(labels))

        losses = {"ce": p.ce_weight * ce, "intra": p.contrast_weight * intra}
        stats = {"gate_pass_fraction": gate_f.mean().detach(), "queue_fill": self.queue.fill_fraction()}
        return StepOutput(logits=logits1, losses=losses, stats=stats)

    def method_state(self) -> dict[str, Any]:
        """The queue (feats, fill, ptr), cloned so later steps cannot alter the snapshot."""
        return {"queue": {k: v.detach().clone() for k, v in self.queue.state_dict().items()}}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore the queue exactly; a queue of another shape (queue_size, classes, feature dim) is an error."""
        saved = state.get("queue")
        if saved is None:
            return
        expected = tuple(self.queue.feats.shape)
        if tuple(saved["feats"].shape) != expected:
            raise UserError(
                f"intra_class.queue_size: the checkpoint's queue has shape {tuple(saved['feats'].shape)} "
                f"but this run's is {expected} (classes, queue_size, feature dim); resume with the same settings"
            )
        self.queue.load_state_dict(saved)
