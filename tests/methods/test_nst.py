"""Neuron selectivity transfer: the MMD against element-by-element kernel sums, and one step on zoo pairs."""

from __future__ import annotations

import math

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.nst import NST, NSTParams, nst_loss, nst_stage_loss
from pckd.models import create_model
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

K = 10


def unit_channels(sample: list) -> list[list[float]]:
    """sample[c][h][w] -> per channel the flattened map divided by its L2 norm."""
    out = []
    for ch in sample:
        v = [x for row in ch for x in row]
        norm = math.sqrt(sum(x * x for x in v))
        out.append([x / max(norm, 1e-12) for x in v])
    return out


def kernel_mean(a: list[list[float]], b: list[list[float]], degree: int, c: float) -> float:
    vals = [(sum(x * y for x, y in zip(ai, bj)) + c) ** degree for ai in a for bj in b]
    return sum(vals) / len(vals)


def naive_nst(f_s: list, f_t: list, degree: int = 2, c: float = 0.0) -> float:
    """Batch mean of k(s,s) + k(t,t) - 2 k(s,t), each the mean over channel pairs of one sample."""
    total = 0.0
    for sample_s, sample_t in zip(f_s, f_t):
        s, t = unit_channels(sample_s), unit_channels(sample_t)
        total += kernel_mean(s, s, degree, c) + kernel_mean(t, t, degree, c) - 2 * kernel_mean(s, t, degree, c)
    return total / len(f_s)


def naive_pool2(f: list) -> list:
    """Average over non-overlapping 2x2 blocks (adaptive pooling to half the size when the size is even)."""
    return [
        [
            [
                [
                    (ch[2 * h][2 * w] + ch[2 * h][2 * w + 1] + ch[2 * h + 1][2 * w] + ch[2 * h + 1][2 * w + 1]) / 4
                    for w in range(len(ch[0]) // 2)
                ]
                for h in range(len(ch) // 2)
            ]
            for ch in sample
        ]
        for sample in f
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("degree, c", [(2, 0.0), (3, 0.5)])
def test_stage_loss_matches_naive(dtype, degree, c):
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(3, 2, 3, 3, generator=g, dtype=dtype)
    f_t = torch.randn(3, 4, 3, 3, generator=g, dtype=dtype)  # channel counts may differ
    got = nst_stage_loss(f_s, f_t, degree, c)
    assert got.dtype == dtype
    expected = naive_nst(f_s.double().tolist(), f_t.double().tolist(), degree, c)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("larger", ["student", "teacher"])
def test_larger_map_is_pooled_to_the_smaller_size(larger):
    g = torch.Generator().manual_seed(1)
    big = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    small = torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64)
    pooled = naive_pool2(big.tolist())
    if larger == "student":
        got, expected = nst_stage_loss(big, small), naive_nst(pooled, small.tolist())
    else:
        got, expected = nst_stage_loss(small, big), naive_nst(small.tolist(), pooled)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_nst_loss_sums_the_stages():
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in [(2, 3, 4, 4), (2, 6, 2, 2)]]
    t = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in [(2, 5, 4, 4), (2, 2, 2, 2)]]
    expected = sum(naive_nst(a.tolist(), b.tolist()) for a, b in zip(s, t))
    assert nst_loss(s, t).item() == pytest.approx(expected, rel=1e-9)


def test_hand_value():
    # one channel each: k(s,s) = k(t,t) = 1, k(s,t) = cos^2 = 1/2 for s = (1, 0), t = (1, 1): 1 + 1 - 2 * 1/2 = 1
    f_s = torch.tensor([[[[2.0, 0.0]]]])
    f_t = torch.tensor([[[[1.0, 1.0]]]])
    assert nst_stage_loss(f_s, f_t).item() == pytest.approx(1.0)
    # two student channels s1 = (1, 0), s2 = (0, 1) against t = (1, 1)/sqrt 2:
    # mean k(s,s) = (1 + 0 + 0 + 1) / 4 = 1/2, k(t,t) = 1, mean k(s,t) = (1/2 + 1/2) / 2 = 1/2 -> 1/2 + 1 - 1 = 1/2
    f_s2 = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]]])
    assert nst_stage_loss(f_s2, f_t).item() == pytest.approx(0.5)
    # identical maps up to a positive per-channel scale: zero discrepancy
    assert nst_stage_loss(f_s2, f_s2 * torch.tensor([4.0, 0.5]).view(1, 2, 1, 1)).item() == pytest.approx(0.0, abs=1e-6)


def test_low_precision_inputs_are_computed_in_float32_under_autocast():
    g = torch.Generator().manual_seed(3)
    f_s = torch.randn(6, 8, 4, 4, generator=g).bfloat16()
    f_t = torch.randn(6, 16, 4, 4, generator=g).bfloat16()
    expected = nst_stage_loss(f_s.float(), f_t.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nst_stage_loss(f_s, f_t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_params_validate():
    with pytest.raises(UserError, match="nst.nst_weight"):
        NSTParams(nst_weight=-1.0)
    with pytest.raises(UserError, match="nst.degree"):
        NSTParams(degree=1.5)  # type: ignore[arg-type]


# ---- one training step on real zoo models -------------------------------------------------------------------
# Small stand-ins for the paper's resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2 (same families, different
# widths, so channel counts differ at every stage).
@pytest.mark.parametrize("teacher_name, student_name", [("resnet8x4", "resnet8"), ("wrn_16_2", "wrn_16_1")])
def test_forward_train_on_zoo_pair(teacher_name, student_name):
    torch.manual_seed(0)
    teacher, student = create_model(teacher_name, K), create_model(student_name, K)
    d = NST(student, teacher, NSTParams(), DataInfo(num_classes=K))
    d.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(4, K)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "nst"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.losses["nst"].item() > 0
    # the term is nst_weight x the pure loss on stages[1:] (RepDistiller feat[1:-1])
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        s, t = student.forward_features(x).stages[1:], teacher.forward_features(x).stages[1:]
    torch.testing.assert_close(out.losses["nst"].detach(), 50.0 * nst_loss(s, t), rtol=1e-4, atol=1e-6)
    out.total.backward()
    assert_grads_reach(student)
    assert_teacher_untouched(teacher, before)
    assert d.extra_parameters() == 0


def test_unequal_stage_counts_are_rejected_with_both_shapes():
    teacher, student = create_model("resnet8", K), create_model("MobileNetV2", K)  # 4 vs 5 stages
    with pytest.raises(UserError, match=r"nst pairs .* student has 5 stages .* teacher 4 stages"):
        NST(student, teacher, NSTParams(), DataInfo(num_classes=K))
