"""CC: both correlation forms against explicit loops / the kernel series, and a training step."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from pckd.data.info import DataInfo
from pckd.methods.base import method_registry
from pckd.methods.cc import (
    CC,
    CCParams,
    cc_gaussian_loss,
    cc_repdistiller_loss,
    gaussian_correlation,
)
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


# ---- naive references --------------------------------------------------------------------------------------
def naive_repdistiller(s: list[list[float]], t: list[list[float]]) -> float:
    """Mean over consecutive samples of sum_d |s_i - t_i|_d * |s_{i+1} - t_{i+1}|_d."""
    terms = []
    for i in range(len(s) - 1):
        terms.append(sum(abs(s[i][d] - t[i][d]) * abs(s[i + 1][d] - t[i + 1][d]) for d in range(len(s[i]))))
    return sum(terms) / len(terms)


def naive_kernel(x: list[float], y: list[float], gamma: float, order: int) -> float:
    dot = sum(a * b for a, b in zip(x, y))
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot**p for p in range(order + 1))


def naive_gaussian(s: list[list[float]], t: list[list[float]], gamma: float, order: int) -> float:
    n = len(s)
    return sum(
        (naive_kernel(s[i], s[j], gamma, order) - naive_kernel(t[i], t[j], gamma, order)) ** 2
        for i in range(n) for j in range(n)
    ) / n**2


def embeddings(dtype: torch.dtype, unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 6, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)
    if unit:
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    return s.to(dtype), t.to(dtype)


# ---- pure losses -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repdistiller_form_matches_loop(dtype):
    s, t = embeddings(dtype)
    expected = naive_repdistiller(s.double().tolist(), t.double().tolist())
    got = cc_repdistiller_loss(s, t)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-12 if dtype == torch.float64 else 1e-5)


def test_repdistiller_form_hand_value_and_single_sample():
    s, t = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])  # |deltas| 1 and 2 -> one pair, 1 * 2
    assert cc_repdistiller_loss(s, t).item() == pytest.approx(2.0)
    one = cc_repdistiller_loss(torch.ones(1, 3), torch.zeros(1, 3))
    assert one.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma,order", [(0.4, 2), (1.0, 3)])
def test_gaussian_form_matches_kernel_series(dtype, gamma, order):
    s, t = embeddings(dtype, unit=True)
    expected = naive_gaussian(s.double().tolist(), t.double().tolist(), gamma, order)
    got = cc_gaussian_loss(s, t, gamma, order)
    assert got.dtype == dtype
    assert got.item() == pytest.approx(expected, rel=1e-10 if dtype == torch.float64 else 1e-4)
    assert expected > 0


def test_gaussian_series_converges_to_the_rbf_kernel():
    z, _ = embeddings(torch.float64, unit=True)
    exact = torch.exp(-0.4 * (z.unsqueeze(1) - z.unsqueeze(0)).pow(2).sum(dim=2))
    torch.testing.assert_close(gaussian_correlation(z, 0.4, 25), exact, rtol=1e-12, atol=1e-12)
    # order 2 (the paper's P) is close but not exact: the truncation error is of order (2 gamma)^3 / 3!
    assert 0 < (gaussian_correlation(z, 0.4, 2) - exact).abs().max().item() < 0.1


def test_both_sides_receive_gradients():
    s, t = embeddings(torch.float64)
    s.requires_grad_(True)
    t.requires_grad_(True)  # the teacher's embedding head trains, so its output needs a gradient
    assert torch.autograd.gradcheck(lambda a, b: cc_repdistiller_loss(a, b), (s, t))
    su, tu = (x.detach().requires_grad_(True) for x in embeddings(torch.float64, unit=True))
    assert torch.autograd.gradcheck(lambda a, b: cc_gaussian_loss(a, b, 0.4, 2), (su, tu))


# ---- training step on real zoo pairs -------------------------------------------------------------------------
def run_step(teacher_name: str, student_name: str, **params) -> SimpleNamespace:
    torch.manual_seed(0)
    teacher, student = create_model(teacher_name, K), create_model(student_name, K)
    d = CC(student, teacher, CCParams(**params), DataInfo(num_classes=K))
    d.train()
    teacher.requires_grad_(True)  # even so, no gradient may reach it
    before = teacher_snapshot(teacher)
    feats: dict = {}
    spy_features(teacher, feats, "t")
    spy_features(student, feats, "s")
    out = d.forward_train(make_batch(B, K), 1)
    out.total.backward()
    return SimpleNamespace(d=d, out=out, feats=feats, before=before)


@pytest.fixture(scope="module", params=STEP_PAIRS, ids=lambda p: "-".join(p))
def step(request):
    return run_step(*request.param)


def check_gradients_and_teacher(step: SimpleNamespace) -> None:
    d = step.d
    assert_grads_reach(d.student)
    for head in (d.embed_s, d.embed_t):
        assert_grads_reach(head, nonzero=True)
    assert_teacher_untouched(d.teacher, step.before)


def test_step_losses_named_finite_and_wired_to_embedded_pooled_features(step):
    out, f, d = step.out, step.feats, step.d
    assert set(out.losses) == {"ce", "cc"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert out.logits.shape == (B, K)
    with torch.no_grad():
        expected = 0.02 * cc_repdistiller_loss(d.embed_s(f["s"].pooled), d.embed_t(f["t"].pooled)).item()
    assert out.losses["cc"].item() == pytest.approx(expected, rel=1e-6)
    assert expected > 0


def test_step_heads_sized_and_trained_teacher_untouched(step):
    d = step.d
    d_s, d_t = step.feats["s"].pooled.shape[1], step.feats["t"].pooled.shape[1]
    assert d.embed_s.weight.shape == (128, d_s) and d.embed_t.weight.shape == (128, d_t)
    assert d.extra_parameters() == (d_s + 1) * 128 + (d_t + 1) * 128
    check_gradients_and_teacher(step)


def test_gaussian_kernel_step_uses_unit_embeddings():
    st = run_step("resnet8", "resnet8", kernel="gaussian", feat_dim=16)
    d, f = st.d, st.feats
    assert set(st.out.losses) == {"ce", "cc"} and torch.isfinite(st.out.total)
    with torch.no_grad():
        z_s, z_t = F.normalize(d.embed_s(f["s"].pooled), dim=1), F.normalize(d.embed_t(f["t"].pooled), dim=1)
        expected = 0.02 * naive_gaussian(z_s.double().tolist(), z_t.double().tolist(), 0.4, 2)
    assert st.out.losses["cc"].item() == pytest.approx(expected, rel=1e-4)
    check_gradients_and_teacher(st)


# ---- params, registry, configs -------------------------------------------------------------------------------
def test_defaults_registry_and_validation():
    assert CCParams() == CCParams(ce_weight=1.0, kd_weight=0.0, cc_weight=0.02, feat_dim=128, kernel="repdistiller",
                                  gamma=0.4, order=2)
    assert method_registry()["cc"].cls is CC
    with pytest.raises(Exception, match="cc.kernel"):
        CCParams(kernel="rbf")
    with pytest.raises(Exception, match="cc.order"):
        CCParams(order=-1)


def test_configs_cover_all_pairs_with_valid_sections():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from configs_relation_baselines import configs
    from make_configs import PAIRS

    cfgs = {k: v for k, v in configs().items() if k.startswith("cifar100/cc/")}
    assert len(cfgs) == len(PAIRS) == 13
    for path, cfg in cfgs.items():
        assert cfg["method"] == "cc" and path == f"cifar100/cc/{cfg['teacher']['arch']}-{cfg['student']['arch']}.yaml"
        assert CCParams(**cfg["cc"]) == CCParams()
