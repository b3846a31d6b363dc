"""RKD: the distance/angle losses against explicit loops over pairs and triplets, and a training step."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.methods.base import method_registry
from pckd.methods.rkd import RKD, RKDParams, rkd_angle_loss, rkd_distance_loss
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
STEP_PAIRS = [("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2")]  # (teacher, student)


# ---- naive reference ---------------------------------------------------------------------------------------
def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def naive_distances(x: list[list[float]]) -> list[list[float]]:
    n = len(x)
    d = [[math.dist(x[i], x[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return [[v / mu for v in row] for row in d]


def naive_cos(x: list[list[float]], i: int, j: int, k: int) -> float:
    if j == i or k == i:  # a zero difference vector normalises to zero
        return 0.0
    u = [a - b for a, b in zip(x[j], x[i])]
    v = [a - b for a, b in zip(x[k], x[i])]
    return sum(a * b for a, b in zip(u, v)) / (math.hypot(*u) * math.hypot(*v))


def naive_rkd(s: list[list[float]], t: list[list[float]]) -> tuple[float, float]:
    n = len(s)
    ds, dt = naive_distances(s), naive_distances(t)
    loss_d = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    loss_a = sum(
        huber(naive_cos(s, i, j, k) - naive_cos(t, i, j, k)) for i in range(n) for j in range(n) for k in range(n)
    ) / n**3
    return loss_d, loss_a


def features(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 3, generator=g, dtype=torch.float64)
    s[0] *= 8  # an outlier so that some normalised-distance differences exceed 1 (linear branch of smooth L1)
    t = torch.randn(5, 7, generator=g, dtype=torch.float64)  # dimensions may differ
    return s.to(dtype), t.to(dtype)


# ---- pure losses -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_match_loops_over_pairs_and_triplets(dtype):
    s, t = features(dtype)
    exp_d, exp_a = naive_rkd(s.double().tolist(), t.double().tolist())
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    got_d, got_a = rkd_distance_loss(s, t), rkd_angle_loss(s, t)
    assert got_d.dtype == dtype and got_a.dtype == dtype
    assert got_d.item() == pytest.approx(exp_d, rel=tol)
    assert got_a.item() == pytest.approx(exp_a, rel=tol)
    assert exp_d > 0 and exp_a > 0


def test_hand_value_right_triangle_vs_equilateral():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # right isosceles triangle
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)  # equilateral
    # distances: student 1, 1, sqrt2 (each twice) over mean (2 + sqrt2)/3; teacher all 1 after normalisation
    mu = (2 + math.sqrt(2)) / 3
    exp_d = (4 * huber(1 / mu - 1) + 2 * huber(math.sqrt(2) / mu - 1)) / 9
    # angles: 6 entries (i, j, j) equal 1 on both sides; (i, j, k), j != k: cos 90/45/45 deg vs cos 60 deg
    c45 = math.sqrt(2) / 2
    exp_a = (2 * huber(0.0 - 0.5) + 4 * huber(c45 - 0.5)) / 27
    assert rkd_distance_loss(s, t).item() == pytest.approx(exp_d, rel=1e-12)
    assert rkd_angle_loss(s, t).item() == pytest.approx(exp_a, rel=1e-12)


def test_invariant_to_scale_and_translation():
    _, t = features(torch.float64)
    s = 3.0 * t + 0.7
    assert rkd_distance_loss(s, t).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_angle_loss(s, t).item() == pytest.approx(0.0, abs=1e-12)


def test_gradients_reach_student_only_and_match_finite_differences():
    s, t = features(torch.float64)
    s.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: rkd_distance_loss(x, t) + rkd_angle_loss(x, t), (s,))
    (rkd_distance_loss(s, t) + rkd_angle_loss(s, t)).backward()
    assert t.grad is None and s.grad is not None


def test_losses_run_in_float32_under_bf16_autocast():
    s, t = features(torch.float32)
    ref = [rkd_distance_loss(s, t), rkd_angle_loss(s, t)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [rkd_distance_loss(s, t), rkd_angle_loss(s, t)]
        from_bf16 = [rkd_distance_loss(s.bfloat16(), t.bfloat16()), rkd_angle_loss(s.bfloat16(), t.bfloat16())]
    for a, b, c in zip(ref, got, from_bf16):
        assert b.dtype == c.dtype == torch.float32
        assert b.item() == a.item()  # autocast is disabled inside: bit-identical
        assert c.item() == pytest.approx(a.item(), rel=0.05)  # only the bf16 rounding of the inputs remains


def test_single_sample_batch_is_finite_and_zero():
    s, t = torch.randn(1, 3, requires_grad=True), torch.randn(1, 5)
    loss = rkd_distance_loss(s, t) + rkd_angle_loss(s, t)
    assert loss.item() == 0.0
    loss.backward()


# ---- training step on real zoo pairs -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=STEP_PAIRS, ids=lambda p: "-".join(p))
def step(request):
    torch.manual_seed(0)
    teacher, student = create_model(request.param[0], K), create_model(request.param[1], K)
    d = RKD(student, teacher, RKDParams(), DataInfo(num_classes=K))
    d.train()
    teacher.requires_grad_(True)  # even so, no gradient may reach it
    before = teacher_snapshot(teacher)
    feats: dict = {}
    spy_features(teacher, feats, "t")
    spy_features(student, feats, "s")
    out = d.forward_train(make_batch(B, K), 1)
    out.total.backward()
    return SimpleNamespace(d=d, out=out, feats=feats, before=before)


def test_step_losses_named_finite_and_wired_to_pooled_features(step):
    out, f = step.out, step.feats
    assert set(out.losses) == {"ce", "rkd_dist", "rkd_angle"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.logits.shape == (B, K)
    s, t = f["s"].pooled.detach(), f["t"].pooled
    assert out.losses["rkd_dist"].item() == pytest.approx(25 * rkd_distance_loss(s, t).item(), rel=1e-6)
    assert out.losses["rkd_angle"].item() == pytest.approx(50 * rkd_angle_loss(s, t).item(), rel=1e-6)
    assert out.losses["rkd_dist"].item() > 0 and out.losses["rkd_angle"].item() > 0


def test_step_gradients_reach_student_not_teacher(step):
    assert_grads_reach(step.d.student)
    assert step.d.extra_parameters() == 0  # RKD has no heads
    assert_teacher_untouched(step.d.teacher, step.before)


# ---- params, registry, configs -------------------------------------------------------------------------------
def test_defaults_registry_and_kd_option():
    assert RKDParams() == RKDParams(ce_weight=1.0, kd_weight=0.0, rkd_weight=1.0, distance_weight=25.0,
                                    angle_weight=50.0)
    assert method_registry()["rkd"].cls is RKD
    with pytest.raises(Exception, match="rkd.angle_weight"):
        RKDParams(angle_weight=-1)
    torch.manual_seed(0)
    d = RKD(create_model("resnet8", K), create_model("resnet8", K), RKDParams(kd_weight=0.9), DataInfo(num_classes=K))
    out = d.forward_train(make_batch(B, K, 1), 1)
    assert set(out.losses) == {"ce", "rkd_dist", "rkd_angle", "kd"} and torch.isfinite(out.total)


def test_configs_cover_all_pairs_with_valid_sections():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from configs_relation_baselines import configs
    from make_configs import PAIRS

    cfgs = {k: v for k, v in configs().items() if k.startswith("cifar100/rkd/")}
    assert len(cfgs) == len(PAIRS) == 13
    for path, cfg in cfgs.items():
        assert cfg["method"] == "rkd" and path == f"cifar100/rkd/{cfg['teacher']['arch']}-{cfg['student']['arch']}.yaml"
        assert RKDParams(**cfg["rkd"]) == RKDParams()
