"""DIST (`dist`): inter/intra relations against naive Pearson loops, hand values, invariances, the Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.dist import (
    DIST,
    DISTParams,
    dist_loss,
    inter_class_per_sample,
    intra_class_relation,
)
from pckd.models import create_model
from tests.methods.scaffold import (
    NormalisingAugmenter,
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)


# ---- naive reference: python floats, one correlation at a time -------------------------------------------
def _softmax(row: list[float], T: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / T) for v in row]
    return [v / sum(e) for v in e]


def _pearson(x: list[float], y: list[float], eps: float = 1e-8) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return cov / (sx * sy + eps)


def naive_dist(s: list[list[float]], t: list[list[float]], T: float) -> tuple[list[float], float]:
    """(inter per sample, intra) both times T^2."""
    ps, pt = [_softmax(r, T) for r in s], [_softmax(r, T) for r in t]
    inter = [T * T * (1 - _pearson(a, b)) for a, b in zip(ps, pt)]
    k = len(s[0])
    cols = [_pearson([r[c] for r in ps], [r[c] for r in pt]) for c in range(k)]
    return inter, T * T * (1 - sum(cols) / k)


def _data(dtype: torch.dtype, b: int = 6, k: int = 7, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g, dtype=dtype) * 3, torch.randn(b, k, generator=g, dtype=dtype) * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_relations_match_naive_loops(dtype, T):
    s, t = _data(dtype)
    inter, intra = naive_dist(s.tolist(), t.tolist(), T)
    tol = {"rel": 1e-4, "abs": 1e-6} if dtype == torch.float32 else {"rel": 1e-10, "abs": 1e-12}
    got = inter_class_per_sample(s, t, T)
    assert got.dtype == dtype
    assert got.tolist() == pytest.approx(inter, **tol)
    assert intra_class_relation(s, t, T).item() == pytest.approx(intra, **tol)
    assert dist_loss(s, t, 2.0, 0.5, T).item() == pytest.approx(2.0 * sum(inter) / len(inter) + 0.5 * intra, **tol)


def test_two_classes_by_hand():
    # K = 2, T = 1: a row's probabilities (p, 1 - p) centre to (p - 1/2)(1, -1), so the row correlation is the
    # sign of (p_s - 1/2)(p_t - 1/2) (up to the eps): student (0.5+, ...) and teacher agree -> inter 0.
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[3.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    inter = inter_class_per_sample(s, t, 1.0)
    assert inter.tolist() == pytest.approx([0.0, 2.0], abs=1e-5)  # eps 1e-8 over norms ~0.05
    # Columns over the batch: class 0 of the student is (sig(1), sig(-2)), of the teacher (sig(3), sig(2)); both
    # decrease, two points always correlate +-1: +1 here, and class 1 mirrors class 0 -> intra = 1 - 1 = 0.
    assert intra_class_relation(s, t, 1.0).item() == pytest.approx(0.0, abs=1e-5)


def test_relations_are_invariant_to_affine_maps_of_the_predictions_and_zero_for_a_match():
    s, t = _data(torch.float64)
    # A perfect match gives 1 - n^2 / (n^2 + eps) per row (n the centred norm), times T^2: only the eps remains.
    p = torch.softmax(s / 4.0, dim=1)
    n2 = ((p - p.mean(dim=1, keepdim=True)) ** 2).sum(dim=1)
    assert torch.allclose(inter_class_per_sample(s, s, 4.0), 16.0 * (1e-8 / (n2 + 1e-8)), rtol=1e-6, atol=1e-15)
    assert intra_class_relation(s, s, 4.0).item() == pytest.approx(0.0, abs=1e-4)
    # Shifting a row of logits does not change its probabilities: inter and intra are unchanged.
    shifted = s + torch.arange(6, dtype=torch.float64)[:, None]
    assert torch.allclose(inter_class_per_sample(shifted, t, 4.0), inter_class_per_sample(s, t, 4.0))
    assert intra_class_relation(shifted, t, 4.0).item() == pytest.approx(intra_class_relation(s, t, 4.0).item())


def test_half_inputs_are_computed_in_float32_and_gradients_are_finite():
    s, t = _data(torch.float32)
    assert inter_class_per_sample(s.bfloat16(), t.bfloat16(), 4.0).dtype == torch.float32
    # A uniform student row (zero centred norm) stays finite thanks to the eps, gradient included.
    s0 = torch.zeros(3, 5, requires_grad=True)
    loss = dist_loss(s0, t[:3, :5], 1.0, 1.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s0.grad).all()


@pytest.mark.parametrize("key, value", [("temperature", 0.0), ("kd_weight", -1.0), ("gamma", -0.5)])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(UserError, match=f"dist.{key}"):
        DISTParams(**{key: value})


def test_distiller_step_losses_gradients_and_frozen_teacher():
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    method = DIST(student, teacher, DISTParams(), DataInfo(num_classes=10))
    method.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(6, 10, seed=1, labels="cycle", augment=NormalisingAugmenter(mean=0.0, std=1.0))
    out = method.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "inter", "intra"}
    with torch.no_grad():
        t_logits = teacher(batch.augment.standard(batch.images))
    inter, intra = naive_dist(out.logits.detach().tolist(), t_logits.tolist(), 4.0)
    assert out.losses["inter"].item() == pytest.approx(2.0 * sum(inter) / len(inter), rel=1e-4)
    assert out.losses["intra"].item() == pytest.approx(2.0 * intra, rel=1e-4)
    out.total.backward()
    assert_grads_reach(method.student, finite=True)
    assert_teacher_untouched(teacher, before)
    assert method.extra_parameters() == 0
