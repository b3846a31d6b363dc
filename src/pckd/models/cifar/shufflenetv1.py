"""ShuffleNet V1 for CIFAR (``ShuffleV1``: groups 3, widths 240/480/960, 4/8/4 blocks), RepDistiller names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pckd.models.cifar._base import CifarNet
from pckd.models.interface import FeatureOutput


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups so the next grouped conv mixes them."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; strided units concatenate an avg-pooled input."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        # The 24-channel stem output is too narrow to split, so the first unit's 1x1 is not grouped.
        self.first_groups = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(CifarNet):
    """ShuffleNet V1 with a 1x1 stem (no down-sampling before the first stage), as in the reference."""

    _classifier_attr = "linear"

    def __init__(self, widths: list[int], num_blocks: list[int], groups: int, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        stages = []
        for width, count in zip(widths, num_blocks):
            # The strided first unit only produces width - cin channels; the pooled input fills the rest.
            units = [ShuffleUnit(cin, width - cin, 2, groups)]
            units += [ShuffleUnit(width, width, 1, groups) for _ in range(count - 1)]
            stages.append(nn.Sequential(*units))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        stages = [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            stages.append(x)
        pooled = x.mean(dim=(2, 3))
        return FeatureOutput(stages, pooled, self.linear(pooled))


def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNet V1, groups 3, widths 240/480/960."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes)


BUILDERS = {"ShuffleV1": ShuffleV1}
