"""Contrastive Representation Distillation (`crd`; Tian, Krishnan, Isola, ICLR 2020, arXiv 1910.10699).

Equations, defaults with their sources and deviations: docs/methods/crd.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.distributed import all_gather_rows, global_mean
from pckd.errors import UserError
from pckd.methods.base import StepOutput, TeacherDistiller, register_method
from pckd.methods.kd import kd_loss
from pckd.methods.precision import no_autocast
from pckd.models.interface import feature_shapes
from pckd.params import Choice, Settings, hp


class CRDNegatives(Choice):
    """How negatives are drawn (``crd.negatives``): RepDistiller's CIFAR sampler, mdistiller's ImageNet sampler
    (other classes, with replacement), or uniformly."""

    other_class = "other_class"
    other_class_replace = "other_class_replace"
    uniform = "uniform"


NEGATIVE_MODES = tuple(m.value for m in CRDNegatives)
NCE_EPS = 1e-7  # RepDistiller's ``eps`` in ContrastLoss


# ---- pure functions -------------------------------------------------------------------------------------
def contrast_exp(anchor: Tensor, memory: Tensor, idx: Tensor, temperature: float) -> Tensor:
    """Unnormalised scores ``exp(<memory[idx[b, k]], anchor[b]> / T)``, shape [B, K+1].

    One matmul against the whole bank and one gather (see the module docstring); the bank is a constant, and
    the graph keeps its own copy of it, so the caller may update the bank in place before the backward pass.
    Computed in float32 (float64 inputs stay float64) with autocast disabled.
    """
    dtype = torch.promote_types(anchor.dtype, torch.float32)
    with no_autocast(anchor):
        bank = memory.detach().to(dtype, copy=True)  # N x d: cheap next to the [B, K+1, d] rows it replaces
        all_scores = anchor.to(dtype) @ bank.T  # [B, N]
        return torch.exp(all_scores.gather(1, idx) / temperature)


def normalisation_constant(exp_scores: Tensor, n_data: int) -> Tensor:
    """RepDistiller's ``Z = N * mean(exp scores)`` of one batch (0-dim, detached)."""
    return exp_scores.detach().mean() * n_data


def nce_loss(probs: Tensor, n_data: int, eps: float = NCE_EPS) -> Tensor:
    """RepDistiller's ``ContrastLoss``: NCE with column 0 the positive and columns 1..K noise samples.

    probs: [B, K+1] model probabilities ``exp(s / T) / Z``. With ``m = K`` and the uniform noise
    ``P_n = 1 / n_data``: ``-(1/B) sum_b [log(P_b0 / (P_b0 + m P_n + eps)) + sum_k log(m P_n / (P_bk + m P_n + eps))]``.
    """
    p = probs.to(torch.promote_types(probs.dtype, torch.float32))
    m = p.shape[1] - 1
    noise = m / float(n_data)
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (p[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


@torch.no_grad()
def momentum_update_(memory: Tensor, index: Tensor, embeddings: Tensor, momentum: float) -> None:
    """In place: ``memory[i] <- normalize(momentum * memory[i] + (1 - momentum) * v_i)`` for each row ``i``.

    ``index`` must not repeat (each dataset sample appears once per global batch).
    """
    rows = memory.index_select(0, index).mul_(momentum).add_(embeddings.detach().to(memory.dtype), alpha=1 - momentum)
    rows = rows / rows.pow(2).sum(dim=1, keepdim=True).sqrt()  # RepDistiller divides by the plain L2 norm
    memory.index_copy_(0, index, rows)


@torch.no_grad()
def draw_contrast_index(index: Tensor, labels: Tensor, bank_labels: Tensor | None, n_data: int, k: int,
                        mode: str = "other_class") -> Tensor:
    """Contrast set per sample, [B, K+1] int64: column 0 the sample's own index, then ``k`` negatives.

    other_class: distinct samples whose ``bank_labels`` differ from the anchor's label (a negative entry such as
        -1 = unknown always differs) and that are not the anchor, uniformly without replacement; when a row has
        fewer than ``k`` eligible samples, every eligible one is taken once and the remaining slots are drawn
        uniformly with replacement among them (a row with no eligible sample at all, i.e. a one-class
        dataset, gets blocked samples).
    other_class_replace: samples whose ``bank_labels`` differ from the anchor's, uniformly WITH replacement
        (mdistiller's ``ImageNetInstanceSample``: ``np.random.choice(cls_negative[target], k, replace=True)``),
        drawn directly from the complement of the anchor's class in the label-sorted bank: no [B, n_data] tensor
        (``other_class`` needs one) and no host sync, so it suits ImageNet-sized banks. The anchor is excluded
        through its class, so its own ``bank_labels`` entry must be its label (``CRD.forward_train`` writes it
        before drawing); a one-class bank gets blocked samples.
    uniform: uniformly with replacement from ``range(n_data)`` minus the anchor itself.
    Uses the global RNG of ``index``'s device.
    """
    b, device = index.shape[0], index.device
    if mode == "other_class_replace":
        assert bank_labels is not None, "other_class_replace negatives need the labels of the bank"
        order = torch.argsort(bank_labels)  # each class one contiguous run of `order`
        sorted_labels = bank_labels[order]
        wanted = labels.contiguous()  # a column of the gathered (index, label) rows; searchsorted copies otherwise
        start = torch.searchsorted(sorted_labels, wanted)  # [B] first position of the anchor's class
        n_class = torch.searchsorted(sorted_labels, wanted, right=True) - start
        eligible = (n_data - n_class)[:, None]  # [B, 1]
        # A uniform position among the eligible ones (float64: exact enough for any bank size), then step over
        # the anchor's run.
        u = (torch.rand(b, k, device=device, dtype=torch.float64) * eligible).long().clamp(max=n_data - 1)
        u = u + (u >= start[:, None]).long() * n_class[:, None]
        neg = order[u.clamp(max=n_data - 1)]
    elif mode == "uniform":
        neg = torch.randint(0, n_data - 1, (b, k), device=device)
        neg = neg + (neg >= index[:, None]).long()  # skip the anchor: uniform over the other n_data - 1
    elif mode == "other_class":
        assert bank_labels is not None, "other_class negatives need the labels of the bank"
        keys = torch.rand(b, n_data, device=device)
        blocked = bank_labels[None, :] == labels[:, None]
        blocked[torch.arange(b, device=device), index] = True
        keys.masked_fill_(blocked, 2.0)  # after every eligible key (keys of eligible samples lie in [0, 1))
        order = keys.topk(min(k, n_data), dim=1, largest=False, sorted=True).indices  # eligible first, random
        if order.shape[1] < k:  # k > n_data: pad so the fallback below can fill the extra slots
            order = torch.cat([order, order[:, :1].expand(b, k - order.shape[1])], dim=1)
        eligible = (~blocked).sum(dim=1, keepdim=True)  # [B, 1]
        # Fallback draws (used only where a row has fewer than k eligible samples): uniform among its eligible.
        pick = (torch.rand(b, k, device=device) * eligible).long().clamp(max=k - 1)
        slot = torch.arange(k, device=device)[None, :]
        neg = torch.where(slot < eligible, order, order.gather(1, pick))
    else:
        raise UserError(f"crd.negatives must be one of {', '.join(NEGATIVE_MODES)}, got {mode!r}")
    return torch.cat([index[:, None], neg], dim=1)


# ---- hyper-parameters -------------------------------------------------------------------------------------
@dataclass
class CRDParams(Settings):
    """Hyper-parameters of `crd` (config section ``crd.*``; RepDistiller's CIFAR-100 defaults)."""

    ce_weight: float = hp(1.0, ge=0, doc="-r: weight of the cross-entropy")
    kd_weight: float = hp(0.0, ge=0, doc="-a: weight of Hinton KD (0 in the paper's 'CRD' row, 1 in 'CRD+KD')")
    crd_weight: float = hp(0.8, ge=0, doc="-b: weight of the CRD loss")
    temperature: float = hp(4.0, gt=0, doc="--kd_T, used only when kd_weight > 0")
    feat_dim: int = hp(128, ge=1, doc="--feat_dim: embedding dimension of both heads and of the memory banks")
    nce_k: int = hp(16384, ge=1, doc="--nce_k: negatives per sample")
    nce_t: float = hp(0.07, gt=0, doc="--nce_t: temperature of the scores")
    nce_mom: float = hp(0.5, ge=0, lt=1, doc="--nce_m: momentum of the memory update")
    negatives: CRDNegatives = hp(CRDNegatives.other_class, doc="how negatives are drawn: other_class (RepDistiller CIFAR), "
                                 "other_class_replace (mdistiller ImageNet: with replacement, O(B*k)) or uniform")


# ---- the method -------------------------------------------------------------------------------------------
def _forget_z_cache(module: CRD, incompatible_keys: Any) -> None:
    """After load_state_dict the loaded ``z`` may differ: look at it again on the next step."""
    module._z_ready = False


class Embed(nn.Module):
    """Linear projection followed by L2 normalisation (RepDistiller's ``crd.criterion.Embed``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@register_method("crd", CRDParams, "contrastive representation distillation: CE + NCE against memory banks")
class CRD(TeacherDistiller):
    """CE (+ optional KD) + CRD's two-sided NCE loss with per-sample memory banks of both embeddings."""

    params: CRDParams
    # buffers (registered in __init__), declared so their type is Tensor
    memory_s: Tensor
    memory_t: Tensor
    z: Tensor
    bank_labels: Tensor

    def __init__(self, student: nn.Module, teacher: nn.Module, params: CRDParams, data: DataInfo) -> None:
        super().__init__(student, teacher, params, data)
        train_size, train_labels = data.train_size, data.train_labels
        if train_size < 2:
            raise UserError(f"crd needs at least 2 training images for negatives, got {train_size}")
        self.train_size = int(train_size)
        d = params.feat_dim
        self.embed_s = Embed(feature_shapes(student).pooled, d)
        self.embed_t = Embed(feature_shapes(teacher).pooled, d)
        stdv = 1.0 / math.sqrt(d / 3)
        self.register_buffer("memory_s", torch.rand(train_size, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(train_size, d).mul_(2 * stdv).add_(-stdv))
        # Z of the student-anchored and the teacher-anchored side; negative = not estimated yet.
        self.register_buffer("z", torch.full((2,), -1.0))
        # Label of every training sample (-1 = not known yet); only the other_class negatives use it.
        labels = torch.full((train_size,), -1, dtype=torch.long) if train_labels is None else train_labels.long()
        if labels.shape != (train_size,):
            raise UserError(f"crd: data.train_labels has shape {tuple(labels.shape)}, expected ({train_size},)")
        self.register_buffer("bank_labels", labels.clone())
        self._z_ready = False  # host-side cache of "z >= 0", so the check costs no sync once Z is set
        self.register_load_state_dict_post_hook(_forget_z_cache)

    # ---- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _global_batch(index: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, slice]:
        """Every rank's (index, label) rows in rank order and this rank's slice of them (identity in one process)."""
        rows, mine = all_gather_rows(torch.stack([index, labels], dim=1))
        return rows[:, 0], rows[:, 1], mine

    def _normalisers(self, exp_s: Tensor, exp_t: Tensor) -> tuple[Tensor, Tensor]:
        """Z_s, Z_t: estimated from the first batch (global mean under DDP), then the stored constants."""
        if not self._z_ready:
            if bool((self.z < 0).any()):  # one host read, only until Z is set
                n = self.train_size
                estimate = torch.stack([global_mean(exp_s.detach()) * n, global_mean(exp_t.detach()) * n])
                self.z.copy_(torch.where(self.z < 0, estimate.to(self.z), self.z))
            self._z_ready = True
        return self.z[0], self.z[1]

    # ---- training step ---------------------------------------------------------------------------------------
    def forward_train(self, batch: Batch, epoch: int) -> StepOutput:
        p = self.params
        s_out, t_out = self.features_of_standard_view(batch)  # teacher first
        logits = s_out.logits
        losses = {"ce": p.ce_weight * self.cross_entropy(logits, batch.labels)}
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(logits, t_out.logits, p.temperature)

        device = self.memory_s.device
        g_index, g_labels, mine = self._global_batch(batch.index.to(device), batch.labels.to(device))
        if p.negatives in ("other_class", "other_class_replace"):
            self.bank_labels[g_index] = g_labels  # before drawing, so same-class samples of this batch are excluded
        # Every rank draws for the whole global batch from the same RNG stream and keeps its rows: the draws
        # equal one process's, and the ranks' RNG states stay identical.
        idx = draw_contrast_index(g_index, g_labels, self.bank_labels, self.train_size, p.nce_k, p.negatives)[mine]
        with no_autocast(s_out.pooled):  # embeddings and scores in float32
            v_s = self.embed_s(s_out.pooled.float())
            v_t = self.embed_t(t_out.pooled.float())
        exp_s = contrast_exp(v_s, self.memory_t, idx, p.nce_t)  # student anchor vs teacher bank
        exp_t = contrast_exp(v_t, self.memory_s, idx, p.nce_t)  # teacher anchor vs student bank
        z_s, z_t = self._normalisers(exp_s, exp_t)
        crd = nce_loss(exp_s / z_s, self.train_size) + nce_loss(exp_t / z_t, self.train_size)
        losses["crd"] = p.crd_weight * crd

        # Bank update after the scores (they used the old rows), with every rank's rows.
        g_v, _ = all_gather_rows(torch.cat([v_s, v_t], dim=1).detach())
        momentum_update_(self.memory_s, g_index, g_v[:, : p.feat_dim], p.nce_mom)
        momentum_update_(self.memory_t, g_index, g_v[:, p.feat_dim :], p.nce_mom)
        stats = {"z_s": z_s.detach().clone(), "z_t": z_t.detach().clone()}
        return StepOutput(logits=logits, losses=losses, stats=stats)

    def method_state(self) -> dict[str, Any]:
        """Everything (banks, Z, labels) is in buffers, hence in state_dict."""
        return {}
