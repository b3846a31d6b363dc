"""ShuffleNet V2 for CIFAR (``ShuffleV2``: net size 1.0, widths 116/232/464, head 1024), RepDistiller names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.models.cifar._base import CifarNet
from pckd.models.cifar.shufflenetv1 import channel_shuffle
from pckd.models.interface import FeatureOutput


class SplitUnit(nn.Module):
    """Keep half the channels, transform the other half (1x1, 3x3 depthwise, 1x1), concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        keep, work = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(work)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class DownUnit(nn.Module):
    """Two strided branches (depthwise+1x1, and 1x1+depthwise+1x1), each half the output width."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        # left branch: conv1, conv2; right branch: conv3, conv4, conv5 (reference order and names)
        self.conv1 = nn.Conv2d(cin, cin, kernel_size=3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(CifarNet):
    """ShuffleNet V2 with a 1x1 stem; each stage is a DownUnit followed by ``count`` SplitUnits."""

    _classifier_attr = "linear"

    def __init__(self, widths: list[int], num_blocks: list[int], head: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        stages = []
        for width, count in zip(widths, num_blocks):
            stages.append(nn.Sequential(DownUnit(cin, width), *[SplitUnit(width) for _ in range(count)]))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(cin, head, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            stages.append(x)
        pooled = F.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3))
        return FeatureOutput(stages, pooled, self.linear(pooled))


def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNet V2 1.0x: widths 116/232/464, blocks 3/7/3, head 1024."""
    return ShuffleNetV2([116, 232, 464], [3, 7, 3], head=1024, num_classes=num_classes)


BUILDERS = {"ShuffleV2": ShuffleV2}
