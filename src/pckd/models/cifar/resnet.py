"""CIFAR ResNets with basic blocks (resnet8 ... resnet110, resnet8x4, resnet32x4).

Three stages at 32/16/8 pixels; parameter names follow RepDistiller's ``resnet.py`` so its teachers load as-is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from pckd.models.cifar._base import CifarNet, init_kaiming
from pckd.models.interface import FeatureOutput


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a (projected) identity, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        # Registration order fixes the state-dict key order: conv1, bn1, conv2, bn2, downsample.
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(CifarNet):
    """ResNet-(6n+2) for 32x32 inputs; ``widths`` = [stem, stage1, stage2, stage3]."""

    _classifier_attr = "fc"

    def __init__(self, depth: int, widths: list[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"basic-block CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        stages = []
        for width, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [BasicBlock(cin if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[3], num_classes)
        init_kaiming(self)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            stages.append(x)
        pooled = x.mean(dim=(2, 3))
        return FeatureOutput(stages, pooled, self.fc(pooled))


def _make(depth: int, widths: list[int]) -> Callable[..., nn.Module]:
    def build(num_classes: int = 100) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes)

    build.__doc__ = f"CIFAR ResNet-{depth} with widths {widths}."
    return build


_THIN = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]
resnet8 = _make(8, _THIN)
resnet14 = _make(14, _THIN)
resnet20 = _make(20, _THIN)
resnet32 = _make(32, _THIN)
resnet44 = _make(44, _THIN)
resnet56 = _make(56, _THIN)
resnet110 = _make(110, _THIN)
resnet8x4 = _make(8, _WIDE)
resnet32x4 = _make(32, _WIDE)

BUILDERS = {
    "resnet8": resnet8,
    "resnet14": resnet14,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet8x4": resnet8x4,
    "resnet32x4": resnet32x4,
}
