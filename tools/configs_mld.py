"""Configs of `mld` (Jin et al., CVPR 2023) for the 13 CIFAR-100 pairs of the PCKD tables and ImageNet R34 -> R18.

Every number comes from the latest commit of Jin-Ying/Multi-Level-Logit-Distillation (``configs/cifar100/ours/``,
``configs/imagenet/r34_r18/kd_ours.yaml``, defaults in ``mdistiller/engine/cfg.py``): T 4, CE 0.1, KD 0.9, batch
64, SGD momentum 0.9, wd 5e-4, lr x0.1 after epochs 150, 180 and 210 whatever the length, lr 0.025 (0.01 for
MobileNetV2 and ShuffleNet students). The length differs by pair, so the folder names the schedule
(``configs/cifar100/mld/<schedule>/<pair>.yaml`` writing to ``runs/cifar100/mld/<schedule>/<pair>``) and a
table never mixes runs of different lengths unawares:

* ``e240_step``: the same-family pairs (the release's last commit cut them from 480 to 240 epochs), plus
  resnet110 -> resnet20 and ResNet50 -> vgg8, which have no released config (240, the base recipe: assumption).
* ``e480_step``: ResNet50 -> MobileNetV2, vgg13 -> MobileNetV2, wrn_40_2 -> ShuffleV1.
* ``e960_step``: resnet32x4 -> ShuffleV1 / ShuffleV2.

With logit standardisation (``cifar100/mld/ls/<schedule>/``): Sun et al.'s MLKD set-up (sunshangquan/
logit-standardization-KD: ``tools/train.py --logit-stand --base-temp 2 --kd-weight 9``, so T 2 and KD 9, on
their ``configs/cifar100/mlkd/*.yaml``: 480 epochs, 960 for resnet32x4 -> ShuffleV1/V2, lr 0.025, 0.01 for
MobileNetV2/ShuffleNet students and for vgg13 -> vgg8). ResNet50 -> vgg8 has no config there: 480, lr 0.025.

ImageNet (``imagenet/mld/resnet34-resnet18.yaml``): the release's ``kd_ours.yaml``: T 1, CE 0.5, KD 0.5, batch
512, lr 0.1, 100 epochs, x0.1 at 30/60/90, wd 1e-4, on the project's ImageNet base (torchvision's ResNet34).
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, pair_name, student_config

# (teacher, student) -> epochs; configs/cifar100/ours/*.yaml of the release's last commit (5ee473f).
EPOCHS: dict[tuple[str, str], int] = {
    ("resnet32x4", "ShuffleV1"): 960,  # res32x4_shuv1.yaml
    ("resnet32x4", "ShuffleV2"): 960,  # res32x4_shuv2.yaml
    ("ResNet50", "MobileNetV2"): 480,  # res50_mv2.yaml
    ("vgg13", "MobileNetV2"): 480,  # vgg13_mv2.yaml
    ("wrn_40_2", "ShuffleV1"): 480,  # wrn40_2_shuv1.yaml
}
DEFAULT_EPOCHS = 240  # the six same-family configs; assumed for the two pairs without a released config
SMALL_LR_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}


def schedule(teacher: str, student: str) -> str:
    """The folder naming a pair's released schedule: e240_step, e480_step or e960_step."""
    return f"e{EPOCHS.get((teacher, student), DEFAULT_EPOCHS)}_step"


def mld_section() -> dict[str, Any]:
    """The ``mld.*`` section (the same for every CIFAR-100 pair: KD.* of mdistiller's cfg.py)."""
    return {"temperature": 4.0, "extra_temperatures": [3.0, 5.0, 2.0, 6.0], "ce_weight": 0.1, "kd_weight": 0.9,
            "percentile": 50.0, "corrected": False}


# Sun et al.'s configs/cifar100/mlkd/*.yaml: 480 epochs except these; lr 0.01 for these pairs besides the
# MobileNetV2/ShuffleNet students (vgg13_vgg8.yaml).
LS_EPOCHS = {("resnet32x4", "ShuffleV1"): 960, ("resnet32x4", "ShuffleV2"): 960}
LS_DEFAULT_EPOCHS = 480
LS_SMALL_LR_PAIRS = {("vgg13", "vgg8")}


def mld_ls_section() -> dict[str, Any]:
    """``mld.*`` with logit standardisation: T 2 (--base-temp) and KD 9 (--kd-weight), CE as cfg.py."""
    return {**mld_section(), "temperature": 2.0, "kd_weight": 9.0, "logit_standardize": True}


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config, for tools/make_configs.py."""
    out: dict[str, dict[str, Any]] = {}
    for teacher, student in PAIRS:
        epochs = EPOCHS.get((teacher, student), DEFAULT_EPOCHS)
        name = f"mld/{schedule(teacher, student)}/{pair_name(teacher, student)}"
        lr = 0.01 if student in SMALL_LR_STUDENTS else 0.025
        out[f"cifar100/{name}.yaml"] = student_config(
            "mld", teacher, student, mld_section(), name,
            train={"lr": lr, "epochs": epochs, "milestones": [150, 180, 210]})
        ls_epochs = LS_EPOCHS.get((teacher, student), LS_DEFAULT_EPOCHS)
        ls_name = f"mld_ls/e{ls_epochs}_step/{pair_name(teacher, student)}"
        ls_lr = 0.01 if student in SMALL_LR_STUDENTS or (teacher, student) in LS_SMALL_LR_PAIRS else 0.025
        out[f"cifar100/mld/ls/e{ls_epochs}_step/{pair_name(teacher, student)}.yaml"] = student_config(
            "mld", teacher, student, mld_ls_section(), ls_name,
            train={"lr": ls_lr, "epochs": ls_epochs, "milestones": [150, 180, 210]})
    out["imagenet/mld/resnet34-resnet18.yaml"] = {
        "_base_": "imagenet/base.yaml", "method": "mld",
        "train": {"batch_size": 512, "lr": 0.1, "epochs": 100, "milestones": [30, 60, 90], "weight_decay": 1e-4},
        "mld": {**mld_section(), "temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5},
        "output_dir": "runs/imagenet/mld/resnet34-resnet18"}
    return out
