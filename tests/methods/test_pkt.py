"""PKT: the probabilistic transfer loss against a row-by-row loop, and a training step."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.methods.base import method_registry
from pckd.methods.pkt import PKT, PKTParams, pkt_loss
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
EPS = 1e-7


# ---- naive reference ---------------------------------------------------------------------------------------
def naive_row_probabilities(x: list[list[float]], i: int) -> list[float]:
    """Conditional distribution of row i: rescaled cosine kernel against every row, normalised."""
    def unit(v: list[float]) -> list[float]:
        n = math.sqrt(sum(a * a for a in v))
        return [a / (n + EPS) for a in v]

    ui = unit(x[i])
    kernel = [(sum(a * b for a, b in zip(ui, unit(xj))) + 1.0) / 2.0 for xj in x]
    total = sum(kernel)
    return [k / total for k in kernel]


def naive_pkt(s: list[list[float]], t: list[list[float]]) -> float:
    n = len(s)
    total = 0.0
    for i in range(n):
        ps, pt = naive_row_probabilities(s, i), naive_row_probabilities(t, i)
        total += sum(q * math.log((q + EPS) / (p + EPS)) for p, q in zip(ps, pt))
    return total / n**2


# ---- pure loss ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_matches_row_loop(dtype):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.randn(6, 9, generator=g, dtype=torch.float64)
    expected = naive_pkt(s.tolist(), t.tolist())
    got = pkt_loss(s.to(dtype), t.to(dtype))
    assert got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-9 if dtype == torch.float64 else 1e-4)
    assert expected > 0


def test_hand_value_two_samples():
    # teacher: orthogonal rows -> K = [[1, .5], [.5, 1]] -> P rows (2/3, 1/3); student: identical rows -> (1/2, 1/2)
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    kl = (2 / 3) * math.log((2 / 3 + EPS) / (1 / 2 + EPS)) + (1 / 3) * math.log((1 / 3 + EPS) / (1 / 2 + EPS))
    # the eps added to the norms perturbs the cosines at the 1e-7 level, which the hand value ignores
    assert pkt_loss(s, t).item() == pytest.approx(2 * kl / 4, rel=1e-5)


def test_zero_for_scaled_copy_and_teacher_is_constant():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    s = (4.0 * t.detach()).requires_grad_(True)
    loss = pkt_loss(s, t)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert t.grad is None and s.grad is not None


def test_loss_runs_in_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 9, generator=g)
    ref = pkt_loss(s, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pkt_loss(s, t)
    assert got.dtype == torch.float32 and got.item() == ref.item()


def test_zero_row_gives_a_finite_loss():
    s = torch.randn(3, 4)
    s[1] = 0.0  # e.g. a dead ReLU vector: unit vector 0, kernel 1/2 against every row
    assert torch.isfinite(pkt_loss(s, torch.randn(3, 5)))


# ---- training step on real zoo pairs -------------------------------------------------------------------------
@pytest.fixture(scope="module", params=STEP_PAIRS, ids=lambda p: "-".join(p))
def step(request):
    torch.manual_seed(0)
    teacher, student = create_model(request.param[0], K), create_model(request.param[1], K)
    d = PKT(student, teacher, PKTParams(), DataInfo(num_classes=K))
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
    assert set(out.losses) == {"ce", "pkt"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.logits.shape == (B, K)
    expected = 30000 * pkt_loss(f["s"].pooled.detach(), f["t"].pooled).item()
    assert out.losses["pkt"].item() == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_step_gradients_reach_student_not_teacher(step):
    assert_grads_reach(step.d.student)
    assert step.d.extra_parameters() == 0  # PKT has no heads
    assert_teacher_untouched(step.d.teacher, step.before)


# ---- params, registry, configs -------------------------------------------------------------------------------
def test_defaults_registry_and_validation():
    assert PKTParams() == PKTParams(ce_weight=1.0, kd_weight=0.0, pkt_weight=30000.0)
    assert method_registry()["pkt"].cls is PKT
    with pytest.raises(Exception, match="pkt.pkt_weight"):
        PKTParams(pkt_weight=-1)


def test_configs_cover_all_pairs_with_valid_sections():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from configs_relation_baselines import configs
    from make_configs import PAIRS

    cfgs = {k: v for k, v in configs().items() if k.startswith("cifar100/pkt/")}
    assert len(cfgs) == len(PAIRS) == 13
    for path, cfg in cfgs.items():
        assert cfg["method"] == "pkt" and path == f"cifar100/pkt/{cfg['teacher']['arch']}-{cfg['student']['arch']}.yaml"
        assert PKTParams(**cfg["pkt"]) == PKTParams()
