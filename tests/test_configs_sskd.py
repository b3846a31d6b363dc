"""The SSKD configs: the 13 CIFAR-100 pairs (teacher stage of 60 epochs + the student stage's 240, written out
independently of tools/configs_sskd.py) and ImageNet ResNet34 -> ResNet18 on the PCKD ImageNet base."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.config import load_config
from pckd.methods.sskd import SSKDParams

ROOT = Path(__file__).resolve().parents[1] / "configs"
PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
         ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
         ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
         ("wrn_40_2", "ShuffleV1")]
SMALL_LR = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}  # command.sh: --lr 0.01 for these students


def test_exactly_the_13_pairs():
    files = sorted(p.name for p in (ROOT / "cifar100" / "sskd").rglob("*.yaml"))
    assert files == sorted(f"{t}-{s}.yaml" for t, s in PAIRS)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_cifar_configs_run_the_released_two_stages(teacher, student):
    cfg = load_config(ROOT / "cifar100" / "sskd" / "e240_step" / f"{teacher}-{student}.yaml")
    assert cfg.method == "sskd" and (cfg.teacher.arch, cfg.student.arch) == (teacher, student)
    assert cfg.teacher.checkpoint == f"zoo:{teacher}"
    # 60 teacher-stage epochs, then 240 with the decays at the student stage's 150/180/210
    assert (cfg.train.epochs, cfg.train.milestones, cfg.train.lr_decay) == (300, [210, 240, 270], 0.1)
    assert (cfg.train.batch_size, cfg.train.momentum, cfg.train.weight_decay) == (64, 0.9, 5e-4)
    assert cfg.train.lr == (0.01 if student in SMALL_LR else 0.05)
    assert cfg.output_dir == f"runs/cifar100/sskd/e240_step/{teacher}-{student}"
    s = cfg.sskd
    assert (s.ce_weight, s.kd_weight, s.tf_weight, s.ss_weight) == (0.1, 0.9, 2.7, 10.0)
    assert (s.kd_temperature, s.tf_temperature, s.ss_temperature, s.ratio_tf, s.ratio_ss) == (4.0, 4.0, 0.5, 1.0, 0.75)
    assert (s.init_epochs, s.init_lr, s.init_milestones, s.init_lr_decay) == (60, 0.05, [30, 45], 0.1)
    assert s == SSKDParams()  # the configs write out the method's defaults


def test_imagenet_config_follows_the_pckd_imagenet_base_after_the_teacher_stage():
    cfg = load_config(ROOT / "imagenet" / "sskd" / "resnet34-resnet18.yaml")
    assert cfg.method == "sskd" and (cfg.teacher.arch, cfg.student.arch) == ("torchvision.resnet34",
                                                                             "torchvision.resnet18")
    assert cfg.teacher.weights == "IMAGENET1K_V1" and cfg.data.name == "imagefolder"
    assert (cfg.train.epochs, cfg.train.milestones, cfg.train.lr, cfg.train.batch_size) == (160, [90, 120, 150],
                                                                                           0.1, 256)
    assert cfg.train.weight_decay == 1e-4 and cfg.sskd == SSKDParams()
