"""PCKD's pure loss functions against naive references written with explicit loops (no shared code)."""

from __future__ import annotations

import math

import pytest
import torch

import pckd.methods.pckd as P

DTYPES = [torch.float32, torch.float64]


def _tol(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}


def _close(actual: torch.Tensor, expected, dtype: torch.dtype) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, **_tol(dtype))


# ---- naive references -------------------------------------------------------------------------------------
def naive_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def naive_kd(s: torch.Tensor, t: torch.Tensor, T: float) -> list[float]:
    out = []
    for i in range(s.shape[0]):
        ls = naive_log_softmax([float(v) / T for v in s[i]])
        lt = naive_log_softmax([float(v) / T for v in t[i]])
        out.append(T * T * sum(math.exp(b) * (b - a) for a, b in zip(ls, lt)))
    return out


def naive_supcon(ps: torch.Tensor, pt: torch.Tensor, labels: torch.Tensor, tau: float, base: float) -> list[float]:
    anchors = [[float(v) for v in row] for row in ps] + [[float(v) for v in row] for row in pt]
    lab = [int(v) for v in labels] * 2
    m = len(anchors)
    per_anchor = []
    for r in range(m):
        sims = [sum(a * b for a, b in zip(anchors[r], anchors[q])) / tau for q in range(m)]
        mx = max(sims)
        denom = sum(math.exp(sims[q] - mx) for q in range(m) if q != r) + 1e-7
        terms = [sims[q] - mx - math.log(denom) for q in range(m) if q != r and lab[q] == lab[r]]
        per_anchor.append(-(tau / base) * sum(terms) / len(terms) if terms else 0.0)
    n = len(labels)
    return [per_anchor[i] + per_anchor[i + n] for i in range(n)]


def naive_cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def naive_centers(es, et, cs, ct, labels, tau) -> list[float]:
    out = []
    for n in range(es.shape[0]):
        y = int(labels[n])
        total = 0.0
        for emb, cen in ((es, cs), (et, ct)):
            logits = [naive_cos(emb[n].tolist(), cen[k].tolist()) / tau for k in range(cen.shape[0])]
            total -= naive_log_softmax(logits)[y]
        out.append(total)
    return out


# ---- KD -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_kd_per_sample_matches_naive(dtype):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g, dtype=dtype) * 3, torch.randn(6, 5, generator=g, dtype=dtype) * 3
    out = P.kd_per_sample(s, t, 4.0)
    assert out.shape == (6,) and out.dtype == dtype
    _close(out, naive_kd(s, t, 4.0), dtype)


def test_kd_per_sample_is_the_project_kd_in_float32():
    from pckd.methods.kd import kd_per_sample as kd_ref

    s, t = torch.randn(4, 7), torch.randn(4, 7)
    torch.testing.assert_close(P.kd_per_sample(s, t, 2.0), kd_ref(s, t, 2.0), rtol=0, atol=0)


# ---- preview -----------------------------------------------------------------------------------------------
def test_preview_weights_hand_computed():
    ce = torch.tensor([1.0, 2.0, 3.0])
    _close(P.difficulty(ce), [0.5, 1.0, 1.5], torch.float32)
    # epoch 1, gamma 1.005: t = 1.005, so s = 1.0 is easy and only s = 1.5 is hard
    _close(P.preview_weights(ce, 1, 1.005), [1.0, 1.0, math.exp(-2.25)], torch.float32)
    # t = 1.005**100 = 1.647 > 1.5: everyone easy
    _close(P.preview_weights(ce, 100, 1.005), [1.0, 1.0, 1.0], torch.float32)
    _close(P.curriculum_weights(ce, 1, 1.005), [1.0, 1.0, 0.0], torch.float32)
    # focal: (1 - p_y)^2
    _close(P.focal_weights(torch.tensor([0.9, 0.5, 0.0])), [0.01, 0.25, 1.0], torch.float32)
    _close(P.uniform_weights(ce), [1.0, 1.0, 1.0], torch.float32)


def test_difficulty_uses_the_given_global_mean_and_never_divides_by_zero():
    ce = torch.tensor([1.0, 3.0])
    _close(P.difficulty(ce, torch.tensor(4.0)), [0.25, 0.75], torch.float32)
    zero = torch.zeros(3)
    assert torch.equal(P.preview_weights(zero, 1, 1.005), torch.ones(3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("epoch", [1, 60, 240])
def test_preview_weights_match_naive(dtype, epoch):
    g = torch.Generator().manual_seed(epoch)
    ce = torch.rand(32, generator=g, dtype=dtype) * 5
    mean = sum(float(v) for v in ce) / len(ce)
    t = 1.01**epoch
    expected, expected_cur = [], []
    for v in ce:
        s = float(v) / mean
        expected.append(1.0 if s <= t else math.exp(-s * s))
        expected_cur.append(1.0 if s <= t else 0.0)
    out = P.preview_weights(ce, epoch, 1.01)
    assert out.dtype == dtype
    _close(out, expected, dtype)
    _close(P.curriculum_weights(ce, epoch, 1.01), expected_cur, dtype)
    p = torch.rand(32, generator=g, dtype=dtype)
    _close(P.focal_weights(p), [(1 - float(v)) ** 2 for v in p], dtype)


def test_preview_weights_keep_gradient_until_the_weighting_detaches():
    ce = torch.tensor([0.1, 0.2, 3.0], requires_grad=True)
    w = P.preview_weights(ce, 1, 1.005)
    assert w.requires_grad
    w.sum().backward()
    assert ce.grad is not None and ce.grad.abs().sum() > 0
    weighting = P.PreviewWeighting("preview", 1.005, detach=True)
    assert not weighting.weights(ce, None, 1).requires_grad
    assert P.PreviewWeighting("preview", 1.005, detach=False).weights(ce, None, 1).requires_grad
    assert not P.PreviewWeighting("focal").weights(ce, torch.rand(3, requires_grad=True), 1).requires_grad


def test_weighting_modes():
    ce = torch.tensor([1.0, 2.0, 3.0])
    probs = torch.tensor([0.5, 0.5, 0.1])
    assert torch.equal(P.PreviewWeighting("off").weights(ce, None, 1), torch.ones(3))
    _close(P.PreviewWeighting("curriculum").weights(ce, None, 1), [1, 1, 0], torch.float32)
    _close(P.PreviewWeighting("focal").weights(ce, probs, 1), [0.25, 0.25, 0.81], torch.float32)
    with pytest.raises(ValueError):
        P.PreviewWeighting("hardest")


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_broadcasts_weights_to_copies_and_divides_by_count(dtype):
    g = torch.Generator().manual_seed(3)
    b = 5
    w = torch.rand(b, generator=g, dtype=dtype)
    x = torch.randn(4 * b, generator=g, dtype=dtype)
    expected = 0.0
    for i in range(b):
        for j in range(4):
            expected += float(w[i]) * float(x[4 * i + j])
    expected /= 4 * b
    out = P.PreviewWeighting.reduce(x, w, copies=4)
    assert out.dim() == 0 and out.dtype == dtype
    _close(out, expected, dtype)
    x1 = x[:b]
    _close(P.PreviewWeighting.reduce(x1, w), sum(float(w[i]) * float(x1[i]) for i in range(b)) / b, dtype)
    with pytest.raises(ValueError):
        P.PreviewWeighting.reduce(x, w, copies=2)


# ---- category-centre contrast ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_supcon_ccc_matches_naive_double_loop(dtype):
    g = torch.Generator().manual_seed(1)
    b, n_rot, k = 3, 4, 5
    labels = torch.tensor([0, 2, 0]).repeat_interleave(n_rot)
    ps = torch.randn(b * n_rot, k, generator=g, dtype=dtype) * 2
    pt = torch.randn(b * n_rot, k, generator=g, dtype=dtype) * 2
    out = P.category_center_contrast(ps, pt, labels, 4.0, 0.07)
    assert out.shape == (b * n_rot,) and out.dtype == dtype
    _close(out, naive_supcon(ps, pt, labels, 4.0, 0.07), dtype)
    # a sharper temperature exercises the max shift and the epsilon
    _close(P.category_center_contrast(ps, pt, labels, 0.1, 0.07), naive_supcon(ps, pt, labels, 0.1, 0.07), dtype)


def test_supcon_ccc_single_positive_and_identical_profiles_stay_finite():
    # every anchor always has its other-half copy as a positive; with N = 1 that is the only one
    ps, pt = torch.randn(1, 4), torch.randn(1, 4)
    _close(P.category_center_contrast(ps, pt, torch.tensor([3]), 4.0, 0.07),
           naive_supcon(ps, pt, torch.tensor([3]), 4.0, 0.07), torch.float32)
    # huge, identical profiles: the max shift keeps exp() finite, gradients too
    profiles = (torch.ones(3, 4) * 100).requires_grad_()
    res = P.category_center_contrast(profiles, profiles * 1, torch.tensor([0, 1, 2]), 0.07, 0.07)
    res.sum().backward()
    assert torch.isfinite(res).all() and torch.isfinite(profiles.grad).all()


def test_supcon_ccc_profiles_are_normalised_embedding_times_centres():
    emb = torch.randn(6, 3, dtype=torch.float64)
    cen = torch.randn(4, 3, dtype=torch.float64)
    out = P.category_profiles(emb, cen)
    for n in range(6):
        norm = math.sqrt(sum(float(v) ** 2 for v in emb[n]))
        for k in range(4):
            ref = sum(float(emb[n, d]) / norm * float(cen[k, d]) for d in range(3))
            assert abs(float(out[n, k]) - ref) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES)
def test_centers_ccc_matches_naive(dtype):
    g = torch.Generator().manual_seed(2)
    n, k, d_s, d_t = 7, 5, 3, 6
    es, et = torch.randn(n, d_s, generator=g, dtype=dtype), torch.randn(n, d_t, generator=g, dtype=dtype)
    cs, ct = torch.randn(k, d_s, generator=g, dtype=dtype), torch.randn(k, d_t, generator=g, dtype=dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    out = P.category_center_contrast_centers(es, et, cs, ct, labels, 0.1)
    assert out.shape == (n,) and out.dtype == dtype
    _close(out, naive_centers(es, et, cs, ct, labels, 0.1), dtype)


# ---- alignments --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_feature_alignment_matches_naive(dtype):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(8, 5, generator=g, dtype=dtype), torch.randn(8, 5, generator=g, dtype=dtype)
    cos = [naive_cos(s[i].tolist(), t[i].tolist()) for i in range(8)]
    out = P.feature_alignment(s, t)
    assert out.dim() == 0 and out.dtype == dtype
    _close(out, 2 - 2 * sum(cos) / 8, dtype)
    # equals the mean squared distance of the unit vectors
    sq = []
    for i in range(8):
        a, b = s[i].tolist(), t[i].tolist()
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        sq.append(sum((x / na - y / nb) ** 2 for x, y in zip(a, b)))
    _close(out, sum(sq) / 8, dtype)


def test_feature_alignment_detaches_teacher():
    s, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    P.feature_alignment(s, t).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_center_alignment_matches_naive(dtype):
    g = torch.Generator().manual_seed(5)
    k, d = 4, 3
    ws, wt = torch.randn(k, d, generator=g, dtype=dtype), torch.randn(k, d, generator=g, dtype=dtype)
    bs, bt = torch.randn(k, generator=g, dtype=dtype), torch.randn(k, generator=g, dtype=dtype)
    total = 0.0
    for i in range(k):
        for j in range(d):
            total += (float(ws[i, j]) - float(wt[i, j])) ** 2
        total += (float(bs[i]) - float(bt[i])) ** 2
    out = P.center_alignment(ws, bs, wt, bt)
    assert out is not None and out.dtype == dtype
    _close(out, total / (k * (d + 1)), dtype)


def test_center_alignment_none_when_shapes_differ_and_teacher_detached():
    # wrn_40_2 (d = 128) -> wrn_40_1 (d = 64)
    ws, bs = torch.randn(100, 64), torch.randn(100)
    wt, bt = torch.randn(100, 128), torch.randn(100)
    assert P.center_alignment(ws, bs, wt, bt) is None
    assert P.center_alignment(ws, bs, torch.randn(100, 64), None) is None  # bias on one side only
    ws = ws.requires_grad_()
    wt64 = torch.randn(100, 64, requires_grad=True)
    bt64 = torch.randn(100, requires_grad=True)
    out = P.center_alignment(ws, bs, wt64, bt64)
    assert out is not None
    out.backward()
    assert ws.grad is not None and wt64.grad is None and bt64.grad is None


# ---- params ------------------------------------------------------------------------------------------------
def test_params_defaults_and_validation():
    from pckd.errors import UserError

    p = P.PCKDParams()
    assert (p.temperature, p.ce_weight, p.kd_weight, p.ccc_weight, p.fa_weight, p.ca_weight) == (4, 1, 1, 0.05, 20, 1)
    assert (p.ccc, p.ccc_tau, p.ccc_base_tau, p.mlp_hidden_mult, p.n_rotations, p.gamma) == (
        "supcon", 4, 0.07, 16, 4, 1.005)
    assert (p.preview.mode, p.preview.detach, p.preview.on_ce) == ("preview", True, False)
    with pytest.raises(UserError, match=r"'pckd\.preview\.mode'='hardest' is not one of off, preview, curriculum, focal \(none = off\)"):
        P.PCKDParams(preview=P.PreviewParams(mode="hardest"))
    with pytest.raises(UserError, match=r"'pckd\.ccc'='paper'"):
        P.PCKDParams(ccc="paper")
    with pytest.raises(UserError, match=r"pckd\.fa_weight"):
        P.PCKDParams(fa_weight=-1)
    with pytest.raises(UserError, match=r"pckd\.gamma"):
        P.PCKDParams(gamma=0)
    assert P.PCKDParams(preview={"mode": "off"}).preview.mode == "off"


def test_params_are_an_omegaconf_structured_config():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.structured(P.PCKDParams)
    cfg = omegaconf.OmegaConf.merge(cfg, omegaconf.OmegaConf.from_dotlist(["preview.mode=curriculum", "gamma=1.015"]))
    obj = omegaconf.OmegaConf.to_object(cfg)
    assert isinstance(obj, P.PCKDParams) and obj.preview.mode == "curriculum" and obj.gamma == 1.015
