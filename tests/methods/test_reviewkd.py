"""ReviewKD (`reviewkd`): HCL against explicit loops and hand values, the ABF stack, the Distiller on zoo pairs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.reviewkd import (
    ABF,
    ReviewFusion,
    ReviewKD,
    ReviewKDParams,
    hcl_level,
    hcl_loss,
    review_levels,
    warmup_factor,
)
from pckd.models import create_model
from pckd.models.interface import FeatureShapes
from tests.methods.scaffold import (
    NormalisingAugmenter,
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

K = 10


# ---- naive HCL (explicit loops in float64) ---------------------------------------------------------------
def _naive_pool(m: list[list[float]], k: int) -> list[list[float]]:
    """Adaptive average pooling of one H x W map to k x k: bin i covers [floor(i*H/k), ceil((i+1)*H/k))."""
    h, w = len(m), len(m[0])
    out = []
    for i in range(k):
        r0, r1 = (i * h) // k, -((-(i + 1) * h) // k)
        row = []
        for j in range(k):
            c0, c1 = (j * w) // k, -((-(j + 1) * w) // k)
            cells = [m[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            row.append(sum(cells) / len(cells))
        out.append(row)
    return out


def _naive_mse(a: list, b: list) -> float:
    """Mean squared difference over all (sample, channel, row, col) of nested lists [B][C][H][W]."""
    sq = [(x - y) ** 2 for sa, sb in zip(a, b) for ca, cb in zip(sa, sb) for ra, rb in zip(ca, cb)
          for x, y in zip(ra, rb)]
    return sum(sq) / len(sq)


def naive_hcl_level(s: Tensor, t: Tensor) -> float:
    a, b = s.double().tolist(), t.double().tolist()
    h = len(a[0][0])
    terms = [(1.0, _naive_mse(a, b))]
    weight = 1.0
    for k in (4, 2, 1):
        if k < h:
            weight /= 2
            pa = [[_naive_pool(m, k) for m in sample] for sample in a]
            pb = [[_naive_pool(m, k) for m in sample] for sample in b]
            terms.append((weight, _naive_mse(pa, pb)))
    return sum(w * v for w, v in terms) / sum(w for w, _ in terms)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [1, 2, 4, 6, 8])
def test_hcl_level_matches_naive(dtype, size):
    g = torch.Generator().manual_seed(size)
    s = torch.randn(3, 2, size, size, generator=g, dtype=dtype)
    t = torch.randn(3, 2, size, size, generator=g, dtype=dtype) * 2 + 0.5
    got = hcl_level(s, t)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(naive_hcl_level(s, t), rel=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hcl_loss_is_the_sum_over_levels(dtype):
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 1, 1)]
    s = [torch.randn(*sh, generator=g, dtype=dtype) for sh in shapes]
    t = [torch.randn(*sh, generator=g, dtype=dtype) for sh in shapes]
    expected = sum(naive_hcl_level(a, b) for a, b in zip(s, t))
    assert hcl_loss(s, t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("size, total_weight", [(4, 1.75), (8, 1.875), (16, 1.875)])
def test_hcl_hand_values(size, total_weight):
    # difference = c + checkerboard (+-1): full MSE c^2 + 1, every pooled MSE (even-sized blocks) c^2
    c = 0.5
    idx = torch.arange(size)
    checker = ((idx[:, None] + idx[None, :]) % 2 * 2 - 1).double()
    t = torch.zeros(1, 1, size, size, dtype=torch.float64)
    s = t + c + checker
    expected = c * c + 1.0 / total_weight
    assert hcl_level(s, t).item() == pytest.approx(expected, rel=1e-12)
    # a 1x1 map has only the plain MSE
    assert hcl_level(torch.full((1, 1, 1, 1), 3.0), torch.ones(1, 1, 1, 1)).item() == pytest.approx(4.0)


def test_hcl_low_precision_inputs_are_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    got = hcl_level(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(naive_hcl_level(s.bfloat16().float(), t.bfloat16().float()), rel=1e-5)


def test_warmup_factor():
    assert warmup_factor(1, 20) == pytest.approx(0.05)
    assert warmup_factor(10, 20) == pytest.approx(0.5)
    assert warmup_factor(20, 20) == 1.0
    assert warmup_factor(240, 20) == 1.0
    assert warmup_factor(1, 0) == 1.0


# ---- level layout and the ABF stack ----------------------------------------------------------------------
# Per-sample shapes of the zoo models (as printed by feature_shapes), to keep the big teachers out of the test.
SHAPES = {
    "resnet32x4": FeatureShapes([(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)], 256, K),
    "ShuffleV1": FeatureShapes([(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)], 960, K),
    "wrn_40_2": FeatureShapes([(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)], 128, K),
    "wrn_40_1": FeatureShapes([(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)], 64, K),
    "vgg13": FeatureShapes([(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], 512, K),
    "vgg8": FeatureShapes([(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], 512, K),
    "ResNet50": FeatureShapes([(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)], 2048, K),
    "MobileNetV2": FeatureShapes([(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], 1280, K),
}

# The authors' tables (dvlab-research/ReviewKD build_review_kd): in channels, student sizes, out channels,
# teacher sizes, shallow to deep.
AUTHORS = {
    ("resnet32x4", "ShuffleV1"): ([240, 480, 960, 960], [16, 8, 4, 1], [64, 128, 256, 256], [32, 16, 8, 1]),
    ("wrn_40_2", "wrn_40_1"): ([16, 32, 64, 64], [32, 16, 8, 1], [32, 64, 128, 128], [32, 16, 8, 1]),
    ("vgg13", "MobileNetV2"): ([12, 16, 48, 160, 1280], [16, 8, 4, 2, 1], [128, 256, 512, 512, 512],
                               [16, 8, 4, 4, 1]),
    ("ResNet50", "vgg8"): ([128, 256, 512, 512, 512], [16, 8, 4, 4, 1], [256, 512, 1024, 2048, 2048],
                           [32, 16, 8, 4, 1]),
}


@pytest.mark.parametrize("pair", list(AUTHORS))
def test_levels_and_fusion_shapes_match_the_reference_tables(pair):
    teacher, student = pair
    levels = review_levels(SHAPES[student], SHAPES[teacher])
    in_c, in_s, out_c, out_s = AUTHORS[pair]
    assert [lv.in_channels for lv in levels] == in_c and [lv.out_channels for lv in levels] == out_c
    assert [lv.in_size for lv in levels] == [(s, s) for s in in_s]
    assert [lv.out_size for lv in levels] == [(s, s) for s in out_s]
    fusion = ReviewFusion(levels, mid_channels=8)  # narrow mid width: only the shapes are checked here
    feats = [torch.randn(2, c, s, s) for c, s in zip(in_c, in_s)]
    outs = fusion(feats)
    assert [tuple(o.shape) for o in outs] == [(2, c, s, s) for c, s in zip(out_c, out_s)]
    # only the deepest ABF lacks the attention conv
    assert [abf.attention is None for abf in fusion.abfs] == [False] * (len(levels) - 1) + [True]


def test_levels_errors_name_both_shapes():
    with pytest.raises(UserError, match=r"5 levels.*4"):
        review_levels(SHAPES["vgg8"], SHAPES["resnet32x4"])
    with pytest.raises(UserError, match=r"\(64, 32, 32\).*\(240, 16, 16\)"):  # student larger than teacher
        review_levels(SHAPES["resnet32x4"], SHAPES["ShuffleV1"])


def test_abf_fusion_matches_explicit_computation():
    torch.manual_seed(0)
    abf = ABF(3, 4, 5, fuse=True).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    deeper = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    out, residual = abf(x, deeper, (8, 8))
    # by hand: 2x nearest upsampling, 1x1 attention conv as a channel sum, pixel-wise weighted sum
    h = abf.reduce(x)
    up = deeper.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    w, b = abf.attention[0].weight[:, :, 0, 0], abf.attention[0].bias
    cat = torch.cat([h, up], dim=1)
    logits = torch.einsum("oc,bchw->bohw", w, cat) + b[None, :, None, None]
    att = 1 / (1 + torch.exp(-logits))
    mixed = h * att[:, :1] + up * att[:, 1:]
    expected_residual = mixed.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # to the teacher's 8x8
    torch.testing.assert_close(residual, expected_residual)
    torch.testing.assert_close(out, abf.output(expected_residual))
    assert out.shape == (2, 5, 8, 8)


# ---- the Distiller on zoo pairs --------------------------------------------------------------------------
# resnet8x4 stands in for resnet32x4 as ShuffleV1's teacher: identical feature shapes (see SHAPES) at a quarter of
# the CPU time; a narrow mid width keeps ShuffleV1's 2x-upsampled levels cheap too.
@pytest.mark.parametrize("teacher, student, max_mid, mid", [("resnet32x4", "resnet8x4", 512, 256),
                                                            ("wrn_40_2", "wrn_16_2", 512, 128),
                                                            ("resnet8x4", "ShuffleV1", 64, 64)])
def test_forward_train_on_zoo_pairs(teacher, student, max_mid, mid):
    torch.manual_seed(0)
    t_model, s_model = create_model(teacher, K), create_model(student, K)
    params = ReviewKDParams(reviewkd_weight=5.0, max_mid_channel=max_mid)
    d = ReviewKD(s_model, t_model, params, DataInfo(num_classes=K)).train()
    assert d.mid_channels == mid
    assert all(abf.reduce[0].out_channels == mid for abf in d.fusion.abfs)
    t_state = teacher_snapshot(t_model)
    batch = make_batch(2, K, seed=3, labels="cycle", augment=NormalisingAugmenter(divisor=1.0, mean=128.0, std=64.0))

    out = d.forward_train(batch, epoch=5)
    assert set(out.losses) == {"ce", "reviewkd"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.losses["reviewkd"].item() == pytest.approx(5.0 * 0.25 * out.stats["hcl"].item(), rel=1e-6)
    assert out.stats["hcl"].item() > 0
    assert out.logits.shape == (batch.size, K)
    out.total.backward()

    assert_grads_reach(d.student, finite=True)
    heads = list(d.fusion.parameters())
    assert_grads_reach(heads, nonzero=True)
    assert d.extra_parameters() == sum(p.numel() for p in heads)
    # the teacher: out of the module tree, no gradient, eval mode, state (incl. BN statistics) unchanged
    assert_teacher_untouched(t_model, t_state)
    assert not any(k.startswith(("_teacher", "teacher")) for k in d.state_dict())


def test_warmup_scales_the_feature_loss_only():
    torch.manual_seed(0)
    d = ReviewKD(create_model("resnet8", K), create_model("resnet14", K), ReviewKDParams(), DataInfo(num_classes=K)).train()
    batch = make_batch(2, K, seed=3, labels="cycle", augment=NormalisingAugmenter(divisor=1.0, mean=128.0, std=64.0))
    early, late = d.forward_train(batch, epoch=1), d.forward_train(batch, epoch=40)
    assert early.stats["hcl"].item() == pytest.approx(late.stats["hcl"].item(), rel=1e-5)
    assert early.losses["reviewkd"].item() == pytest.approx(late.losses["reviewkd"].item() / 20, rel=1e-5)
    assert early.losses["ce"].item() == pytest.approx(late.losses["ce"].item(), rel=1e-5)


def test_params_validation_names_the_key():
    with pytest.raises(UserError, match="reviewkd.warmup_epochs"):
        ReviewKDParams(warmup_epochs=-1)
    with pytest.raises(UserError, match="reviewkd.max_mid_channel"):
        ReviewKDParams(max_mid_channel=0)
    assert math.isclose(ReviewKDParams().reviewkd_weight, 1.0)
