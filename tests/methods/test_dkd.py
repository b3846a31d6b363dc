"""Decoupled KD (`dkd`): TCKD/NCKD against naive probability loops, the KD decomposition, warm-up, the Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.dkd import (
    DKD,
    DKDParams,
    dkd_loss,
    nckd_per_sample,
    tckd_per_sample,
    warmup_factor,
)
from pckd.models import create_model
from tests.methods.scaffold import (
    NormalisingAugmenter,
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)


# ---- naive reference: probabilities first, then the two KLs, one sample at a time -------------------------
def _softmax(row: list[float], T: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def naive_parts(s: list[float], t: list[float], label: int, T: float) -> tuple[float, float, float, float]:
    """(TCKD, NCKD, KD, teacher's target probability) of one sample, all KLs times T^2."""
    ps, pt = _softmax(s, T), _softmax(t, T)
    bs, bt = [ps[label], 1.0 - ps[label]], [pt[label], 1.0 - pt[label]]
    others = [k for k in range(len(s)) if k != label]
    qs = [ps[k] / sum(ps[j] for j in others) for k in others]  # renormalised over the non-target classes
    qt = [pt[k] / sum(pt[j] for j in others) for k in others]
    return T * T * _kl(bt, bs), T * T * _kl(qt, qs), T * T * _kl(pt, ps), pt[label]


def _data(dtype: torch.dtype, b: int = 6, k: int = 7, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, k, generator=g, dtype=dtype) * 3
    t = torch.randn(b, k, generator=g, dtype=dtype) * 3
    labels = torch.randint(0, k, (b,), generator=g)
    return s, t, labels


def _tol(dtype: torch.dtype) -> dict[str, float]:
    """pytest.approx tolerances: float32 rounding vs near-exact float64."""
    return {"rel": 1e-4, "abs": 1e-5} if dtype == torch.float32 else {"rel": 1e-10, "abs": 1e-12}


# ---- loss tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_tckd_nckd_match_naive_loop(dtype, T):
    s, t, labels = _data(dtype)
    ref = [naive_parts(s[i].tolist(), t[i].tolist(), int(labels[i]), T) for i in range(len(labels))]
    tol = _tol(dtype)
    tckd, nckd = tckd_per_sample(s, t, labels, T), nckd_per_sample(s, t, labels, T)
    assert tckd.dtype == dtype and nckd.dtype == dtype
    assert tckd.tolist() == pytest.approx([r[0] for r in ref], **tol)
    assert nckd.tolist() == pytest.approx([r[1] for r in ref], **tol)
    alpha, beta = 1.5, 8.0
    expected = sum(alpha * r[0] + beta * r[1] for r in ref) / len(ref)
    assert dkd_loss(s, t, labels, alpha, beta, T).item() == pytest.approx(expected, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kd_decomposes_into_tckd_and_weighted_nckd(dtype):
    # Paper Eq. 1: KD = TCKD + (1 - p^T_t) * NCKD per sample (all at the same T, all times T^2).
    s, t, labels = _data(dtype, b=8, k=10, seed=3)
    T = 4.0
    tckd, nckd = tckd_per_sample(s, t, labels, T), nckd_per_sample(s, t, labels, T)
    p_t = torch.softmax(t.double() / T, dim=1).gather(1, labels[:, None]).squeeze(1)
    kd = [naive_parts(s[i].tolist(), t[i].tolist(), int(labels[i]), T)[2] for i in range(len(labels))]
    combined = (tckd.double() + (1 - p_t) * nckd.double()).tolist()
    tol = _tol(dtype)
    assert combined == pytest.approx(kd, **tol)
    # And with alpha = beta = 1, DKD exceeds KD by exactly the batch mean of p^T_t * NCKD.
    gap = dkd_loss(s, t, labels, 1.0, 1.0, T).double() - sum(kd) / len(kd)
    assert gap.item() == pytest.approx((p_t * nckd.double()).mean().item(), **tol)


def test_two_classes_by_hand():
    # K = 2: one non-target class, so NCKD = 0 and TCKD is plain KD: teacher (e/(1+e), 1/(1+e)), student uniform.
    s, t, labels = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    p = math.e / (1 + math.e)
    expected = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert tckd_per_sample(s, t, labels, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert nckd_per_sample(s, t, labels, 1.0).item() == 0.0


def test_identical_logits_give_zero_and_the_target_logit_does_not_enter_nckd():
    s, t, labels = _data(torch.float64)
    assert torch.allclose(tckd_per_sample(s, s, labels, 4.0), torch.zeros(len(labels), dtype=torch.float64))
    moved = s.clone()
    moved[torch.arange(len(labels)), labels] += 50.0  # only the target logit changes
    base = nckd_per_sample(s, t, labels, 4.0)
    assert torch.allclose(nckd_per_sample(moved, t, labels, 4.0), base, rtol=1e-12, atol=1e-12)


def test_confident_teacher_stays_finite_with_finite_gradients():
    # A target logit far above the rest: the non-target mass underflows in float32 if computed as 1 - p_t.
    s = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]], requires_grad=True)
    t = torch.tensor([[400.0, 0.0, 0.0], [0.0, 300.0, 1.0]])
    labels = torch.tensor([0, 1])
    loss = dkd_loss(s, t, labels, 1.0, 8.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    ref = [naive_parts(s[i].tolist(), t[i].tolist(), int(labels[i]), 4.0) for i in range(2)]
    assert loss.item() == pytest.approx(sum(r[0] + 8.0 * r[1] for r in ref) / 2, rel=1e-4)


def test_half_inputs_are_computed_in_float32():
    s, t, labels = _data(torch.float32)
    got = tckd_per_sample(s.bfloat16(), t.bfloat16(), labels, 4.0)
    assert got.dtype == torch.float32
    want = tckd_per_sample(s.bfloat16().float(), t.bfloat16().float(), labels, 4.0)
    assert torch.allclose(got, want)


def test_warmup_ramp():
    assert [warmup_factor(e, 20) for e in (1, 10, 20, 21, 240)] == [0.05, 0.5, 1.0, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0


@pytest.mark.parametrize("key, value", [("temperature", 0.0), ("beta", -1.0), ("warmup", -2)])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(UserError, match=f"dkd.{key}"):
        DKDParams(**{key: value})


# ---- distiller with tiny real zoo models ----------------------------------------------------------------
def _method(**kw) -> DKD:
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    method = DKD(student, teacher, DKDParams(**kw), DataInfo(num_classes=10))
    method.train()
    return method


@pytest.mark.parametrize("epoch", [1, 25])
def test_distiller_step_losses_gradients_and_frozen_teacher(epoch):
    method = _method()
    teacher = method.teacher
    before = teacher_snapshot(teacher)
    batch = make_batch(4, 10, seed=1, labels="cycle", augment=NormalisingAugmenter(mean=0.0, std=1.0))
    out = method.forward_train(batch, epoch)
    assert set(out.losses) == {"ce", "tckd", "nckd"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.stats["kd_ramp"].item() == pytest.approx(warmup_factor(epoch, 20))

    # The weighted terms equal the pure loss on the step's own logits, times the ramp.
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        t_logits = teacher(x)
    ramp, p = warmup_factor(epoch, 20), method.params
    want_t = ramp * p.alpha * tckd_per_sample(out.logits.detach(), t_logits, batch.labels, p.temperature).mean()
    want_n = ramp * p.beta * nckd_per_sample(out.logits.detach(), t_logits, batch.labels, p.temperature).mean()
    assert out.losses["tckd"].item() == pytest.approx(want_t.item(), rel=1e-5)
    assert out.losses["nckd"].item() == pytest.approx(want_n.item(), rel=1e-5)

    out.total.backward()
    assert_grads_reach(method.student, finite=True)
    assert any(q.grad.abs().sum() > 0 for q in method.student.parameters())
    assert_teacher_untouched(teacher, before)
    assert method.extra_parameters() == 0
