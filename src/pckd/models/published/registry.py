"""The published teachers pckd knows by name.

The six CIFAR-100 teachers are CRD's (RepDistiller) releases as mdistiller re-publishes them: one archive,
``cifar_teachers.tar``, in the GitHub release ``checkpoints``, each under ``cifar_teachers/<arch>_vanilla/
ckpt_epoch_240.pth``. Their top-1 is the teacher row of the PCKD paper's Tables I/II (the same files). No official
hash or size is published: ``size``/``sha256`` stay None until someone records them, and the cache records the
SHA-256 of what it first fetched instead (``cache.py``). ImageNet teachers are torchvision's, by weights name.
"""

from __future__ import annotations

from dataclasses import dataclass

RELEASE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints"
CIFAR_ARCHIVE = "cifar_teachers.tar"
URL_VARIABLE = "PCKD_TEACHERS_URL"  # a mirror: a base URL or a local folder holding the archive


@dataclass(frozen=True)
class PublishedTeacher:
    """One teacher: ``arch`` is a pckd model name; CIFAR ones come from ``member`` of ``archive``, ImageNet ones
    from torchvision's ``weights``; ``top1`` is the published accuracy (%) on the test/validation set."""

    name: str
    arch: str
    dataset: str
    top1: float
    source: str
    archive: str | None = None
    member: str | None = None
    weights: str | None = None
    size: int | None = None
    sha256: str | None = None


def _cifar(arch: str, top1: float) -> PublishedTeacher:
    return PublishedTeacher(arch, arch, "cifar100", top1, "CRD/RepDistiller, re-released by mdistiller",
                            archive=CIFAR_ARCHIVE, member=f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth")


def _imagenet(arch: str, weights: str, top1: float) -> PublishedTeacher:
    return PublishedTeacher(f"imagenet_{arch}", f"torchvision.{arch}", "imagenet", top1,
                            f"torchvision {arch} {weights}", weights=weights)


TEACHERS: dict[str, PublishedTeacher] = {t.name: t for t in (
    _cifar("resnet56", 72.34),
    _cifar("resnet110", 74.31),
    _cifar("resnet32x4", 79.42),
    _cifar("ResNet50", 79.34),
    _cifar("wrn_40_2", 75.61),
    _cifar("vgg13", 74.64),
    _imagenet("resnet34", "IMAGENET1K_V1", 73.314),  # Table III's teacher (73.31 / 91.42)
    _imagenet("resnet50", "IMAGENET1K_V1", 76.13),
)}
