"""AB: the hinge loss element by element, its stage weights, the connectors, the init/main stage switch and a
training step on real zoo pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.ab import (
    AB,
    ABConnector,
    ABParams,
    ab_losses,
    ab_stage_loss,
    ab_stage_weights,
    in_init_stage,
)
from pckd.methods.base import method_registry
from pckd.models import create_model
from tests.methods.scaffold import (
    assert_grads_reach,
    assert_teacher_untouched,
    make_batch,
    teacher_snapshot,
)

K = 10
B = 4


# ---- naive reference ---------------------------------------------------------------------------------------
def naive_stage(source: torch.Tensor, target: torch.Tensor, margin: float) -> float:
    """sum over elements of the alternative L2 hinge, divided by the batch size, in Python floats."""
    total = 0.0
    for s, t in zip(source.double().flatten().tolist(), target.double().flatten().tolist()):
        if t > 0 and s <= margin:
            total += (s - margin) ** 2
        elif t <= 0 and s > -margin:
            total += (s + margin) ** 2
    return total / source.shape[0]


# ---- pure loss -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_stage_loss_matches_element_loop(dtype, margin):
    g = torch.Generator().manual_seed(0)
    source = torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64) * 1.5
    target = torch.relu(torch.randn(3, 4, 2, 3, generator=g, dtype=torch.float64))  # post-activation: zeros
    got = ab_stage_loss(source.to(dtype), target.to(dtype), margin)
    assert got.dtype == dtype
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.item() == pytest.approx(naive_stage(source, target, margin), rel=rel)


def test_stage_loss_hand_values_and_sign_only_target():
    # teacher on (t=2): s=0.5 -> (0.5-1)^2 = 0.25; s=1.5 beyond the margin -> 0.
    # teacher off (t=0): s=0.5 -> (0.5+1)^2 = 2.25; s=-1.5 beyond the margin -> 0. Batch of 1.
    s = torch.tensor([[0.5, 1.5, 0.5, -1.5]])
    t = torch.tensor([[2.0, 2.0, 0.0, 0.0]])
    assert ab_stage_loss(s, t).item() == pytest.approx(2.5)
    # only the sign pattern t > 0 matters: pre-activation (negative) and post-activation (relu) targets agree
    t_pre = torch.tensor([[2.0, 0.1, -3.0, -0.2]])
    assert ab_stage_loss(s, t_pre).item() == ab_stage_loss(s, torch.relu(t_pre)).item()
    with pytest.raises(ValueError, match="equal shapes"):
        ab_stage_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


def test_stage_weights_and_weighted_sum():
    assert ab_stage_weights(3) == [0.25, 0.5, 1.0]
    assert ab_stage_weights(4) == [0.125, 0.25, 0.5, 1.0]
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 3, 4, 4), (2, 5, 2, 2), (2, 6, 1, 1)]
    sources = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    targets = [torch.randn(*sh, generator=g, dtype=torch.float64) for sh in shapes]
    got = ab_losses(sources, targets, 1.0)
    expected = [2.0 ** (k - 2) * 3 / 1000 * naive_stage(s, t, 1.0) for k, (s, t) in enumerate(zip(sources, targets))]
    assert [v.item() for v in got] == pytest.approx(expected, rel=1e-12)


def test_gradient_reaches_source_only():
    s = torch.randn(2, 3, 2, 2, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, requires_grad=True)
    ab_stage_loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the indicator t > 0 is not differentiable


# ---- connectors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "s_shape, t_shape, conv_type, kernel",
    [
        ((16, 8, 8), (16, 8, 8), nn.Conv2d, (1, 1)),  # equal shapes: still a 1x1 conv + BN (documented deviation)
        ((8, 8, 8), (12, 8, 8), nn.Conv2d, (1, 1)),
        ((8, 16, 16), (12, 8, 8), nn.Conv2d, (3, 3)),
        ((8, 4, 4), (12, 8, 8), nn.ConvTranspose2d, (4, 4)),
    ],
)
def test_connector_maps_to_teacher_shape(s_shape, t_shape, conv_type, kernel):
    conn = ABConnector(s_shape, t_shape, stage=1)
    assert type(conn.conv) is conv_type and conn.conv.kernel_size == kernel
    assert isinstance(conn.bn, nn.BatchNorm2d) and conn.bn.num_features == t_shape[0]
    out = conn(torch.relu(torch.randn(3, *s_shape)))
    assert out.shape == (3, *t_shape)
    assert (out < 0).any() and (out > 0).any()  # no ReLU: the response can cross the boundary both ways


def test_connector_rejects_unsupported_sizes():
    with pytest.raises(UserError, match=r"ab cannot connect the student's stage 2 map \(8, 2, 2\) to the teacher's"):
        ABConnector((8, 2, 2), (12, 8, 8), stage=2)


# ---- params, stage switch ------------------------------------------------------------------------------------
def test_defaults_registry_and_validation():
    assert ABParams() == ABParams(ce_weight=1.0, ab_weight=0.0, margin=1.0, init_epochs=30)
    assert method_registry()["ab"].cls is AB
    with pytest.raises(UserError, match="ab.init_epochs"):
        ABParams(init_epochs=-1)
    with pytest.raises(UserError, match="ab.init_epochs"):
        ABParams(init_epochs=2.5)
    with pytest.raises(UserError, match="ab.margin"):
        ABParams(margin=-1.0)
    assert [in_init_stage(e, 30) for e in (1, 30, 31)] == [True, True, False]
    assert not in_init_stage(1, 0)


def build(teacher: str = "resnet8x4", student: str = "resnet8", **kw) -> AB:
    torch.manual_seed(0)
    d = AB(create_model(student, K), create_model(teacher, K), ABParams(**kw), DataInfo(num_classes=K))
    d.train()
    return d


def test_stage_switch_at_init_epochs():
    d = build("resnet8", "resnet8", init_epochs=2)
    batch = make_batch(B, K)
    assert set(d.forward_train(batch, 1).losses) == {"ab_init"}
    assert set(d.forward_train(batch, 2).losses) == {"ab_init"}
    out = d.forward_train(batch, 3)
    assert set(out.losses) == {"ce"} and out.stats == {}
    d.params.ab_weight = 0.5
    assert set(d.forward_train(batch, 3).losses) == {"ce", "ab"}
    assert set(build("resnet8", "resnet8", init_epochs=0).forward_train(batch, 1).losses) == {"ce"}


# ---- training steps on real zoo pairs ------------------------------------------------------------------------
# resnet8x4 -> resnet8: channels differ at every stage (1x1 connectors); vgg8 -> MobileNetV2 adds a student map
# half the teacher's size (transposed-conv connector) and 4 stages after the stem.
@pytest.mark.parametrize("teacher_name, student_name", [("resnet8x4", "resnet8"), ("vgg8", "MobileNetV2")])
def test_init_step_trains_student_features_and_connectors(teacher_name, student_name):
    d = build(teacher_name, student_name)
    student, teacher = d.student, d.teacher
    teacher.requires_grad_(True)  # even so, no gradient may reach it
    before = teacher_snapshot(teacher)
    batch = make_batch(B, K)
    out = d.forward_train(batch, 1)
    assert set(out.losses) == {"ab_init"} and out.losses["ab_init"].dim() == 0
    assert torch.isfinite(out.losses["ab_init"]) and out.losses["ab_init"].item() > 0
    assert out.logits.shape == (B, K)
    # the loss is the weighted hinge of connector(student stage) against the teacher's sign pattern, recomputed
    # by the element loop (connectors in train mode: the same batch statistics)
    x = batch.augment.standard(batch.images)
    with torch.no_grad():
        s_stages, t_stages = student.forward_features(x).stages[1:], teacher.forward_features(x).stages[1:]
        sources = [conn(f) for conn, f in zip(d.connectors, s_stages)]
    n = len(sources)
    expected = sum(2.0 ** (k - n + 1) * 3 / 1000 * naive_stage(s, t, 1.0)
                   for k, (s, t) in enumerate(zip(sources, t_stages)))
    assert out.losses["ab_init"].item() == pytest.approx(expected, rel=1e-5)
    assert set(out.stats) == {f"ab_stage{k + 1}" for k in range(n)} | {"ab_agree"}
    out.total.backward()
    # no CE in the init stage: exactly the parameters the stage maps depend on get a gradient (not the classifier,
    # nor MobileNetV2's 1x1 conv after its last stage)
    params = list(student.parameters())
    reach = torch.autograd.grad(sum(f.sum() for f in student.forward_features(x).stages), params, allow_unused=True)
    assert all(p.grad is None for p in student.classifier_layer.parameters())
    assert all((p.grad is None) == (r is None) for p, r in zip(params, reach))
    assert_grads_reach(d.connectors, nonzero=True)
    assert d.extra_parameters() == sum(p.numel() for p in d.connectors.parameters())
    assert_teacher_untouched(teacher, before)


def test_main_stage_trains_student_only_and_sgd_skips_untouched_parameters():
    d = build()
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    classifier = [p.detach().clone() for p in d.student.classifier_layer.parameters()]
    # init step: the classifier has no gradient, so SGD (weight decay included) leaves it exactly as it was
    opt.zero_grad(set_to_none=True)
    d.forward_train(make_batch(B, K, 0), 1).total.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(classifier, d.student.classifier_layer.parameters()))
    connectors = [p.detach().clone() for p in d.connectors.parameters()]
    # main stage with the default ab_weight = 0: CE only, the connectors are frozen (momentum and decay included)
    opt.zero_grad(set_to_none=True)
    out = d.forward_train(make_batch(B, K, 1), 31)
    assert set(out.losses) == {"ce"} and torch.isfinite(out.losses["ce"])
    out.total.backward()
    assert all(p.grad is not None for p in d.student.parameters())
    assert all(p.grad is None for p in d.connectors.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(connectors, d.connectors.parameters()))
    assert all(p.grad is None for p in d.teacher.parameters())


def test_unequal_stage_counts_are_rejected_naming_both_lists():
    with pytest.raises(UserError, match=r"ab needs as many stages .* student \[\(12, 16, 16\)"):
        AB(create_model("MobileNetV2", K), create_model("resnet8", K), ABParams(), DataInfo(num_classes=K))


# ---- configs -------------------------------------------------------------------------------------------------
def test_configs_cover_all_pairs_with_extended_schedule():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    from configs_init_baselines import configs
    from make_configs import PAIRS

    cfgs = {k: v for k, v in configs().items() if k.startswith("cifar100/ab/")}
    assert len(cfgs) == len(PAIRS) == 13
    for path, cfg in cfgs.items():
        assert cfg["method"] == "ab" and path == f"cifar100/ab/{cfg['teacher']['arch']}-{cfg['student']['arch']}.yaml"
        assert ABParams(**cfg["ab"]) == ABParams()
        assert cfg["train"]["epochs"] == 270 and cfg["train"]["milestones"] == [180, 210, 240]
        assert cfg["train"]["lr"] in (0.05, 0.01)
