"""The configs of the recent logit baselines: 13 pairs each, the schedule named in the path, the authors' values."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.config import load_config

ROOT = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
         ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
         ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
         ("wrn_40_2", "ShuffleV1")]
SMALL_LR = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}


def _check_pair(method: str, teacher: str, student: str, folder: str | None = None):
    folder = folder or method
    path = ROOT / folder / "e240_step" / f"{teacher}-{student}.yaml"
    cfg = load_config(path)
    assert cfg.method == method and (cfg.teacher.arch, cfg.student.arch) == (teacher, student)
    # The schedule the folder names is the one the config trains with, and the run folder names it too.
    assert (cfg.train.epochs, cfg.train.milestones, cfg.train.batch_size) == (240, [150, 180, 210], 64)
    assert cfg.train.lr == (0.01 if student in SMALL_LR else 0.05)
    assert cfg.output_dir == f"runs/cifar100/{folder}/e240_step/{teacher}-{student}"
    return cfg


def test_every_method_has_exactly_the_13_pairs():
    for method in ("dist", "nkd", "wttm", "ctkd", "ctkd_instance", "ctkd_dkd", "kd_dot"):
        files = sorted(p.name for p in (ROOT / method).rglob("*.yaml"))
        assert files == sorted(f"{t}-{s}.yaml" for t, s in PAIRS), method


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_dist_configs(teacher, student):
    cfg = _check_pair("dist", teacher, student)
    d = cfg.dist
    assert (d.ce_weight, d.kd_weight, d.beta, d.gamma, d.temperature) == (1.0, 2.0, 1.0, 1.0, 4.0)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_nkd_configs(teacher, student):
    n = _check_pair("nkd", teacher, student).nkd
    assert (n.ce_weight, n.target_weight, n.gamma, n.temperature) == (1.0, 1.0, 3.5, 3.0)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_wttm_configs(teacher, student):
    w = _check_pair("wttm", teacher, student).wttm
    assert (w.ce_weight, w.wttm_weight, w.exponent) == (1.0, 4.0, 0.2)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_ctkd_configs(teacher, student):
    c = _check_pair("ctkd", teacher, student).ctkd
    assert (c.ce_weight, c.kd_weight, c.t_start, c.t_range, c.init_raw) == (0.1, 0.9, 1.0, 20.0, 1.0)
    assert (c.lambda_min, c.lambda_max, c.lambda_loops) == (0.0, 1.0, 10)
    assert (str(c.temperature_module), c.dkd_weight) == ("global", 0.0)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_ctkd_instance_configs(teacher, student):
    c = _check_pair("ctkd", teacher, student, folder="ctkd_instance").ctkd
    assert (str(c.temperature_module), c.instance_hidden, c.ce_weight, c.kd_weight, c.dkd_weight) == (
        "instance", 128, 0.1, 0.9, 0.0)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_ctkd_dkd_configs(teacher, student):
    # The authors' DKD line: --distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2, global temperature.
    c = _check_pair("ctkd", teacher, student, folder="ctkd_dkd").ctkd
    assert (c.ce_weight, c.kd_weight, c.dkd_weight, c.dkd_alpha, c.dkd_beta) == (1.0, 0.0, 1.0, 1.0, 2.0)
    assert (str(c.temperature_module), c.t_start, c.t_range, c.lambda_loops) == ("global", 1.0, 20.0, 10)


@pytest.mark.parametrize("teacher, student", PAIRS)
def test_kd_dot_configs(teacher, student):
    cfg = _check_pair("kd", teacher, student, folder="kd_dot")
    assert (str(cfg.train.optimizer), cfg.train.dot_delta, cfg.train.momentum) == ("dot", 0.075, 0.9)
    assert (cfg.kd.temperature, cfg.kd.ce_weight, cfg.kd.kd_weight) == (4.0, 0.1, 0.9)
