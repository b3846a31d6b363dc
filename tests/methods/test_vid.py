"""VID: the Gaussian NLL element by element, the head (pooling, regressor, variance) by loops, a training step."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.methods.base import method_registry
from pckd.methods.vid import VID, VIDHead, VIDParams, match_spatial, vid_nll
from pckd.models import create_model
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    spy_features,
    teacher_snapshot,
)

K = 10
B = 4
# vgg13 -> MobileNetV2: channels differ everywhere, the teacher's last map is pooled (4x4 -> 2x2);
# MobileNetV2 -> resnet8: the student's maps are the taller ones, and 4 teacher stages meet 3 student stages.
STEP_PAIRS = [("vgg13", "MobileNetV2"), ("MobileNetV2", "resnet8")]  # (teacher, student)


# ---- naive references --------------------------------------------------------------------------------------
def naive_nll(pred: list, target: list, var: list[float]) -> float:
    """Mean over b, c, h, w of 0.5 * ((pred - target)^2 / var_c + log var_c), nested lists [B][C][H][W]."""
    total, count = 0.0, 0
    for pb, tb in zip(pred, target):
        for c, (pc, tc) in enumerate(zip(pb, tb)):
            for ph, th in zip(pc, tc):
                for p, t in zip(ph, th):
                    total += 0.5 * ((p - t) ** 2 / var[c] + math.log(var[c]))
                    count += 1
    return total / count


def naive_pool(x: list, size: int) -> list:
    """Average pooling of [B][C][H][H] lists to size x size, H a multiple of size."""
    k = len(x[0][0]) // size
    return [[[[sum(ch[k * i + a][k * j + b] for a in range(k) for b in range(k)) / k**2 for j in range(size)]
              for i in range(size)] for ch in xb] for xb in x]


def naive_regressor(x: list, weights: list[list[list[float]]]) -> list:
    """1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv, pixel by pixel; weights[l][out][in]."""
    n_b, side = len(x), len(x[0][0])
    out = []
    for b in range(n_b):
        pixels = [[[x[b][c][h][w] for c in range(len(x[b]))] for w in range(side)] for h in range(side)]
        for layer, wl in enumerate(weights):
            pixels = [[[sum(wi * vi for wi, vi in zip(row, v)) for row in wl] for v in line] for line in pixels]
            if layer < len(weights) - 1:
                pixels = [[[max(a, 0.0) for a in v] for v in line] for line in pixels]
        out.append([[[pixels[h][w][c] for w in range(side)] for h in range(side)] for c in range(len(weights[-1]))])
    return out


# ---- pure loss and head ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nll_matches_element_loop(dtype):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    target = torch.randn(2, 3, 2, 3, generator=g, dtype=torch.float64)
    var = torch.rand(3, generator=g, dtype=torch.float64) * 4 + 0.1
    expected = naive_nll(pred.tolist(), target.tolist(), var.tolist())
    got = vid_nll(pred.to(dtype), target.to(dtype), var.to(dtype))
    assert got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-12 if dtype == torch.float64 else 1e-5)


def test_nll_hand_values():
    x = torch.zeros(1, 2, 1, 1)
    assert vid_nll(x, x, torch.full((2,), 5.0)).item() == pytest.approx(0.5 * math.log(5.0))
    assert vid_nll(x + 1, x, torch.full((2,), 2.0)).item() == pytest.approx(0.5 * (0.5 + math.log(2.0)))


def test_variance_starts_at_init_pred_var_and_is_softplus_plus_eps():
    head = VIDHead(3, 4, 4, init_pred_var=5.0, eps=1e-5)
    assert head.alpha.shape == (4,)
    torch.testing.assert_close(head.variance(), torch.full((4,), 5.0))
    with torch.no_grad():
        head.alpha.copy_(torch.tensor([-2.0, 0.0, 1.5, 30.0]))
    expected = [math.log1p(math.exp(a)) + 1e-5 for a in (-2.0, 0.0, 1.5, 30.0)]
    assert head.variance().tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s_side,t_side", [(4, 2), (2, 4), (2, 2)])
def test_head_matches_loops(dtype, s_side, t_side):
    torch.manual_seed(0)
    head = VIDHead(3, 5, 5, init_pred_var=5.0, eps=1e-5).to(dtype)
    with torch.no_grad():
        head.alpha.copy_(torch.randn(5))
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, s_side, s_side, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, t_side, t_side, generator=g, dtype=torch.float64)
    side = min(s_side, t_side)
    s_l, t_l = naive_pool(s.tolist(), side), naive_pool(t.tolist(), side)
    weights = [m.weight.double()[:, :, 0, 0].tolist() for m in head.regressor if isinstance(m, torch.nn.Conv2d)]
    var = [math.log1p(math.exp(a)) + 1e-5 for a in head.alpha.double().tolist()]
    expected = naive_nll(naive_regressor(s_l, weights), t_l, var)
    got = head(s.to(dtype), t.to(dtype))
    assert got.item() == pytest.approx(expected, rel=1e-10 if dtype == torch.float64 else 1e-5)


def test_match_spatial_pools_only_the_taller_map():
    s, t = torch.randn(1, 2, 8, 8), torch.randn(1, 3, 4, 4)
    ps, pt = match_spatial(s, t)
    assert ps.shape == (1, 2, 4, 4) and pt is t
    pt2, ps2 = match_spatial(t, s)
    assert pt2 is t and ps2.shape == (1, 2, 4, 4)


def test_gradients_reach_regressor_and_alpha_not_target():
    head = VIDHead(3, 4, 4, init_pred_var=5.0, eps=1e-5)
    s = torch.randn(2, 3, 2, 2, requires_grad=True)
    t = torch.randn(2, 4, 2, 2, requires_grad=True)
    head(s, t).backward()
    assert t.grad is None and s.grad is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


# ---- training step on real zoo pairs -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=STEP_PAIRS, ids=lambda p: "-".join(p))
def step(request):
    torch.manual_seed(0)
    teacher, student = create_model(request.param[0], K), create_model(request.param[1], K)
    d = VID(student, teacher, VIDParams(), DataInfo(num_classes=K))
    d.train()
    teacher.requires_grad_(True)  # even so, no gradient may reach it
    before = teacher_snapshot(teacher)
    feats: dict = {}
    spy_features(teacher, feats, "t")
    spy_features(student, feats, "s")
    out = d.forward_train(make_batch(B, K), 1)
    out.total.backward()
    return SimpleNamespace(d=d, out=out, feats=feats, before=before)


def test_step_losses_named_finite_and_wired_to_stage_maps(step):
    out, f, d = step.out, step.feats, step.d
    assert set(out.losses) == {"ce", "vid"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.logits.shape == (B, K)
    pairs = list(zip(f["s"].stages[1:], f["t"].stages[1:]))
    assert len(d.heads) == len(pairs) == min(len(f["s"].stages), len(f["t"].stages)) - 1
    with torch.no_grad():
        per_stage = [head(s, t).item() for head, (s, t) in zip(d.heads, pairs)]
    assert out.losses["vid"].item() == pytest.approx(sum(per_stage), rel=1e-6)
    assert set(out.stats) == {f"vid_stage{k + 1}" for k in range(len(pairs))} | {"vid_var_mean"}
    assert out.stats["vid_var_mean"].item() == pytest.approx(5.0, rel=1e-6)


def test_step_heads_sized_and_trained_teacher_untouched(step):
    d, f = step.d, step.feats
    for head, s, t in zip(d.heads, f["s"].stages[1:], f["t"].stages[1:]):
        convs = [m for m in head.regressor if isinstance(m, torch.nn.Conv2d)]
        c_s, c_t = s.shape[1], t.shape[1]
        assert [tuple(c.weight.shape) for c in convs] == [(c_t, c_s, 1, 1), (c_t, c_t, 1, 1), (c_t, c_t, 1, 1)]
        assert all(c.bias is None for c in convs)
        assert_grads_reach(head, nonzero=True)
    assert_grads_reach(d.student)
    assert_teacher_untouched(d.teacher, step.before)


# ---- params, registry, configs -------------------------------------------------------------------------------
def test_defaults_registry_and_validation():
    assert VIDParams() == VIDParams(ce_weight=1.0, kd_weight=0.0, vid_weight=1.0, init_pred_var=5.0, eps=1e-5)
    assert method_registry()["vid"].cls is VID
    with pytest.raises(Exception, match="vid.init_pred_var"):
        VIDParams(init_pred_var=0.0)


def test_configs_cover_all_pairs_with_valid_sections():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from configs_relation_baselines import configs
    from make_configs import PAIRS

    cfgs = {k: v for k, v in configs().items() if k.startswith("cifar100/vid/")}
    assert len(cfgs) == len(PAIRS) == 13
    for path, cfg in cfgs.items():
        assert cfg["method"] == "vid" and path == f"cifar100/vid/{cfg['teacher']['arch']}-{cfg['student']['arch']}.yaml"
        assert VIDParams(**cfg["vid"]) == VIDParams()
