"""CIFAR VGGs with batch norm (vgg8, vgg11, vgg13, vgg16, vgg19) and a single Linear classifier.

Parameter names follow RepDistiller's ``vgg.py`` (its ``vgg*_bn`` variants, which the zoo names refer to):
five conv blocks ``block0..block4``; each block ends without ReLU so the pre-activation stays reachable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from pckd.models.cifar._base import CifarNet, init_fan_out_normal
from pckd.models.interface import FeatureOutput

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(widths: list[int], cin: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(cin, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    return nn.Sequential(*layers[:-1])  # the caller applies the last ReLU


class CifarVGG(CifarNet):
    """VGG-BN with max-pools between the first four blocks and global average pooling at the end."""

    _classifier_attr = "classifier"

    def __init__(self, cfg: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        cins = [3] + [widths[-1] for widths in cfg[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(widths, cin) for widths, cin in zip(cfg, cins)
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        init_fan_out_normal(self, linear_std=0.01)

    def forward_features(self, x: Tensor) -> FeatureOutput:
        # The reference pools before block4 only for 64-pixel inputs (Tiny-ImageNet); 32 -> 4x4 at block4.
        pool_before_last = x.shape[2] >= 64
        x = F.relu(self.block0(x))
        stages = [x]
        for i, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            if i < 3 or pool_before_last:
                x = self.pool(x)
            x = F.relu(block(x))
            stages.append(x)
        pooled = x.mean(dim=(2, 3))
        return FeatureOutput(stages, pooled, self.classifier(pooled))


def _make(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 100) -> CifarVGG:
        return CifarVGG(CONFIGS[name], num_classes)

    build.__doc__ = f"CIFAR {name} with batch norm."
    return build


vgg8 = _make("vgg8")
vgg11 = _make("vgg11")
vgg13 = _make("vgg13")
vgg16 = _make("vgg16")
vgg19 = _make("vgg19")

BUILDERS = {"vgg8": vgg8, "vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg19": vgg19}
