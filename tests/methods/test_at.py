"""Attention transfer: the loss against an element-by-element computation, and one step on real zoo pairs."""

from __future__ import annotations

import math

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.at import AT, ATParams, at_loss, at_stage_loss, attention_map
from pckd.models import create_model
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

K = 10


def naive_attention(f: list) -> list[list[float]]:
    """f[b][c][h][w] -> per sample the flattened map mean_c f^2, divided by its L2 norm."""
    out = []
    for sample in f:
        channels, height, width = len(sample), len(sample[0]), len(sample[0][0])
        a = [sum(sample[c][h][w] ** 2 for c in range(channels)) / channels for h in range(height) for w in range(width)]
        norm = math.sqrt(sum(v * v for v in a))
        out.append([v / max(norm, 1e-12) for v in a])
    return out


def naive_stage_loss(f_s: list, f_t: list) -> float:
    a_s, a_t = naive_attention(f_s), naive_attention(f_t)
    diffs = [(x - y) ** 2 for row_s, row_t in zip(a_s, a_t) for x, y in zip(row_s, row_t)]
    return sum(diffs) / len(diffs)


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
def test_attention_map_and_stage_loss_match_naive(dtype):
    g = torch.Generator().manual_seed(0)
    f_s = torch.randn(3, 2, 3, 4, generator=g, dtype=dtype)
    f_t = torch.randn(3, 5, 3, 4, generator=g, dtype=dtype)  # channel counts may differ
    expected_map = naive_attention(f_s.double().tolist())
    got_map = attention_map(f_s)
    assert got_map.shape == (3, 12)
    assert got_map.flatten().tolist() == pytest.approx([v for row in expected_map for v in row], rel=1e-5, abs=1e-7)
    got = at_stage_loss(f_s, f_t)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(naive_stage_loss(f_s.double().tolist(), f_t.double().tolist()), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("larger", ["student", "teacher"])
def test_larger_map_is_pooled_to_the_smaller_size(dtype, larger):
    g = torch.Generator().manual_seed(1)
    big = torch.randn(2, 3, 4, 6, generator=g, dtype=dtype)
    small = torch.randn(2, 4, 2, 3, generator=g, dtype=dtype)
    pooled = naive_pool2(big.double().tolist())
    if larger == "student":
        got, expected = at_stage_loss(big, small), naive_stage_loss(pooled, small.double().tolist())
    else:
        got, expected = at_stage_loss(small, big), naive_stage_loss(small.double().tolist(), pooled)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_at_loss_sums_the_stages():
    g = torch.Generator().manual_seed(2)
    shapes = [(2, 3, 4, 4), (2, 5, 2, 2)]
    s = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    t = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    expected = sum(naive_stage_loss(a.tolist(), b.tolist()) for a, b in zip(s, t))
    assert at_loss(s, t).item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="as many student as teacher stages"):
        at_loss(s, t[:1])


def test_hand_value():
    # one sample, one channel, two positions: a_s = (1, 0), a_t = (0, 1) -> mean of (1, 1) = 1
    f_s = torch.tensor([[[[3.0, 0.0]]]])
    f_t = torch.tensor([[[[0.0, -2.0]]]])
    assert at_stage_loss(f_s, f_t).item() == pytest.approx(1.0)
    # identical maps up to a positive scale give zero loss (the map is normalised)
    assert at_stage_loss(f_s, 5 * f_s).item() == pytest.approx(0.0, abs=1e-12)


def test_low_precision_inputs_are_computed_in_float32_under_autocast():
    g = torch.Generator().manual_seed(3)
    f_s = torch.randn(6, 8, 4, 4, generator=g).bfloat16()
    f_t = torch.randn(6, 16, 4, 4, generator=g).bfloat16()
    expected = at_stage_loss(f_s.float(), f_t.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = at_stage_loss(f_s, f_t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_params_validate():
    with pytest.raises(UserError, match="at.at_weight"):
        ATParams(at_weight=-1.0)
    with pytest.raises(UserError, match="at.p"):
        ATParams(p=0.0)


# ---- one training step on real zoo models -------------------------------------------------------------------
# Small stand-ins for the paper's resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2 (same families, different
# widths, so channel counts differ), plus a cross-architecture pair whose spatial sizes differ at every stage.
@pytest.mark.parametrize(
    "teacher_name, student_name", [("resnet8x4", "resnet8"), ("wrn_16_2", "wrn_16_1"), ("vgg8", "MobileNetV2")]
)
def test_forward_train_on_zoo_pair(teacher_name, student_name):
    torch.manual_seed(0)
    teacher, student = create_model(teacher_name, K), create_model(student_name, K)
    d = AT(student, teacher, ATParams(), DataInfo(num_classes=K))
    d.train()
    before = teacher_snapshot(teacher)
    batch = make_batch(4, K)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ce", "at"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.losses["at"].item() > 0
    # the term is at_weight x the pure loss on stages[1:] (RepDistiller feat[1:-1]); vgg8 -> MobileNetV2 pools
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        s, t = student.forward_features(x).stages[1:], teacher.forward_features(x).stages[1:]
    torch.testing.assert_close(out.losses["at"].detach(), 1000.0 * at_loss(s, t), rtol=1e-4, atol=1e-6)
    out.total.backward()
    assert_grads_reach(student)
    assert_teacher_untouched(teacher, before)
    assert d.extra_parameters() == 0


def test_unequal_stage_counts_are_rejected_with_both_shapes():
    teacher, student = create_model("resnet8", K), create_model("MobileNetV2", K)  # 4 vs 5 stages
    with pytest.raises(UserError, match=r"student has 5 stages .*\(16, 16, 16\).* teacher 4 stages .*\(16, 32, 32\)"):
        AT(student, teacher, ATParams(), DataInfo(num_classes=K))
