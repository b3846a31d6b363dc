"""The `mld` configs: each of the 13 pairs exactly once, in the folder naming its released schedule, with the
values of Jin-Ying/Multi-Level-Logit-Distillation's configs (written out here, independently of the tool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.config import load_config

ROOT = Path(__file__).resolve().parents[1] / "configs"
# configs/cifar100/ours/*.yaml of the release's last commit; the two pairs it lacks take the base 240 epochs
RELEASED_EPOCHS = {
    ("wrn_40_2", "wrn_16_2"): 240, ("wrn_40_2", "wrn_40_1"): 240, ("resnet56", "resnet20"): 240,
    ("resnet110", "resnet20"): 240, ("resnet110", "resnet32"): 240, ("resnet32x4", "resnet8x4"): 240,
    ("vgg13", "vgg8"): 240, ("ResNet50", "vgg8"): 240, ("vgg13", "MobileNetV2"): 480, ("ResNet50", "MobileNetV2"): 480,
    ("wrn_40_2", "ShuffleV1"): 480, ("resnet32x4", "ShuffleV1"): 960, ("resnet32x4", "ShuffleV2"): 960,
}


def test_each_pair_once_in_its_schedules_folder() -> None:
    found = sorted((p.parent.name, p.stem) for p in (ROOT / "cifar100" / "mld").glob("e*_step/*.yaml"))
    expected = sorted((f"e{e}_step", f"{t}-{s}") for (t, s), e in RELEASED_EPOCHS.items())
    assert found == expected


@pytest.mark.parametrize("teacher, student", sorted(RELEASED_EPOCHS))
def test_pair_config(teacher: str, student: str) -> None:
    epochs = RELEASED_EPOCHS[(teacher, student)]
    cfg = load_config(ROOT / "cifar100" / "mld" / f"e{epochs}_step" / f"{teacher}-{student}.yaml")
    assert cfg.method == "mld" and (cfg.teacher.arch, cfg.student.arch) == (teacher, student)
    assert cfg.train.epochs == epochs and cfg.train.milestones == [150, 180, 210]  # 150/180/210 even at 960
    assert (cfg.train.batch_size, cfg.train.weight_decay, cfg.train.momentum) == (64, 5e-4, 0.9)
    assert cfg.train.lr == (0.01 if student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"} else 0.025)
    m = cfg.mld
    assert (m.temperature, m.extra_temperatures, m.ce_weight, m.kd_weight) == (4.0, [3.0, 5.0, 2.0, 6.0], 0.1, 0.9)
    assert m.percentile == 50.0 and m.corrected is False and m.logit_standardize is False
    assert cfg.output_dir == f"runs/cifar100/mld/e{epochs}_step/{teacher}-{student}"


# Sun et al.'s configs/cifar100/mlkd/*.yaml (logit standardisation): 480 epochs, 960 for resnet32x4 -> ShuffleNets
LS_EPOCHS = {pair: 960 if pair[1] in ("ShuffleV1", "ShuffleV2") and pair[0] == "resnet32x4" else 480
             for pair in RELEASED_EPOCHS}


@pytest.mark.parametrize("teacher, student", sorted(RELEASED_EPOCHS))
def test_logit_standardisation_configs(teacher: str, student: str) -> None:
    epochs = LS_EPOCHS[(teacher, student)]
    cfg = load_config(ROOT / "cifar100" / "mld" / "ls" / f"e{epochs}_step" / f"{teacher}-{student}.yaml")
    assert cfg.method == "mld" and cfg.train.epochs == epochs and cfg.train.milestones == [150, 180, 210]
    small = student in {"MobileNetV2", "ShuffleV1", "ShuffleV2"} or (teacher, student) == ("vgg13", "vgg8")
    assert cfg.train.lr == (0.01 if small else 0.025)
    m = cfg.mld
    assert (m.logit_standardize, m.temperature, m.kd_weight, m.ce_weight) == (True, 2.0, 9.0, 0.1)
    assert cfg.output_dir == f"runs/cifar100/mld_ls/e{epochs}_step/{teacher}-{student}"
    assert len(list((ROOT / "cifar100" / "mld" / "ls").rglob("*.yaml"))) == 13


def test_imagenet_config_is_the_released_kd_ours_recipe() -> None:
    cfg = load_config(ROOT / "imagenet" / "mld" / "resnet34-resnet18.yaml")
    assert cfg.method == "mld" and cfg.data.name == "imagefolder"
    assert (cfg.teacher.arch, cfg.teacher.weights, cfg.student.arch) == (
        "torchvision.resnet34", "IMAGENET1K_V1", "torchvision.resnet18")
    t = cfg.train
    assert (t.epochs, t.batch_size, t.lr, t.milestones, t.weight_decay) == (100, 512, 0.1, [30, 60, 90], 1e-4)
    assert (cfg.mld.temperature, cfg.mld.ce_weight, cfg.mld.kd_weight) == (1.0, 0.5, 0.5)
