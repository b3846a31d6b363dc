"""MobileNetV2 for CIFAR as in RepDistiller's ``mobilenetv2.py``; the zoo's ``MobileNetV2`` is its
``mobile_half`` (expansion 6, width 0.5, stride-2 stem).

Stage features follow the reference: stem, then the outputs of block groups 1, 2, 4 and 6 (linear
bottleneck outputs, so not passed through a ReLU). The pooled vector is the 1280-wide conv2 output.
"""

from __future__ import annotations

from torch import Tensor, nn

from pckd.models.cifar._base import CifarNet, init_fan_out_normal
from pckd.models.interface import FeatureOutput

# (expansion, channels, repeats, first stride) per block group; expansion None means "use T".
_SETTINGS: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# Indices of the block groups after which a stage feature is taken.
_STAGE_ENDS = (1, 2, 4, 6)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        # Indices 0..7 of this Sequential are part of the published key names.
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(CifarNet):
    """MobileNetV2 with expansion ``expansion`` and width multiplier ``width``."""

    _classifier_attr = "classifier.0"

    def __init__(self, expansion: int = 6, width: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, channels, repeats, stride in _SETTINGS:
            cout = int(channels * width)
            group = []
            for i in range(repeats):
                group.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion if t is None else t))
                cin = cout
            self.blocks.append(nn.Sequential(*group))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_fan_out_normal(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        x = self.conv1(x)
        stages = [x]
        for i, group in enumerate(self.blocks):
            x = group(x)
            if i in _STAGE_ENDS:
                stages.append(x)
        pooled = self.conv2(x).mean(dim=(2, 3))
        return FeatureOutput(stages, pooled, self.classifier(pooled))


def MobileNetV2(num_classes: int = 100) -> CifarMobileNetV2:
    """RepDistiller's ``mobile_half``: expansion 6, width 0.5."""
    return CifarMobileNetV2(expansion=6, width=0.5, num_classes=num_classes)


BUILDERS = {"MobileNetV2": MobileNetV2}
