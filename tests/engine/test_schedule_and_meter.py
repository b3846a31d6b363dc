"""The learning-rate schedule and the device-side step meter, against values written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pckd.config import load_config
from pckd.engine.build import EpochSchedule, lr_factor
from pckd.engine.metrics import StepMeter


def _train(*overrides: str):
    return load_config(None, list(overrides)).train


def test_multistep_decays_after_each_milestone() -> None:
    cfg = _train("train.milestones=[2,4]", "train.lr_decay=0.1", "train.epochs=6")
    assert [lr_factor(e, cfg) for e in range(1, 7)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_follows_cosine_annealing_stepped_per_epoch() -> None:
    cfg = _train("train.schedule=cosine", "train.epochs=4")
    expected = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]  # 1, 0.854, 0.5, 0.146
    assert [lr_factor(e, cfg) for e in range(1, 5)] == pytest.approx(expected)
    assert expected == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_warmup_ramps_linearly_then_hands_over() -> None:
    cfg = _train("train.warmup_epochs=4", "train.milestones=[5]", "train.epochs=6")
    assert [lr_factor(e, cfg) for e in range(1, 7)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.1])


def test_epoch_schedule_sets_every_group_from_its_own_base() -> None:
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}], lr=0.1)
    schedule = EpochSchedule(opt, _train("train.milestones=[1]"))
    assert schedule.set_epoch(2) == pytest.approx(0.005)  # the logged rate: train.lr (0.05) x 0.1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.001])
    assert schedule.state_dict()["schedule"] == "multistep" and type(schedule.state_dict()["schedule"]) is str


def test_step_meter_means_accuracy_and_first_bad_step() -> None:
    meter = StepMeter(torch.device("cpu"))
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])  # predicts 0 and 2
    meter.update({"ce": torch.tensor(1.0)}, logits, torch.tensor([0, 1]), step=10)
    meter.update({"ce": torch.tensor(3.0)}, logits, torch.tensor([0, 2]), step=11)
    means, bad = meter.read()
    assert means["ce"] == pytest.approx(2.0) and bad == {}
    assert means["top1"] == pytest.approx(75.0)  # 3 of 4 right
    assert means["top5"] == pytest.approx(100.0)  # 3 classes: every label is in the top 5
    meter.update({"ce": torch.tensor(float("nan"))}, logits, torch.tensor([0, 2]), step=12)
    meter.update({"ce": torch.tensor(float("inf"))}, logits, torch.tensor([0, 2]), step=13)
    _, bad = meter.read()
    assert bad == {"ce": 2} and meter.first_nonfinite() == {"ce": 12}
    meter.reset()
    assert meter.read() == ({}, {})


def test_fine_tuning_groups_freeze_then_scale_the_backbone() -> None:
    from pckd.data.info import DataInfo
    from pckd.engine.build import BACKBONE_GROUP, parameter_groups
    from pckd.methods.ce import CEParams, CrossEntropy
    from pckd.models import create_model

    train = _train("train.freeze_backbone_epochs=2", "train.backbone_lr_scale=0.1", "train.lr=0.05",
                   "train.milestones=[100]")
    distiller = CrossEntropy(create_model("resnet8", 10), None, CEParams(), DataInfo(num_classes=10))
    groups = parameter_groups(distiller, train)
    assert [g["name"] for g in groups] == [BACKBONE_GROUP, "classifier and heads"]
    fc = {id(p) for p in distiller.student.fc.parameters()}
    assert {id(p) for p in groups[1]["params"]} == fc and not fc & {id(p) for p in groups[0]["params"]}
    opt = torch.optim.SGD(groups, lr=0.05)
    schedule = EpochSchedule(opt, train)
    schedule.set_epoch(2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.05])  # frozen backbone
    schedule.set_epoch(3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.05])
    assert len(parameter_groups(distiller, _train())) == 1  # no recipe: one group, as before
