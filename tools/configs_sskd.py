"""Configs of SSKD (``sskd``; xuguodong03/SSKD) for the 13 CIFAR-100 pairs and ImageNet ResNet34 -> ResNet18.

CIFAR-100 (``configs/cifar100/sskd/e240_step/<pair>.yaml``): the released ``student.py`` first trains the
teacher's self-supervision head for ``--t-epoch 60`` epochs (lr ``--t-lr 0.05``, x0.1 after 30 and 45), then the
student for ``--epoch 240`` (lr 0.05, 0.01 for MobileNetV2/ShuffleNet students as in ``command.sh``, x0.1 after
150/180/210, batch 64, SGD momentum 0.9, wd 5e-4, both stages). Here the teacher stage lives inside the method
(``sskd.init_epochs``, with its own lr schedule), so ``train.epochs`` is 60 + 240 = 300 and the run's milestones
are the student stage's, moved by 60: 210/240/270. The folder is named after the student stage's schedule.
``command.sh`` has no ResNet110 rows; they use lr 0.05 like every ResNet student.

ImageNet (``configs/imagenet/sskd/resnet34-resnet18.yaml``): the authors released no ImageNet recipe, so the
student stage is the project's PCKD ImageNet base (``imagenet/base.yaml``: 100 epochs, lr 0.1, x0.1 after
30/60/90, batch 256, wd 1e-4) after the released teacher stage (60 epochs, lr 0.05, 30/45), i.e. 160 epochs
with milestones 90/120/150.
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, pair_name, student_config

SCHEDULE = "e240_step"  # the student stage's recipe (configs/cifar100/base.yaml)
TEACHER_STAGE = 60  # --t-epoch


def sskd_section() -> dict[str, Any]:
    """The ``sskd.*`` section: the released student.py's argparse defaults, written out."""
    return {"ce_weight": 0.1, "kd_weight": 0.9, "tf_weight": 2.7, "ss_weight": 10.0,
            "kd_temperature": 4.0, "tf_temperature": 4.0, "ss_temperature": 0.5,
            "ratio_tf": 1.0, "ratio_ss": 0.75,
            "init_epochs": TEACHER_STAGE, "init_lr": 0.05, "init_milestones": [30, 45], "init_lr_decay": 0.1}


def shifted_train(epochs: int, milestones: list[int]) -> dict[str, Any]:
    """``train.epochs`` and ``train.milestones`` of a student stage of ``epochs`` that follows the teacher stage."""
    return {"epochs": TEACHER_STAGE + epochs, "milestones": [TEACHER_STAGE + m for m in milestones]}


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config, for tools/make_configs.py."""
    out: dict[str, dict[str, Any]] = {}
    for teacher, student in PAIRS:
        name = f"sskd/{SCHEDULE}/{pair_name(teacher, student)}"
        out[f"cifar100/{name}.yaml"] = student_config("sskd", teacher, student, sskd_section(), name,
                                                      train=shifted_train(240, [150, 180, 210]))
    out["imagenet/sskd/resnet34-resnet18.yaml"] = {
        "_base_": "imagenet/base.yaml", "method": "sskd", "sskd": sskd_section(),
        "train": shifted_train(100, [30, 60, 90]),
        "output_dir": "runs/imagenet/sskd/resnet34-resnet18"}
    return out
