"""Configs of `reviewkd` (ReviewKD, Chen et al. CVPR 2021) for the 13 CIFAR-100 pairs of the PCKD paper.

The schedule is the common one of ``cifar100/base.yaml`` (240 epochs, lr x0.1 at 150/180/210, batch 64, wd 5e-4,
lr 0.05, 0.01 for MobileNetV2/ShuffleNet students), which is mdistiller's ReviewKD recipe.

Per-pair HCL weight (``reviewkd_weight``), first source that has the pair:

* mdistiller ``configs/cifar100/reviewkd.yaml``: resnet32x4 -> resnet8x4, 5.0 (its only CIFAR ReviewKD config);
* the authors' ``CIFAR-100/script/reviewKD.sh`` (dvlab-research/ReviewKD, ``--kd-loss-weight``): 5.0 for the
  wrn_40_2 pairs and resnet32x4 -> ShuffleV1, 8.0 for resnet32x4 -> ShuffleV2, 0.6 for resnet56 -> resnet20,
  1.0 for resnet110 -> resnet32;
* neither covers resnet110 -> resnet20, vgg13 -> vgg8, vgg13 -> MobileNetV2, ResNet50 -> MobileNetV2 and
  ResNet50 -> vgg8: they use the defaults (weight 1.0, mdistiller's ``REVIEWKD_WEIGHT`` and the authors'
  ``--kd-loss-weight`` default).

CE weight 1.0, warm-up 20 epochs and the mid-channel cap 512 are the same in both codes for every pair.
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, pair_name, student_config

# (teacher, student) -> reviewkd_weight where a released config/script sets it (sources in the docstring).
REVIEWKD_WEIGHTS: dict[tuple[str, str], float] = {
    ("resnet32x4", "resnet8x4"): 5.0,  # mdistiller configs/cifar100/reviewkd.yaml (and the authors' script)
    ("wrn_40_2", "wrn_16_2"): 5.0,
    ("wrn_40_2", "wrn_40_1"): 5.0,
    ("wrn_40_2", "ShuffleV1"): 5.0,
    ("resnet32x4", "ShuffleV1"): 5.0,
    ("resnet32x4", "ShuffleV2"): 8.0,
    ("resnet56", "resnet20"): 0.6,
    ("resnet110", "resnet32"): 1.0,
}
DEFAULT_WEIGHT = 1.0  # pairs no released config covers


def reviewkd_section(weight: float) -> dict[str, Any]:
    """The ``reviewkd.*`` section of one pair (every field written out, so a config reads on its own)."""
    return {"ce_weight": 1.0, "reviewkd_weight": weight, "warmup_epochs": 20.0, "max_mid_channel": 512}


def configs() -> dict[str, dict[str, Any]]:
    """``cifar100/reviewkd/<teacher>-<student>.yaml`` for the 13 pairs, for tools/make_configs.py."""
    out: dict[str, dict[str, Any]] = {}
    for teacher, student in PAIRS:
        name = pair_name(teacher, student)
        weight = REVIEWKD_WEIGHTS.get((teacher, student), DEFAULT_WEIGHT)
        out[f"cifar100/reviewkd/{name}.yaml"] = student_config(
            "reviewkd", teacher, student, reviewkd_section(weight), f"reviewkd/{name}")
    return out
