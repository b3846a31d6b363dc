"""KD with logit standardisation (`ls`): against a naive per-sample z-score + KL, hand values, the Distiller."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.ls import LS, LSParams, ls_loss, ls_per_sample
from pckd.methods.standardize import standardize
from pckd.models import create_model
from tests.methods.scaffold import (
    NormalisingAugmenter,
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)


# ---- naive reference ------------------------------------------------------------------------------------
def _zscore(row: list[float]) -> list[float]:
    k = len(row)
    mean = sum(row) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (k - 1))  # unbiased, as torch.std in the released code
    return [(v - mean) / (std + 1e-7) for v in row]


def naive_ls_row(s: list[float], t: list[float], T: float) -> float:
    zs, zt = _zscore(s), _zscore(t)
    es = [math.exp(v / T) for v in zs]
    et = [math.exp(v / T) for v in zt]
    ps = [v / sum(es) for v in es]
    pt = [v / sum(et) for v in et]
    return T * T * sum(p * math.log(p / q) for p, q in zip(pt, ps))


def _data(dtype: torch.dtype, b: int = 6, k: int = 7, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g, dtype=dtype) * 3 + 1, torch.randn(b, k, generator=g, dtype=dtype) * 5


def _tol(dtype: torch.dtype) -> dict[str, float]:
    """pytest.approx tolerances: float32 rounding vs near-exact float64."""
    return {"rel": 1e-4, "abs": 1e-6} if dtype == torch.float32 else {"rel": 1e-10, "abs": 1e-12}


# ---- loss tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_ls_matches_naive(dtype, T):
    s, t = _data(dtype)
    expected = [naive_ls_row(s[i].tolist(), t[i].tolist(), T) for i in range(len(s))]
    tol = _tol(dtype)
    got = ls_per_sample(s, t, T)
    assert got.dtype == dtype
    assert got.tolist() == pytest.approx(expected, **tol)
    assert ls_loss(s, t, T).item() == pytest.approx(sum(expected) / len(expected), **tol)


def test_standardize_uses_unbiased_std():
    z = standardize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    assert z.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert z.std().item() == pytest.approx(1.0, rel=1e-6)  # unbiased std of the z-scores is 1 (up to the eps)
    std = math.sqrt(5 / 3)  # unbiased std of 1..4
    assert z[0, 0].item() == pytest.approx(-1.5 / std, rel=1e-6)


def test_two_classes_by_hand():
    # Any two distinct logits standardise to (+-1/sqrt(2)); opposite orders at T = 1 give
    # KL = sqrt(2) * (sigmoid(sqrt(2)) - sigmoid(-sqrt(2))) = sqrt(2) * tanh(1/sqrt(2)).
    s, t = torch.tensor([[5.0, -3.0]]), torch.tensor([[0.1, 0.2]])
    expected = math.sqrt(2) * math.tanh(1 / math.sqrt(2))
    assert ls_per_sample(s, t, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_invariant_to_per_sample_shift_and_scale():
    # The point of the method: the student need not match the teacher's logit range, only its relations.
    s, t = _data(torch.float64)
    scale = torch.tensor([[0.5], [2.0], [3.0], [1.0], [10.0], [0.1]], dtype=torch.float64)
    shifted = s * scale - 7.0
    torch.testing.assert_close(ls_per_sample(shifted, t, 2.0), ls_per_sample(s, t, 2.0), rtol=1e-6, atol=1e-9)
    assert torch.allclose(ls_per_sample(4 * t + 1, t, 2.0), torch.zeros(6, dtype=torch.float64), atol=1e-9)


def test_half_inputs_are_computed_in_float32():
    s, t = _data(torch.float32)
    got = ls_per_sample(s.bfloat16(), t.bfloat16(), 2.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ls_per_sample(s.bfloat16().float(), t.bfloat16().float(), 2.0))


@pytest.mark.parametrize("key, value", [("temperature", -1.0), ("kd_weight", -0.5)])
def test_invalid_params_name_the_key(key, value):
    with pytest.raises(UserError, match=f"ls.{key}"):
        LSParams(**{key: value})


# ---- distiller with tiny real zoo models ----------------------------------------------------------------
def test_distiller_step_losses_gradients_and_frozen_teacher():
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10), create_model("resnet8", 10)
    method = LS(student, teacher, LSParams(), DataInfo(num_classes=10))
    method.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(4, 10, seed=2, labels="cycle", augment=NormalisingAugmenter(mean=0.0, std=1.0))
    out = method.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "ls"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())

    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        t_logits = teacher(x)
    s_rows, t_rows = out.logits.detach().double().tolist(), t_logits.double().tolist()
    naive = sum(naive_ls_row(a, b, 2.0) for a, b in zip(s_rows, t_rows)) / len(s_rows)
    assert out.losses["ls"].item() == pytest.approx(9.0 * naive, rel=1e-4)

    out.total.backward()
    assert_grads_reach(student, finite=True)
    assert any(q.grad.abs().sum() > 0 for q in student.parameters())
    assert_teacher_untouched(teacher, before)
    assert method.extra_parameters() == 0


def test_old_name_lskd_is_refused_with_the_new_name():
    from pckd.api import build_distiller

    student, teacher = create_model("resnet8", 10), create_model("resnet8", 10)
    with pytest.raises(UserError, match=r"'lskd' was renamed 'ls'.*docs/methods/ls\.md"):
        build_distiller("lskd", student, teacher)
