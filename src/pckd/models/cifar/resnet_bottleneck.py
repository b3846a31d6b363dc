"""The CIFAR ResNet50 of RepDistiller's ``resnetv2.py``: bottleneck blocks, 3x3 stem, four stages."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pckd.models.cifar._base import CifarNet, init_kaiming
from pckd.models.interface import FeatureOutput


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus a (projected) identity, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        # An empty Sequential is the identity and adds no keys, as in the reference.
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class BottleneckResNet(CifarNet):
    """Bottleneck ResNet for 32x32 inputs (no max-pool; stages at 32/16/8/4 pixels)."""

    _classifier_attr = "linear"

    def __init__(self, num_blocks: list[int], num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        stages = []
        for planes, count, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for j in range(count):
                blocks.append(Bottleneck(cin, planes, stride if j == 0 else 1))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(cin, num_classes)
        init_kaiming(self)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        pooled = x.mean(dim=(2, 3))
        return FeatureOutput(stages, pooled, self.linear(pooled))


def ResNet50(num_classes: int = 100) -> BottleneckResNet:
    """CIFAR ResNet-50 (bottleneck blocks [3, 4, 6, 3])."""
    return BottleneckResNet([3, 4, 6, 3], num_classes)


BUILDERS = {"ResNet50": ResNet50}
