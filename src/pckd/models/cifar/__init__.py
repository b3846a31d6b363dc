"""The standard CIFAR knowledge-distillation zoo under its RepDistiller/mdistiller names.

``CIFAR_MODELS`` maps each name to ``(family, builder)``; every builder takes ``num_classes``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pckd.models.cifar import (
    mobilenetv2,
    resnet,
    resnet_bottleneck,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from pckd.models.cifar._base import CifarNet

_FAMILIES = {
    "resnet": resnet,
    "resnet_bottleneck": resnet_bottleneck,
    "wrn": wrn,
    "vgg": vgg,
    "mobilenetv2": mobilenetv2,
    "shufflenetv1": shufflenetv1,
    "shufflenetv2": shufflenetv2,
}

CIFAR_MODELS: dict[str, tuple[str, Callable[..., nn.Module]]] = {
    name: (family, builder) for family, module in _FAMILIES.items() for name, builder in module.BUILDERS.items()
}

__all__ = ["CIFAR_MODELS", "CifarNet"]
