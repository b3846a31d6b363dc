"""The shipped `ckd` and `intra_class` configs carry the recipes of methods.md 3.3 and decisions.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# Written out here (not imported from tools/) so a wrong table in the generator fails the test.
# (teacher, student): (w_CL, tau, batch, lr) of the released CKD CIFAR-100 configs.
CKD_RECIPE = {
    ("resnet56", "resnet20"): (10.0, 1.0, 64, 0.05),
    ("resnet110", "resnet32"): (10.0, 1.0, 64, 0.05),
    ("resnet32x4", "resnet8x4"): (100.0, 1.0, 64, 0.05),
    ("wrn_40_2", "wrn_16_2"): (100.0, 1.0, 64, 0.05),
    ("wrn_40_2", "wrn_40_1"): (50.0, 2.0, 32, 0.05),
    ("vgg13", "vgg8"): (100.0, 1.0, 64, 0.05),
    ("resnet32x4", "ShuffleV1"): (100.0, 1.0, 32, 0.01),
    ("resnet32x4", "ShuffleV2"): (100.0, 1.0, 64, 0.01),
    ("ResNet50", "MobileNetV2"): (100.0, 1.0, 32, 0.01),
    ("vgg13", "MobileNetV2"): (50.0, 2.0, 32, 0.01),
    ("wrn_40_2", "ShuffleV1"): (100.0, 1.0, 32, 0.01),
}
TEACHER_ARCHS = ["resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"]
KD_PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
            ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
            ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
            ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]


def _yaml_names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.yaml")}


@pytest.mark.parametrize("flavour", ["e480_cosine", "e240_step"])
def test_ckd_cifar_configs_follow_released_recipe(flavour):
    folder = CONFIGS / "cifar100" / "ckd" / flavour
    assert _yaml_names(folder) == {f"{t}-{s}" for t, s in CKD_RECIPE}
    for (teacher, student), (weight, tau, batch, lr) in CKD_RECIPE.items():
        cfg = load_config(folder / f"{teacher}-{student}.yaml")
        assert cfg.method == "ckd"
        assert (cfg.teacher.arch, cfg.student.arch) == (teacher, student)
        assert cfg.teacher.checkpoint == f"zoo:{teacher}"  # the published teacher (pckd teachers fetch)
        assert (cfg.ckd.weight, cfg.ckd.tau, cfg.ckd.ce_weight) == (weight, tau, 1.0)
        assert (cfg.ckd.symmetric, cfg.ckd.negatives) == (False, "teacher_student")
        assert (cfg.train.batch_size, cfg.train.lr) == (batch, lr)
        assert (cfg.train.momentum, cfg.train.weight_decay) == (0.9, 5e-4)
        if flavour == "e480_cosine":
            assert (cfg.train.epochs, cfg.train.schedule) == (480, "cosine")
        else:
            assert (cfg.train.epochs, cfg.train.schedule) == (240, "multistep")
            assert (cfg.train.milestones, cfg.train.lr_decay) == ([150, 180, 210], 0.1)
        assert cfg.output_dir == f"runs/cifar100/ckd/{flavour}/{teacher}-{student}"


def test_ckd_flavours_never_share_an_output_dir():
    dirs = [load_config(p).output_dir for p in sorted((CONFIGS / "cifar100" / "ckd").rglob("*.yaml"))]
    assert len(dirs) == 22 and len(set(dirs)) == 22


def test_ckd_imagenet_config():
    cfg = load_config(CONFIGS / "imagenet" / "ckd" / "e200_cosine" / "resnet34-resnet18.yaml")
    assert (cfg.method, cfg.teacher.arch, cfg.student.arch) == ("ckd", "torchvision.resnet34", "torchvision.resnet18")
    assert (cfg.teacher.weights, cfg.teacher.checkpoint) == ("IMAGENET1K_V1", None)
    assert (cfg.ckd.weight, cfg.ckd.tau) == (10.0, 1.0)
    assert (cfg.train.epochs, cfg.train.schedule, cfg.train.lr) == (200, "cosine", 0.2)
    assert (cfg.train.batch_size, cfg.train.weight_decay, cfg.train.momentum) == (512, 1e-4, 0.9)
    assert (cfg.data.name, cfg.data.image_size) == ("imagefolder", 224)
    # The KD baseline beside it keeps its own 100-epoch step recipe (mdistiller's r34_r18/kd.yaml: batch 512, lr 0.2).
    kd = load_config(CONFIGS / "imagenet" / "kd" / "resnet34-resnet18.yaml")
    assert (kd.train.epochs, kd.train.schedule, kd.train.lr, kd.train.batch_size) == (100, "multistep", 0.2, 512)


def test_intra_class_teachers_for_six_archs():
    folder = CONFIGS / "cifar100" / "teachers_intra_class"
    assert _yaml_names(folder) == set(TEACHER_ARCHS)
    for arch in TEACHER_ARCHS:
        cfg = load_config(folder / f"{arch}.yaml")
        ce = load_config(CONFIGS / "cifar100" / "teachers" / f"{arch}.yaml")
        assert (cfg.method, cfg.student.arch) == ("intra_class", arch)
        assert cfg.output_dir == f"runs/cifar100/teachers_intra_class/{arch}"
        p = cfg.intra_class
        assert (p.ce_weight, p.contrast_weight, p.tau, p.delta, p.margin, p.queue_size) == (
            1.0, 0.1, 0.5, 0.5, "gate", 32)
        # Same optimisation recipe as the CE teacher it is compared with.
        assert cfg.train == ce.train
        assert (cfg.train.epochs, cfg.train.milestones, cfg.train.batch_size) == (240, [150, 180, 210], 64)


def test_intra_class_students_load_intra_class_teachers():
    folder = CONFIGS / "cifar100" / "intra_class_kd"
    assert _yaml_names(folder) == {f"{t}-{s}" for t, s in KD_PAIRS}
    teacher_dirs = {load_config(p).output_dir
                    for p in (CONFIGS / "cifar100" / "teachers_intra_class").glob("*.yaml")}
    for teacher, student in KD_PAIRS:
        cfg = load_config(folder / f"{teacher}-{student}.yaml")
        baseline = load_config(CONFIGS / "cifar100" / "kd" / f"{teacher}-{student}.yaml")
        assert (cfg.method, cfg.teacher.arch, cfg.student.arch) == ("kd", teacher, student)
        assert cfg.teacher.checkpoint == f"runs/cifar100/teachers_intra_class/{teacher}/last.pt"
        assert str(Path(cfg.teacher.checkpoint).parent) in teacher_dirs
        assert cfg.output_dir == f"runs/cifar100/intra_class_kd/{teacher}-{student}"
        # Identical to the KD baseline except for the teacher's checkpoint.
        assert cfg.train == baseline.train and cfg.kd == baseline.kd
