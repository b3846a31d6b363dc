"""FSP: the FSP matrices and their MSE by loops, the supported-pair check, the init/main stage switch and a
training step on real zoo pairs; the configs' pair list against the models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.base import method_registry
from pckd.methods.fsp import FSP, FSPParams, check_fsp_pair, fsp_losses, fsp_matrix
from pckd.models import create_model
from pckd.models.interface import feature_shapes
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

K = 10
B = 4
TOOLS = Path(__file__).resolve().parents[2] / "tools"


# ---- naive references --------------------------------------------------------------------------------------
def naive_pool(x: list, side: int) -> list:
    """Average pooling of [B][C][H][H] lists to side x side, H a multiple of side."""
    k = len(x[0][0]) // side
    return [[[[sum(ch[k * i + a][k * j + b] for a in range(k) for b in range(k)) / k**2 for j in range(side)]
              for i in range(side)] for ch in xb] for xb in x]


def naive_fsp(bottom: torch.Tensor, top: torch.Tensor) -> list:
    """G[b][j][i] = mean over positions of top[b][j] * bottom[b][i], the larger map pooled first."""
    side = min(bottom.shape[2], top.shape[2])
    bot, tp = naive_pool(bottom.double().tolist(), side), naive_pool(top.double().tolist(), side)
    return [[[sum(tj[h][w] * bi[h][w] for h in range(side) for w in range(side)) / side**2 for bi in bb]
             for tj in tb] for bb, tb in zip(bot, tp)]


def naive_mse(a: list, b: list) -> float:
    flat = [(x - y) ** 2 for ab, bb in zip(a, b) for ra, rb in zip(ab, bb) for x, y in zip(ra, rb)]
    return sum(flat) / len(flat)


# ---- pure loss -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bottom_side, top_side", [(4, 4), (4, 2), (2, 4)])
def test_fsp_matrix_matches_loop(dtype, bottom_side, top_side):
    g = torch.Generator().manual_seed(0)
    bottom = torch.randn(2, 3, bottom_side, bottom_side, generator=g, dtype=torch.float64)
    top = torch.randn(2, 5, top_side, top_side, generator=g, dtype=torch.float64)
    got = fsp_matrix(bottom.to(dtype), top.to(dtype))
    assert got.shape == (2, 5, 3) and got.dtype == dtype
    expected = naive_fsp(bottom, top)
    flat = [v for m in expected for r in m for v in r]
    assert got.double().flatten().tolist() == pytest.approx(flat, rel=1e-10 if dtype == torch.float64 else 1e-5)


def test_fsp_matrix_hand_value():
    # 1x2 maps: bottom channel (1, 3), top channel (2, 4): mean(1*2, 3*4) = 7
    assert fsp_matrix(torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[2.0, 4.0]]]])).item() == 7.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fsp_losses_match_loop(dtype):
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 3, 8, 8), (2, 4, 8, 8), (2, 6, 4, 4), (2, 5, 2, 2)]
    s = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    t = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    got = fsp_losses([v.to(dtype) for v in s], [v.to(dtype) for v in t])
    expected = [naive_mse(naive_fsp(s[k], s[k + 1]), naive_fsp(t[k], t[k + 1])) for k in range(len(shapes) - 1)]
    assert [v.item() for v in got] == pytest.approx(expected, rel=1e-10 if dtype == torch.float64 else 1e-5)


def test_check_pair_names_both_shape_lists():
    check_fsp_pair([(16, 32, 32), (32, 16, 16)], [(16, 32, 32), (32, 8, 8)])  # channels equal: spatial may differ
    with pytest.raises(UserError, match=r"student stages \[\(16, 32, 32\), \(16, 16, 16\)\] and teacher stages "
                                        r"\[\(16, 32, 32\), \(32, 16, 16\)\]"):
        check_fsp_pair([(16, 32, 32), (16, 16, 16)], [(16, 32, 32), (32, 16, 16)])
    with pytest.raises(UserError, match="fsp needs equal channel counts"):
        check_fsp_pair([(16, 32, 32)], [(16, 32, 32), (32, 16, 16)])


def test_defaults_registry_and_validation():
    assert FSPParams() == FSPParams(ce_weight=1.0, fsp_weight=0.0, init_epochs=30)
    assert method_registry()["fsp"].cls is FSP
    with pytest.raises(UserError, match="fsp.init_epochs"):
        FSPParams(init_epochs=-1)
    with pytest.raises(UserError, match="fsp.fsp_weight"):
        FSPParams(fsp_weight=-1.0)


# ---- training steps on real zoo pairs ------------------------------------------------------------------------
def build(teacher: str = "resnet32", student: str = "resnet20", **kw) -> FSP:
    torch.manual_seed(0)
    d = FSP(create_model(student, K), create_model(teacher, K), FSPParams(**kw), DataInfo(num_classes=K))
    d.train()
    return d


def test_stage_switch_at_init_epochs():
    d = build("resnet8", "resnet8", init_epochs=2)
    batch = make_batch(B, K)
    assert set(d.forward_train(batch, 1).losses) == {"fsp_init"}
    assert set(d.forward_train(batch, 2).losses) == {"fsp_init"}
    out = d.forward_train(batch, 3)
    assert set(out.losses) == {"ce"} and out.stats == {}
    d.params.fsp_weight = 50.0
    assert set(d.forward_train(batch, 3).losses) == {"ce", "fsp"}
    assert set(build("resnet8", "resnet8", init_epochs=0).forward_train(batch, 1).losses) == {"ce"}


def test_init_step_on_resnet32_to_resnet20():
    d = build()
    student, teacher = d.student, d.teacher
    teacher.requires_grad_(True)  # even so, no gradient may reach it
    before = teacher_snapshot(teacher)
    batch = make_batch(B, K)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"fsp_init"} and out.logits.shape == (B, K)
    assert torch.isfinite(out.losses["fsp_init"]) and out.losses["fsp_init"].item() > 0
    assert set(out.stats) == {"fsp_pair1", "fsp_pair2", "fsp_pair3"}  # stem + 3 stages: 3 consecutive pairs
    # the sum over consecutive stage pairs (stem included) of the FSP-matrix MSE, by loops
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        s, t = student.forward_features(x).stages, teacher.forward_features(x).stages
    expected = sum(naive_mse(naive_fsp(s[k], s[k + 1]), naive_fsp(t[k], t[k + 1])) for k in range(len(s) - 1))
    assert out.losses["fsp_init"].item() == pytest.approx(expected, rel=1e-5)
    out.total.backward()
    classifier = set(map(id, student.classifier_layer.parameters()))
    for p in student.parameters():  # no CE in the init stage: only the classifier gets nothing
        assert (p.grad is None) == (id(p) in classifier)
    assert d.extra_parameters() == 0
    assert_teacher_untouched(teacher, before)


def test_main_stage_step_is_cross_entropy_on_the_student():
    d = build()
    out = d.forward_train(make_batch(B, K, 1), 31)
    assert set(out.losses) == {"ce"} and torch.isfinite(out.losses["ce"])
    out.total.backward()
    assert_grads_reach(d.student)
    assert all(p.grad is None for p in d.teacher.parameters())


@pytest.mark.parametrize("teacher_name, student_name", [("resnet8x4", "resnet8"), ("wrn_16_2", "wrn_16_1")])
def test_unsupported_pairs_are_rejected(teacher_name, student_name):
    with pytest.raises(UserError, match=r"fsp needs equal channel counts .* student stages \[.*\] and teacher stages"):
        FSP(create_model(student_name, K), create_model(teacher_name, K), FSPParams(), DataInfo(num_classes=K))


# ---- configs -------------------------------------------------------------------------------------------------
def test_configs_list_exactly_the_supported_pairs():
    sys.path.insert(0, str(TOOLS))
    from configs_init_baselines import FSP_PAIRS, configs
    from make_configs import PAIRS

    shapes = {name: feature_shapes(create_model(name, 100)).stages for pair in PAIRS for name in pair}

    def supported(t: str, s: str) -> bool:
        try:
            check_fsp_pair(shapes[s], shapes[t])
        except UserError:
            return False
        return True

    assert sorted(FSP_PAIRS) == sorted(p for p in PAIRS if supported(*p))
    assert len(FSP_PAIRS) == 6 and ("wrn_40_2", "wrn_40_1") not in FSP_PAIRS
    cfgs = {k: v for k, v in configs().items() if k.startswith("cifar100/fsp/")}
    assert sorted(cfgs) == sorted(f"cifar100/fsp/{t}-{s}.yaml" for t, s in FSP_PAIRS)
    for cfg in cfgs.values():
        assert FSPParams(**cfg["fsp"]) == FSPParams()
        assert cfg["train"]["epochs"] == 270 and cfg["train"]["milestones"] == [180, 210, 240]
