"""Shared plumbing of the CIFAR zoo: the FeatureModel surface and the weight initialisations."""

from __future__ import annotations

import math

from torch import Tensor, nn

from pckd.models.interface import FeatureOutput


class CifarNet(nn.Module):
    """Base of every zoo model: ``forward`` returns logits, ``forward_features`` the full FeatureOutput.

    Subclasses implement ``forward_features`` and name their final nn.Linear in ``_classifier_attr``
    (a dotted path, so MobileNetV2's ``classifier.0`` works).
    """

    _classifier_attr: str = "fc"
    input_size: int = 32

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits

    def forward_features(self, x: Tensor) -> FeatureOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def classifier_layer(self) -> nn.Linear:
        """The final nn.Linear; its weight rows are the category centres."""
        layer = self.get_submodule(self._classifier_attr)
        assert isinstance(layer, nn.Linear)
        return layer

    @property
    def penultimate_dim(self) -> int:
        """Size of the pooled vector that enters the classifier."""
        return self.classifier_layer.in_features


def init_kaiming(model: nn.Module) -> None:
    """ResNet-style init: He-normal (fan-out) convs, unit/zero norms; Linear keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_fan_out_normal(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """VGG/MobileNet/WRN-style init: N(0, 2/fan_out) convs, zero biases, small-normal Linear.

    ``linear_std=None`` keeps PyTorch's default Linear weight (the WRN recipe) and only zeroes its bias.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
