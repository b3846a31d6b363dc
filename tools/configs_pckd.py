"""PCKD configs: Tables I and II (full PCKD and "w/o L_KD"), the ablation Tables V-IX, and ImageNet (Table III).

Every table row is a ``method: pckd`` config; rows of one table differ only in the ``pckd.*`` keys that the
row changes (term weights, preview mode, and ``n_rotations``, see :func:`n_rotations`) and in
``train.eval_teacher`` where no term reads the teacher, so two rows stay comparable. The mapping from files to
table rows is in docs/methods/pckd.md. Run ``python tools/make_configs.py`` after editing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from configs_imagenet import TEACHER_WEIGHTS
from make_configs import PAIRS, pair_name, student_config

# docs/defaults.md "PCKD defaults"
CCC_WEIGHT, FA_WEIGHT, CA_WEIGHT, KD_WEIGHT, TEMPERATURE = 0.05, 20.0, 1.0, 1.0, 4.0
GAMMA_DEFAULT, GAMMA_RESNET20 = 1.005, 1.015

CKD_TERMS = ("fa", "ca", "ccc")  # the paper's "CKD" = feature alignment + centre alignment + centre contrast

# Table V (3 pairs), Table VI (2 pairs), Table VIII (3 pairs), Table IX (8 pairs) of the PCKD paper.
TABLE5_PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet110", "resnet20"), ("wrn_40_2", "ShuffleV1")]
TABLE6_PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet110", "resnet20")]
TABLE7_STUDENTS = ["wrn_16_2", "wrn_40_1", "resnet32", "resnet8x4", "vgg8", "ShuffleV1", "ShuffleV2"]
TABLE8_PAIRS = TABLE5_PAIRS
TABLE9_PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet110", "resnet20"), ("resnet110", "resnet32"),
                ("resnet32x4", "resnet8x4"), ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"),
                ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1")]


class Row(NamedTuple):
    """One table row: which loss terms are on and how samples are weighted."""

    name: str  # file name without .yaml, "<row number>_<what>"
    kd: bool
    terms: frozenset[str]  # subset of CKD_TERMS
    preview: str = "off"  # pckd.preview.mode
    on_ce: bool = False


def _row(name: str, kd: bool, terms: str, preview: str = "off", on_ce: bool = False) -> Row:
    return Row(name, kd, frozenset(terms.split()), preview, on_ce)


ALL = " ".join(CKD_TERMS)
TABLE5_ROWS = [
    _row("1_kd", True, ""),
    _row("2_kd_preview", True, "", "preview"),
    _row("3_ckd", False, ALL),
    _row("4_kd_ckd", True, ALL),
    _row("5_ckd_preview", False, ALL, "preview"),  # = PCKD (w/o L_KD)
    _row("6_pckd", True, ALL, "preview"),
]
TABLE6_ROWS = [  # rows 3-7: the assignment of subsets to rows is inferred (docs/methods/pckd.md)
    _row("1_ce", False, ""),
    _row("2_fa", False, "fa"),
    _row("3_ca", False, "ca"),
    _row("4_ccc", False, "ccc"),
    _row("5_ca_ccc", False, "ca ccc"),
    _row("6_fa_ca", False, "fa ca"),
    _row("7_fa_ccc", False, "fa ccc"),
    _row("8_fa_ca_ccc", False, ALL),
]
TABLE7_ROWS = [
    _row("1_ce", False, ""),
    _row("2_ce_preview", False, "", "preview", on_ce=True),
]
TABLE8_ROWS = [  # the other six rows of Table VIII are Table V's rows
    _row("2_kd_focal", True, "", "focal"),
    _row("5_ckd_focal", False, ALL, "focal"),
    _row("8_kd_ckd_focal", True, ALL, "focal"),
]
TABLE9_ROWS = [_row("curriculum", True, ALL, "curriculum")]  # compared with full PCKD, so KD stays on


def gamma(student: str) -> float:
    """Threshold growth: 1.015 for resnet20 students, 1.005 otherwise (docs/defaults.md; an inferred mapping)."""
    return GAMMA_RESNET20 if student == "resnet20" else GAMMA_DEFAULT


def n_rotations(row: Row) -> int:
    """4 rotated copies when a CKD term is on; 1 for rows without any (CE / KD baselines).

    Without FA/CA/CCC the rotated copies would carry no loss and only shift the student's BatchNorm
    statistics, so those rows are the ordinary (one augmented view) CE / KD students.
    """
    return 4 if row.terms else 1


def teacher_used(row: Row) -> bool:
    """Whether any term reads the teacher (KD/FA its outputs, CA/CCC its classifier weights)."""
    return row.kd or bool(row.terms)


def pckd_section(student: str, row: Row) -> dict[str, Any]:
    """The ``pckd`` section of one row; every key a table varies is written out, even at its default."""
    on = row.terms
    return {
        "temperature": TEMPERATURE,
        "ce_weight": 1.0,
        "kd_weight": KD_WEIGHT if row.kd else 0.0,
        "ccc_weight": CCC_WEIGHT if "ccc" in on else 0.0,
        "fa_weight": FA_WEIGHT if "fa" in on else 0.0,
        "ca_weight": CA_WEIGHT if "ca" in on else 0.0,  # skipped by the method when [W|b] shapes differ
        "n_rotations": n_rotations(row),
        "gamma": gamma(student),
        "preview": {"mode": row.preview, "detach": True, "on_ce": row.on_ce},
    }


def _config(teacher: str, student: str, row: Row, run_name: str) -> dict[str, Any]:
    # The method always builds its teacher; where no term reads it, skip the pointless teacher evaluation.
    train = None if teacher_used(row) else {"eval_teacher": False}
    return student_config("pckd", teacher, student, pckd_section(student, row), run_name, train=train)


def teacher_of(student: str) -> str:
    """The teacher of ``student``'s first pair in Tables I/II (Table VII has students only)."""
    return next(t for t, s in PAIRS if s == student)


def imagenet_config() -> dict[str, Any]:
    """Table III: torchvision ResNet34 (weights file by path) -> ResNet18 on the project's ImageNet recipe.

    The paper's ImageNet hyper-parameters are stripped, so the PCKD terms keep their CIFAR-100 values and the
    optimisation is imagenet/base.yaml (the same as the KD baseline); see docs/methods/pckd.md.
    """
    row = TABLE5_ROWS[-1]
    return {
        "_base_": "imagenet/base.yaml",
        "method": "pckd",
        "teacher": {"arch": "torchvision.resnet34", "weights": TEACHER_WEIGHTS},
        "student": {"arch": "torchvision.resnet18"},
        "pckd": pckd_section("torchvision.resnet18", row),
        "output_dir": "runs/imagenet/pckd/resnet34-resnet18",
    }


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config, for every PCKD table."""
    out: dict[str, dict[str, Any]] = {}
    full, wo_kd = TABLE5_ROWS[-1], TABLE5_ROWS[-2]
    for t, s in PAIRS:  # Tables I and II
        name = pair_name(t, s)
        out[f"cifar100/pckd/{name}.yaml"] = _config(t, s, full, f"pckd/{name}")
        out[f"cifar100/pckd/wo_kd/{name}.yaml"] = _config(t, s, wo_kd, f"pckd/wo_kd/{name}")
    tables = [("table5", TABLE5_PAIRS, TABLE5_ROWS), ("table6", TABLE6_PAIRS, TABLE6_ROWS),
              ("table7", [(teacher_of(s), s) for s in TABLE7_STUDENTS], TABLE7_ROWS),
              ("table8", TABLE8_PAIRS, TABLE8_ROWS), ("table9", TABLE9_PAIRS, TABLE9_ROWS)]
    for table, pairs, rows in tables:
        for t, s in pairs:
            for row in rows:
                rel = f"pckd/ablations/{table}/{pair_name(t, s)}/{row.name}"
                out[f"cifar100/{rel}.yaml"] = _config(t, s, row, rel)
    out["imagenet/pckd/resnet34-resnet18.yaml"] = imagenet_config()
    return out
