"""WTTM (`wttm`): the power-transformed teacher and its weight against naive loops and hand values, the Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.wttm import (
    WTTM,
    WTTMParams,
    ttm_per_sample,
    wttm_loss,
    wttm_per_sample,
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


def naive_wttm(s: list[float], t: list[float], exponent: float) -> tuple[float, float]:
    """(TTM, WTTM) of one sample: probabilities, their power, normalise, KL, times the normaliser."""
    ps, pt = _softmax(s), _softmax(t)
    powered = [v ** exponent for v in pt]
    u = sum(powered)
    q = [v / u for v in powered]
    kl = sum(a * math.log(a / b) for a, b in zip(q, ps) if a > 0)
    return kl, u * kl


def _data(dtype: torch.dtype, b: int = 6, k: int = 7, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g, dtype=dtype) * 3, torch.randn(b, k, generator=g, dtype=dtype) * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exponent", [0.1, 0.25, 1.0])
def test_matches_naive_loop(dtype, exponent):
    s, t = _data(dtype)
    ref = [naive_wttm(s[i].tolist(), t[i].tolist(), exponent) for i in range(len(s))]
    tol = {"rel": 1e-4, "abs": 1e-6} if dtype == torch.float32 else {"rel": 1e-10, "abs": 1e-12}
    ttm, wttm = ttm_per_sample(s, t, exponent), wttm_per_sample(s, t, exponent)
    assert ttm.dtype == dtype and wttm.dtype == dtype
    assert ttm.tolist() == pytest.approx([r[0] for r in ref], **tol)
    assert wttm.tolist() == pytest.approx([r[1] for r in ref], **tol)
    assert wttm_loss(s, t, exponent).item() == pytest.approx(sum(r[1] for r in ref) / len(ref), **tol)


def test_two_classes_by_hand():
    # Teacher p = (0.8, 0.2), l = 1/2: p^l = (2, 1) / sqrt(5), U = 3 / sqrt(5), q = (2/3, 1/3); student uniform.
    s, t = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[math.log(4.0), 0.0]], dtype=torch.float64)
    kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert ttm_per_sample(s, t, 0.5).item() == pytest.approx(kl, rel=1e-12)
    assert wttm_per_sample(s, t, 0.5).item() == pytest.approx(3 / math.sqrt(5) * kl, rel=1e-12)


def test_power_transform_is_the_teacher_at_temperature_one_over_l_and_l1_is_plain_kl():
    # p^l / sum p^l = softmax(z / T) with T = 1 / l: TTM is KD with the temperature on the teacher side only.
    s, t = _data(torch.float64, seed=4)
    T = 4.0
    pt, ls = torch.softmax(t / T, dim=1), torch.log_softmax(s, dim=1)
    assert torch.allclose(ttm_per_sample(s, t, 1 / T), (pt * (pt.log() - ls)).sum(dim=1), rtol=1e-12)
    # l = 1: U = 1 and WTTM is KL(p^T || p^S) at temperature 1.
    p1 = torch.softmax(t, dim=1)
    assert torch.allclose(wttm_per_sample(s, t, 1.0), (p1 * (p1.log() - ls)).sum(dim=1), rtol=1e-12)


def test_confident_teacher_stays_finite_and_half_inputs_run_in_float32():
    s = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    t = torch.tensor([[500.0, 0.0, 0.0]])
    loss = wttm_loss(s, t, 0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    a, b = _data(torch.float32)
    assert wttm_per_sample(a.bfloat16(), b.bfloat16(), 0.2).dtype == torch.float32


@pytest.mark.parametrize("key, value", [("exponent", 0.0), ("wttm_weight", -1.0), ("ce_weight", -0.1)])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(UserError, match=f"wttm.{key}"):
        WTTMParams(**{key: value})


def test_distiller_step_losses_gradients_and_frozen_teacher():
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    method = WTTM(student, teacher, WTTMParams(), DataInfo(num_classes=10))
    method.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(4, 10, seed=1, labels="cycle", augment=NormalisingAugmenter(mean=0.0, std=1.0))
    out = method.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "wttm"}
    with torch.no_grad():
        t_logits = teacher(batch.augment.standard(batch.images))
    ref = [naive_wttm(out.logits[i].tolist(), t_logits[i].tolist(), 0.2)[1] for i in range(4)]
    assert out.losses["wttm"].item() == pytest.approx(4.0 * sum(ref) / 4, rel=1e-4)
    out.total.backward()
    assert_grads_reach(method.student, finite=True)
    assert_teacher_untouched(teacher, before)
    assert method.extra_parameters() == 0
