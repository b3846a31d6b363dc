"""NKD (`nkd`): target and normalised non-target terms against naive loops and hand values, the Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.nkd import (
    NKD,
    NKDParams,
    nkd_loss,
    nkd_nontarget_per_sample,
    nkd_target_per_sample,
)
from pckd.models import create_model
from tests.methods.scaffold import (
    NormalisingAugmenter,
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)


def _softmax(row: list[float], T: float = 1.0) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    return [v / sum(e) for v in e]


def naive_nkd(s: list[float], t: list[float], label: int, T: float) -> tuple[float, float]:
    """(target term, non-target term) of one sample: the classes other than the label are dropped, then
    softmax at T and a cross-entropy, times T^2."""
    target = -_softmax(t)[label] * math.log(_softmax(s)[label])
    qs = _softmax([v for k, v in enumerate(s) if k != label], T)
    qt = _softmax([v for k, v in enumerate(t) if k != label], T)
    return target, -T * T * sum(a * math.log(b) for a, b in zip(qt, qs))


def _data(dtype: torch.dtype, b: int = 6, k: int = 7, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, k, generator=g, dtype=dtype) * 3
    t = torch.randn(b, k, generator=g, dtype=dtype) * 3
    return s, t, torch.randint(0, k, (b,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_terms_match_naive_loop(dtype, T):
    s, t, labels = _data(dtype)
    ref = [naive_nkd(s[i].tolist(), t[i].tolist(), int(labels[i]), T) for i in range(len(labels))]
    tol = {"rel": 1e-4, "abs": 1e-6} if dtype == torch.float32 else {"rel": 1e-10, "abs": 1e-12}
    tgt, non = nkd_target_per_sample(s, t, labels), nkd_nontarget_per_sample(s, t, labels, T)
    assert tgt.dtype == dtype and non.dtype == dtype
    assert tgt.tolist() == pytest.approx([r[0] for r in ref], **tol)
    assert non.tolist() == pytest.approx([r[1] for r in ref], **tol)
    assert nkd_loss(s, t, labels, 3.5, T).item() == pytest.approx(sum(a + 3.5 * b for a, b in ref) / len(ref), **tol)


def test_three_classes_by_hand():
    # Student uniform; teacher logits (ln 2, 0, 0), label 0: p^T = (1/2, 1/4, 1/4), p^S_0 = 1/3, so the target
    # term is (1/2) ln 3; the non-target logits are equal on both sides, both q uniform over 2: CE = ln 2, x T^2.
    s, t, labels = torch.zeros(1, 3), torch.tensor([[math.log(2.0), 0.0, 0.0]]), torch.tensor([0])
    assert nkd_target_per_sample(s, t, labels).item() == pytest.approx(0.5 * math.log(3), rel=1e-6)
    assert nkd_nontarget_per_sample(s, t, labels, 1.0).item() == pytest.approx(math.log(2), rel=1e-6)
    assert nkd_nontarget_per_sample(s, t, labels, 2.0).item() == pytest.approx(4 * math.log(2), rel=1e-6)


def test_target_logit_does_not_enter_the_non_target_term_and_teacher_gets_no_gradient():
    s, t, labels = _data(torch.float64)
    moved = s.clone()
    moved[torch.arange(len(labels)), labels] += 40.0
    assert torch.allclose(nkd_nontarget_per_sample(moved, t, labels, 3.0), nkd_nontarget_per_sample(s, t, labels, 3.0),
                          rtol=1e-12, atol=1e-12)
    s_req, t_req = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
    nkd_target_per_sample(s_req, t_req, labels).sum().backward()
    assert s_req.grad is not None
    assert t_req.grad is None  # the teacher's target probability is detached


def test_confident_logits_stay_finite_with_finite_gradients():
    s = torch.tensor([[300.0, 0.0, -1.0], [0.0, 1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 400.0, 0.0], [0.0, 300.0, 1.0]])
    labels = torch.tensor([0, 1])
    loss = nkd_loss(s, t, labels, 3.5, 3.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("key, value", [("temperature", 0.0), ("gamma", -1.0), ("target_weight", -2.0)])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(UserError, match=f"nkd.{key}"):
        NKDParams(**{key: value})


def test_distiller_step_losses_gradients_and_frozen_teacher():
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    method = NKD(student, teacher, NKDParams(), DataInfo(num_classes=10))
    method.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(4, 10, seed=1, labels="cycle", augment=NormalisingAugmenter(mean=0.0, std=1.0))
    out = method.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "nkd_target", "nkd_non"}
    with torch.no_grad():
        t_logits = teacher(batch.augment.standard(batch.images))
    ref = [naive_nkd(out.logits[i].tolist(), t_logits[i].tolist(), int(batch.labels[i]), 3.0) for i in range(4)]
    assert out.losses["nkd_target"].item() == pytest.approx(sum(r[0] for r in ref) / 4, rel=1e-4)
    assert out.losses["nkd_non"].item() == pytest.approx(3.5 * sum(r[1] for r in ref) / 4, rel=1e-4)
    out.total.backward()
    assert_grads_reach(method.student, finite=True)
    assert_teacher_untouched(teacher, before)
    assert method.extra_parameters() == 0
