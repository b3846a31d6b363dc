"""Probe settings of the PCKD paper's Table IV (``configs/transfer/<target>.yaml``): a ResNet20 distilled from a
ResNet110 on CIFAR-100 (any ``configs/cifar100/<method>/resnet110-resnet20.yaml`` run; the Student row is the
scratch resnet20, the Teacher row the resnet110 teacher) is frozen and a linear classifier is trained on its
features for STL-10 or TinyImageNet, both resized to 32x32 as in CRD's protocol, the paper's reference:

    pckd probe --config configs/transfer/stl10.yaml runs/cifar100/<method>/resnet110-resnet20/last.pt

The files hold ``data.*`` and ``probe.*`` keys only (the backbone comes from the checkpoint). The probe's own
settings are the defaults documented in docs/transfer.md; normalisation with CIFAR-100's statistics, which the
frozen BatchNorms saw in training.
"""

from __future__ import annotations

from typing import Any

TARGETS = {"stl10": "./data", "tinyimagenet": "./data"}  # data.root holds stl10_binary/, tiny-imagenet-200/


def configs() -> dict[str, dict[str, Any]]:
    """Relative path under configs/ -> probe settings, for tools/make_configs.py."""
    return {f"transfer/{name}.yaml": {"data": {"name": name, "root": root, "resize": 32},
                                      "probe": {"normalization": "cifar100"}}
            for name, root in TARGETS.items()}
