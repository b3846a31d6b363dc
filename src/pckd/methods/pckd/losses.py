"""PCKD's loss terms as pure functions (Eqs. 2-4 of Ding et al., TCSVT 2025; docs/methods/pckd.md).

Each works in float32, or float64 when given float64, with autocast disabled around its matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.methods.kd import kd_per_sample
from pckd.methods.precision import as_float, no_autocast

# The released SupCon code adds this to the (max-shifted) denominator before the log.
SUPCON_EPS = 1e-7


def category_profiles(embedding: Tensor, class_centres: Tensor) -> Tensor:
    """Category-similarity profile ``normalize(embedding) @ centres^T``, [N, K] (Eq. 4, released code).

    The centres (classifier weights [K, d]) are not normalised and no bias is added, as in the released code.
    """
    with no_autocast(embedding):
        e = F.normalize(as_float(embedding), dim=1)
        return e @ class_centres.to(e.dtype).t()


def category_center_contrast(
    profiles_s: Tensor, profiles_t: Tensor, labels: Tensor, tau: float, base_tau: float,
    rows: slice | None = None,
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
    with no_autocast(profiles_s):
        ps = as_float(profiles_s)
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
    with no_autocast(emb_s):
        dtype = as_float(emb_s).dtype

        def cosine_ce(emb: Tensor, cen: Tensor) -> Tensor:
            logits = F.normalize(emb.to(dtype), dim=1) @ F.normalize(cen.to(dtype), dim=1).t() / tau
            return F.cross_entropy(logits, labels, reduction="none")

        return cosine_ce(emb_s, centres_s) + cosine_ce(emb_t, centres_t)


def feature_alignment(projected_student: Tensor, teacher_feature: Tensor) -> Tensor:
    """Eq. 2: 2 - 2 * mean_n cos(g(f_s)_n, f_t_n), a scalar; equals the mean squared distance of unit vectors.

    The teacher feature is detached.
    """
    with no_autocast(projected_student):
        s = F.normalize(as_float(projected_student), dim=1)
        t = F.normalize(as_float(teacher_feature.detach()).to(s.dtype), dim=1)
        return 2.0 - 2.0 * (s * t).sum(dim=1).mean()


def center_alignment(
    w_s: Tensor, b_s: Tensor | None, w_t: Tensor, b_t: Tensor | None
) -> Tensor | None:
    """Eq. 3 as released: mean squared error between [W_s | b_s] and [W_t | b_t], a scalar.

    The bias is appended as an extra column (a missing bias is simply left out). Returns None when the two
    matrices differ in shape (e.g. a 64-d student under a 128-d teacher): the term is then skipped, as in the
    released code. The teacher side is detached.
    """

    def stacked(w: Tensor, b: Tensor | None) -> Tensor:
        return w if b is None else torch.cat([w, b.unsqueeze(1)], dim=1)

    m_s = stacked(w_s, b_s)
    m_t = stacked(w_t.detach(), None if b_t is None else b_t.detach())
    if m_s.shape != m_t.shape:
        return None
    m_s = as_float(m_s)
    return F.mse_loss(m_s, m_t.to(m_s.dtype))




__all__ = [
    "SUPCON_EPS", "category_center_contrast", "category_center_contrast_centers", "category_profiles",
    "center_alignment", "feature_alignment", "kd_per_sample",
]
