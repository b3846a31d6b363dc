"""Configs of `ckd` (sample-wise contrastive KD, Zhu et al. 2024): the 11 CIFAR-100 pairs of its released recipe
in two schedule flavours, plus ImageNet ResNet34 -> ResNet18.

Per-pair loss weight, temperature and batch size follow the released configs (docs/methods/ckd.md, docs/defaults.md
"CKD defaults"). The two flavours differ only in the schedule, and each lives under its own folder
(``configs/cifar100/ckd/<flavour>/``) and writes to its own ``runs/cifar100/ckd/<flavour>/`` so that results
of the two recipes can never end up in one table by accident:

* ``e480_cosine``: the released recipe, 480 epochs, cosine lr (T_max = epochs, eta_min = 0, stepped per epoch);
* ``e240_step``: the common CIFAR recipe of PCKD and the baselines, 240 epochs, lr x0.1 after 150/180/210.
"""

from __future__ import annotations

from typing import Any

from configs_imagenet import TEACHER_WEIGHTS, imagenet_base
from make_configs import pair_name, student_config

# (teacher, student) -> (w_CL, tau, batch size) of the released CIFAR-100 configs (docs/methods/ckd.md).
CKD_PAIRS: dict[tuple[str, str], tuple[float, float, int]] = {
    ("resnet56", "resnet20"): (10.0, 1.0, 64),
    ("resnet110", "resnet32"): (10.0, 1.0, 64),
    ("resnet32x4", "resnet8x4"): (100.0, 1.0, 64),
    ("wrn_40_2", "wrn_16_2"): (100.0, 1.0, 64),
    ("wrn_40_2", "wrn_40_1"): (50.0, 2.0, 32),
    ("vgg13", "vgg8"): (100.0, 1.0, 64),
    ("resnet32x4", "ShuffleV1"): (100.0, 1.0, 32),
    ("resnet32x4", "ShuffleV2"): (100.0, 1.0, 64),
    ("ResNet50", "MobileNetV2"): (100.0, 1.0, 32),
    ("vgg13", "MobileNetV2"): (50.0, 2.0, 32),
    ("wrn_40_2", "ShuffleV1"): (100.0, 1.0, 32),
}

# Flavour folder name -> the train.* keys that define its schedule (lr and batch come from the pair).
CKD_FLAVOURS: dict[str, dict[str, Any]] = {
    "e480_cosine": {"epochs": 480, "schedule": "cosine"},
    "e240_step": {"epochs": 240, "schedule": "multistep", "milestones": [150, 180, 210], "lr_decay": 0.1},
}

# ImageNet ResNet34 -> ResNet18 (released configs: w 10, tau 1, 200 epochs cosine, lr 0.2, batch 512, wd 1e-4).
IMAGENET_TRAIN: dict[str, Any] = {"epochs": 200, "schedule": "cosine", "lr": 0.2, "batch_size": 512,
                                  "weight_decay": 1e-4}
IMAGENET_FLAVOUR = "e200_cosine"


def ckd_section(weight: float, tau: float) -> dict[str, Any]:
    """The ``ckd.*`` section: released-code CE weight and one-directional teacher/student negatives."""
    return {"ce_weight": 1.0, "weight": weight, "tau": tau, "symmetric": False, "negatives": "teacher_student"}


def cifar_configs() -> dict[str, dict[str, Any]]:
    """``cifar100/ckd/<flavour>/<teacher>-<student>.yaml`` for every pair and both flavours."""
    out: dict[str, dict[str, Any]] = {}
    for flavour, schedule in CKD_FLAVOURS.items():
        for (teacher, student), (weight, tau, batch) in CKD_PAIRS.items():
            name = pair_name(teacher, student)
            out[f"cifar100/ckd/{flavour}/{name}.yaml"] = student_config(
                "ckd", teacher, student, ckd_section(weight, tau), f"ckd/{flavour}/{name}",
                train={**schedule, "batch_size": batch})
    return out


def imagenet_config() -> dict[str, Any]:
    """ResNet34 -> ResNet18 on top of ``imagenet/base.yaml`` (written by tools/configs_imagenet.py)."""
    base = imagenet_base()
    return {
        "_base_": "imagenet/base.yaml",
        "method": "ckd",
        "teacher": {"arch": base["teacher"]["arch"], "weights": TEACHER_WEIGHTS},
        "student": dict(base["student"]),
        "train": dict(IMAGENET_TRAIN),
        "ckd": ckd_section(10.0, 1.0),
        "output_dir": f"runs/imagenet/ckd/{IMAGENET_FLAVOUR}/resnet34-resnet18",
    }


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config, for tools/make_configs.py."""
    out = cifar_configs()
    out[f"imagenet/ckd/{IMAGENET_FLAVOUR}/resnet34-resnet18.yaml"] = imagenet_config()
    return out
