"""The PCKD configs: every row of Tables I, II, III and V-IX exists, resolves, and sets exactly its terms."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from pckd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SMALL_LR = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}
ALL_TERMS = {"fa", "ca", "ccc"}


def _load(name: str):
    """Import a module of tools/ by name (configs_pckd imports its neighbours by name too)."""
    tools = str(ROOT / "tools")
    sys.path.insert(0, tools)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(tools)


GEN = _load("make_configs")
PCKD_GEN = _load("configs_pckd")


def cfg_of(rel: str):
    return load_config(CONFIGS / rel)


def nonzero_terms(p) -> set[str]:
    """Names of the distillation terms whose weight is > 0."""
    return {k for k in ("kd", "fa", "ca", "ccc") if getattr(p, f"{k}_weight") > 0}


def check_common(cfg, teacher: str, student: str) -> None:
    """Pair, lr rule, gamma rule, the shared CIFAR-100 schedule and the fixed PCKD values."""
    assert (cfg.method, cfg.teacher.arch, cfg.student.arch) == ("pckd", teacher, student)
    assert cfg.teacher.checkpoint == f"zoo:{teacher}"  # the published teacher (pckd teachers fetch)
    assert cfg.train.lr == (0.01 if student in SMALL_LR else 0.05)
    assert cfg.pckd.gamma == (1.015 if student == "resnet20" else 1.005)
    assert (cfg.train.epochs, cfg.train.milestones, cfg.train.batch_size) == (240, [150, 180, 210], 64)
    assert (cfg.train.momentum, cfg.train.weight_decay) == (0.9, 5e-4)
    p = cfg.pckd
    assert (p.temperature, p.ce_weight, p.ccc_tau, p.ccc_base_tau, p.ccc) == (4.0, 1.0, 4.0, 0.07, "supcon")
    assert p.preview.detach is True
    for term, value in (("kd", 1.0), ("ccc", 0.05), ("fa", 20.0), ("ca", 1.0)):
        assert getattr(p, f"{term}_weight") in (0.0, value), term  # on at its decisions.md value, or off


def test_every_pckd_file_is_generated_and_output_dirs_are_unique():
    expected = {rel for rel in GEN.all_configs() if "/pckd/" in rel}
    on_disk = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if "/pckd/" in str(p.relative_to(CONFIGS))}
    assert on_disk == expected
    assert len(expected) == 13 * 2 + 3 * 6 + 2 * 8 + 7 * 2 + 3 * 3 + 8 + 1
    outputs = [cfg["output_dir"] for rel, cfg in PCKD_GEN.configs().items()]
    assert len(outputs) == len(set(outputs))


@pytest.mark.parametrize("teacher,student", GEN.PAIRS, ids=lambda x: x)
def test_tables_1_2_full_and_without_kd(teacher, student):
    name = f"{teacher}-{student}"
    full, wo = cfg_of(f"cifar100/pckd/{name}.yaml"), cfg_of(f"cifar100/pckd/wo_kd/{name}.yaml")
    for cfg in (full, wo):
        check_common(cfg, teacher, student)
        assert cfg.pckd.n_rotations == 4 and cfg.pckd.preview.mode == "preview" and not cfg.pckd.preview.on_ce
        assert cfg.train.eval_teacher
    assert nonzero_terms(full.pckd) == {"kd"} | ALL_TERMS
    assert wo.pckd.kd_weight == 0.0 and nonzero_terms(wo.pckd) == ALL_TERMS
    assert full.output_dir == f"runs/cifar100/pckd/{name}" and wo.output_dir == f"runs/cifar100/pckd/wo_kd/{name}"


def test_gamma_and_lr_rules_on_every_cifar_pckd_config():
    seen = set()
    for path in sorted((CONFIGS / "cifar100" / "pckd").rglob("*.yaml")):
        cfg = load_config(path)
        check_common(cfg, cfg.teacher.arch, cfg.student.arch)
        seen.add((cfg.student.arch, cfg.pckd.gamma, cfg.train.lr))
    assert ("resnet20", 1.015, 0.05) in seen and ("wrn_16_2", 1.005, 0.05) in seen
    assert ("ShuffleV1", 1.005, 0.01) in seen and ("MobileNetV2", 1.005, 0.01) in seen


# (row file, KD on, CKD terms on, preview mode, n_rotations)
TABLE5 = [("1_kd", True, set(), "off", 1), ("2_kd_preview", True, set(), "preview", 1),
          ("3_ckd", False, ALL_TERMS, "off", 4), ("4_kd_ckd", True, ALL_TERMS, "off", 4),
          ("5_ckd_preview", False, ALL_TERMS, "preview", 4), ("6_pckd", True, ALL_TERMS, "preview", 4)]
TABLE6 = [("1_ce", set()), ("2_fa", {"fa"}), ("3_ca", {"ca"}), ("4_ccc", {"ccc"}), ("5_ca_ccc", {"ca", "ccc"}),
          ("6_fa_ca", {"fa", "ca"}), ("7_fa_ccc", {"fa", "ccc"}), ("8_fa_ca_ccc", ALL_TERMS)]
TABLE8 = [("2_kd_focal", True, set(), 1), ("5_ckd_focal", False, ALL_TERMS, 4), ("8_kd_ckd_focal", True, ALL_TERMS, 4)]
TABLE9 = [("wrn_40_2", "wrn_16_2"), ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
          ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1")]
TABLE5_PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet110", "resnet20"), ("wrn_40_2", "ShuffleV1")]
PREVIEW_TWIN = {"2_kd_focal": "2_kd_preview", "5_ckd_focal": "5_ckd_preview", "8_kd_ckd_focal": "6_pckd"}


@pytest.mark.parametrize("teacher,student", TABLE5_PAIRS, ids=lambda x: x)
def test_table5_rows(teacher, student):
    rows = {}
    for row, kd, terms, mode, n_rot in TABLE5:
        cfg = cfg_of(f"cifar100/pckd/ablations/table5/{teacher}-{student}/{row}.yaml")
        check_common(cfg, teacher, student)
        assert nonzero_terms(cfg.pckd) == ({"kd"} if kd else set()) | terms, row
        assert (cfg.pckd.preview.mode, cfg.pckd.n_rotations, cfg.pckd.preview.on_ce) == (mode, n_rot, False), row
        rows[row] = cfg
    # rows 5 and 6 are exactly the Tables I/II "w/o L_KD" and PCKD settings
    name = f"{teacher}-{student}"
    assert rows["5_ckd_preview"].pckd == cfg_of(f"cifar100/pckd/wo_kd/{name}.yaml").pckd
    assert rows["6_pckd"].pckd == cfg_of(f"cifar100/pckd/{name}.yaml").pckd


@pytest.mark.parametrize("teacher,student", TABLE5_PAIRS[:2], ids=lambda x: x)
def test_table6_subsets_have_exactly_their_weights(teacher, student):
    for row, terms in TABLE6:
        cfg = cfg_of(f"cifar100/pckd/ablations/table6/{teacher}-{student}/{row}.yaml")
        check_common(cfg, teacher, student)
        assert nonzero_terms(cfg.pckd) == terms, row
        assert cfg.pckd.kd_weight == 0.0 and cfg.pckd.preview.mode == "off", row
        assert cfg.pckd.n_rotations == (4 if terms else 1), row
        assert cfg.train.eval_teacher == bool(terms), row  # CE only: the teacher is never read


def test_table7_ce_and_ce_times_preview_have_no_distillation_term():
    teachers = {"wrn_16_2": "wrn_40_2", "wrn_40_1": "wrn_40_2", "resnet32": "resnet110", "resnet8x4": "resnet32x4",
                "vgg8": "vgg13", "ShuffleV1": "resnet32x4", "ShuffleV2": "resnet32x4"}
    for student, teacher in teachers.items():
        base = f"cifar100/pckd/ablations/table7/{teacher}-{student}"
        ce, ce_preview = cfg_of(f"{base}/1_ce.yaml"), cfg_of(f"{base}/2_ce_preview.yaml")
        for cfg in (ce, ce_preview):
            check_common(cfg, teacher, student)
            assert nonzero_terms(cfg.pckd) == set() and cfg.pckd.n_rotations == 1
            assert cfg.train.eval_teacher is False
        assert (ce.pckd.preview.mode, ce.pckd.preview.on_ce) == ("off", False)
        assert (ce_preview.pckd.preview.mode, ce_preview.pckd.preview.on_ce) == ("preview", True)


@pytest.mark.parametrize("teacher,student", TABLE5_PAIRS, ids=lambda x: x)
def test_table8_focal_rows(teacher, student):
    for row, kd, terms, n_rot in TABLE8:
        cfg = cfg_of(f"cifar100/pckd/ablations/table8/{teacher}-{student}/{row}.yaml")
        check_common(cfg, teacher, student)
        assert nonzero_terms(cfg.pckd) == ({"kd"} if kd else set()) | terms, row
        assert (cfg.pckd.preview.mode, cfg.pckd.preview.focal_power, cfg.pckd.n_rotations) == ("focal", 2.0, n_rot)
        # the matching preview row of Table V differs only in the weighting mode
        twin = cfg_of(f"cifar100/pckd/ablations/table5/{teacher}-{student}/{PREVIEW_TWIN[row]}.yaml")
        assert {**vars(cfg.pckd), "preview": None} == {**vars(twin.pckd), "preview": None}



def test_table9_curriculum_equals_pckd_but_for_the_weighting():
    for teacher, student in TABLE9:
        cfg = cfg_of(f"cifar100/pckd/ablations/table9/{teacher}-{student}/curriculum.yaml")
        check_common(cfg, teacher, student)
        pckd = cfg_of(f"cifar100/pckd/{teacher}-{student}.yaml")
        assert cfg.pckd.preview.mode == "curriculum"
        assert {**vars(cfg.pckd), "preview": None} == {**vars(pckd.pckd), "preview": None}


def test_imagenet_pckd_uses_the_base_recipe_and_torchvision_teacher():
    imagenet = _load("configs_imagenet")
    cfg = cfg_of("imagenet/pckd/resnet34-resnet18.yaml")
    kd = cfg_of("imagenet/kd/resnet34-resnet18.yaml")
    assert (cfg.method, cfg.teacher.arch, cfg.student.arch) == ("pckd", "torchvision.resnet34", "torchvision.resnet18")
    # the published torchvision teacher, by its weights name (no file path the user has to find)
    assert (cfg.teacher.weights, cfg.teacher.checkpoint) == (imagenet.TEACHER_WEIGHTS, None) == ("IMAGENET1K_V1", None)
    # the project's ImageNet recipe (imagenet/base.yaml); the KD baseline has mdistiller's batch 512 / lr 0.2
    assert cfg.data == kd.data and (kd.train.batch_size, kd.train.lr) == (512, 0.2)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (100, 0.1, 256)
    p = cfg.pckd
    assert nonzero_terms(p) == {"kd"} | ALL_TERMS
    assert (p.kd_weight, p.ccc_weight, p.fa_weight, p.ca_weight, p.gamma, p.n_rotations) == (1.0, 0.05, 20.0, 1.0,
                                                                                             1.005, 4)
    assert p.preview.mode == "preview"
