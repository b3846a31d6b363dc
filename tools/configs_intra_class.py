"""Configs of `intra_class` (Yuan et al. 2025): intra-class contrastive teachers for the six CIFAR-100 teacher
architectures, then ordinary KD students from those teachers for the 13 pairs of the PCKD tables.

Stage 1 (``cifar100/teachers_intra_class/<arch>.yaml``) trains the network as the run's ``student`` with
``method: intra_class`` on the usual CIFAR teacher recipe (240 epochs, x0.1 after 150/180/210), writing to
``runs/cifar100/teachers_intra_class/<arch>``. Stage 2 (``cifar100/intra_class_kd/<teacher>-<student>.yaml``)
is the KD baseline's recipe with ``teacher.checkpoint`` pointing at the stage-1 run. Every ``intra_class.*``
value is the project's assumption (docs/defaults.md), written out so a config shows what it ran.

Seed 002's other datasets get stage-1 teachers on the same recipe: ``cifar10/teachers_intra_class/<arch>.yaml``
(the six architectures), ``tinyimagenet/teachers_intra_class/<arch>.yaml`` (the six CIFAR architectures on
TinyImageNet resized once to 32x32, ``data.resize: 32``: the paper's TinyImageNet resolution and networks are
unknown) and ``imagenet/teachers_intra_class/resnet34.yaml`` (torchvision ResNet34 on the ImageNet base recipe).
On ImageFolder data the loader workers make the two views, each with its own crop and flip.
"""

from __future__ import annotations

from typing import Any

from make_configs import PAIRS, TEACHERS, pair_name, student_config, student_lr, teacher_ckpt

METHOD = "intra_class"

# docs/defaults.md "Intra-class contrastive teacher defaults"; none of these is published by the paper.
INTRA_CLASS_SECTION: dict[str, Any] = {"ce_weight": 1.0, "contrast_weight": 0.1, "tau": 0.5, "delta": 0.5,
                                       "margin": "gate", "queue_size": 32}
# Same KD recipe as configs/cifar100/kd/*, so the only difference from that baseline is the teacher.
KD_SECTION: dict[str, Any] = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}


def teacher_configs() -> dict[str, dict[str, Any]]:
    """``cifar100/teachers_intra_class/<arch>.yaml`` for each CIFAR-100 teacher architecture."""
    out: dict[str, dict[str, Any]] = {}
    for arch in TEACHERS:
        out[f"cifar100/teachers_{METHOD}/{arch}.yaml"] = {
            "_base_": "cifar100/base.yaml", "method": METHOD, "student": {"arch": arch},
            "train": {"lr": student_lr(arch)}, METHOD: dict(INTRA_CLASS_SECTION),
            # The trained network's last.pt is what teacher_ckpt(arch, "intra_class") names.
            "output_dir": teacher_ckpt(arch, METHOD).rsplit("/", 1)[0],
        }
    return out


def student_configs() -> dict[str, dict[str, Any]]:
    """``cifar100/intra_class_kd/<teacher>-<student>.yaml``: vanilla KD from the intra-class teacher."""
    out: dict[str, dict[str, Any]] = {}
    for teacher, student in PAIRS:
        name = pair_name(teacher, student)
        out[f"cifar100/{METHOD}_kd/{name}.yaml"] = student_config(
            "kd", teacher, student, dict(KD_SECTION), f"{METHOD}_kd/{name}", teacher_method=METHOD)
    return out


SEED_002_DATA: dict[str, dict[str, Any]] = {
    "cifar10": {"name": "cifar10", "root": "./data"},
    "tinyimagenet": {"name": "tinyimagenet", "root": "./data", "resize": 32},
}


def other_data_teacher_configs() -> dict[str, dict[str, Any]]:
    """Stage-1 teachers on CIFAR-10, TinyImageNet and ImageNet (with their base files)."""
    from configs_imagenet import imagenet_base
    from make_configs import all_configs_base

    out: dict[str, dict[str, Any]] = {}
    for data, section in SEED_002_DATA.items():
        base = all_configs_base()
        out[f"{data}/base.yaml"] = {**base, "data": dict(section)}
        for arch in TEACHERS:
            out[f"{data}/teachers_{METHOD}/{arch}.yaml"] = {
                "_base_": f"{data}/base.yaml", "method": METHOD, "student": {"arch": arch},
                "train": {"lr": student_lr(arch)}, METHOD: dict(INTRA_CLASS_SECTION),
                "output_dir": f"runs/{data}/teachers_{METHOD}/{arch}"}
    imagenet = {k: v for k, v in imagenet_base().items() if k not in ("teacher", "student")}
    out[f"imagenet/teachers_{METHOD}/resnet34.yaml"] = {
        **imagenet, "method": METHOD, "student": {"arch": "torchvision.resnet34"}, METHOD: dict(INTRA_CLASS_SECTION),
        "output_dir": f"runs/imagenet/teachers_{METHOD}/resnet34"}
    return out


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> config, for tools/make_configs.py."""
    return {**teacher_configs(), **student_configs(), **other_data_teacher_configs()}
