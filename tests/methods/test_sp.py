"""Similarity-preserving KD: the loss against an element-by-element Gram computation, and one step on zoo pairs."""

from __future__ import annotations

import math

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.sp import SP, SPParams, similarity_matrix, sp_loss
from pckd.models import create_model
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

K = 10


def naive_similarity(f: list[list[float]]) -> list[list[float]]:
    """G[i][j] = <f_i, f_j>, then every row divided by its L2 norm."""
    gram = [[sum(a * b for a, b in zip(fi, fj)) for fj in f] for fi in f]
    out = []
    for row in gram:
        norm = math.sqrt(sum(v * v for v in row))
        out.append([v / max(norm, 1e-12) for v in row])
    return out


def naive_sp(f_s: list[list[float]], f_t: list[list[float]]) -> float:
    g_s, g_t = naive_similarity(f_s), naive_similarity(f_t)
    b = len(f_s)
    return sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sp_matches_naive(dtype):
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(5, 3, 2, 2, generator=g, dtype=dtype)
    f_t = torch.randn(5, 7, 3, 3, generator=g, dtype=dtype)  # only the batch size has to agree
    flat_s, flat_t = f_s.flatten(1).double().tolist(), f_t.flatten(1).double().tolist()
    expected_g = naive_similarity(flat_s)
    got_g = similarity_matrix(f_s)
    assert got_g.shape == (5, 5)
    assert got_g.flatten().tolist() == pytest.approx([v for row in expected_g for v in row], rel=1e-5, abs=1e-7)
    got = sp_loss(f_s, f_t)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(naive_sp(flat_s, flat_t), rel=1e-5)


def test_hand_value():
    # G_s = I (rows already unit); G_t = all ones, rows (1, 1)/sqrt 2:
    # ||G_s - G_t||^2 = 2 (1 - 1/sqrt 2)^2 + 2 (1/sqrt 2)^2 = 4 - 2 sqrt 2, over B^2 = 4
    f_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert sp_loss(f_s, f_t).item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)
    # scale-free: the row normalisation removes any positive scale of the features
    assert sp_loss(f_s, 3 * f_s).item() == pytest.approx(0.0, abs=1e-12)


def test_batch_sizes_must_agree():
    with pytest.raises(ValueError, match="equal batch sizes"):
        sp_loss(torch.randn(3, 4), torch.randn(2, 4))


def test_low_precision_inputs_are_computed_in_float32_under_autocast():
    g = torch.Generator().manual_seed(3)
    f_s = torch.randn(6, 8, 4, 4, generator=g).bfloat16()
    f_t = torch.randn(6, 16, 4, 4, generator=g).bfloat16()
    expected = sp_loss(f_s.float(), f_t.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sp_loss(f_s, f_t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_params_validate():
    with pytest.raises(UserError, match="sp.sp_weight"):
        SPParams(sp_weight=-1.0)


# ---- one training step on real zoo models -------------------------------------------------------------------
# Small stand-ins for the paper's resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2 (same families, different
# widths, so the last stages differ in channels).
@pytest.mark.parametrize("teacher_name, student_name", [("resnet8x4", "resnet8"), ("wrn_16_2", "wrn_16_1")])
def test_forward_train_on_zoo_pair(teacher_name, student_name):
    torch.manual_seed(0)
    teacher, student = create_model(teacher_name, K), create_model(student_name, K)
    d = SP(student, teacher, SPParams(), DataInfo(num_classes=K))
    d.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(4, K)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "sp"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.losses["sp"].item() > 0
    # the term is sp_weight x the pure loss on the last stage (RepDistiller feat[-2])
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        s, t = student.forward_features(x).stages[-1], teacher.forward_features(x).stages[-1]
    torch.testing.assert_close(out.losses["sp"].detach(), 3000.0 * sp_loss(s, t), rtol=1e-4, atol=1e-6)
    out.total.backward()
    assert_grads_reach(student)
    assert_teacher_untouched(teacher, before)
    assert d.extra_parameters() == 0
