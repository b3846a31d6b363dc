"""Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2), pre-activation blocks.

Parameter names follow RepDistiller's ``wrn.py`` (``block{i}.layer.{j}``, ``convShortcut``). As there, the
stem and stage features are the raw (pre-activation) block outputs; the final bn1+ReLU comes before pooling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from pckd.models.cifar._base import CifarNet, init_fan_out_normal
from pckd.models.interface import FeatureOutput


class PreActBlock(nn.Module):
    """bn-relu-conv-bn-relu-conv with an identity, or a 1x1 projection of the activated input."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Conv2d | None = None
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage; the extra ``layer`` level exists only to keep the reference key names."""

    def __init__(self, count: int, cin: int, cout: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate) for i in range(count)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(CifarNet):
    """WRN-depth-k for 32x32 inputs: depth = 6n+4, widths 16, 16k, 32k, 64k."""

    _classifier_attr = "fc"

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_fan_out_normal(self, linear_std=None)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        x = self.conv1(x)
        stages = [x]
        for block in (self.block1, self.block2, self.block3):
            x = block(x)
            stages.append(x)
        pooled = F.relu(self.bn1(x)).mean(dim=(2, 3))
        return FeatureOutput(stages, pooled, self.fc(pooled))


def _make(depth: int, widen_factor: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 100, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, drop_rate)

    build.__doc__ = f"WRN-{depth}-{widen_factor} for CIFAR."
    return build


wrn_16_1 = _make(16, 1)
wrn_16_2 = _make(16, 2)
wrn_40_1 = _make(40, 1)
wrn_40_2 = _make(40, 2)

BUILDERS = {"wrn_16_1": wrn_16_1, "wrn_16_2": wrn_16_2, "wrn_40_1": wrn_40_1, "wrn_40_2": wrn_40_2}
