"""The one feature contract every model exposes to distillation methods.

Zoo models implement it natively; torchvision/timm/user models get it through
:func:`pckd.models.adapter.as_feature_model` (forward hooks, no surgery).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


class FeatureOutput(NamedTuple):
    """Everything a method may need from one forward pass.

    stages: feature maps, stem first then each stage's output (RepDistiller's ``is_feat`` list without the
        pooled vector), post-activation.
    pooled: the penultimate vector that enters the classifier, shape [B, d].
    logits: classifier output, shape [B, K].
    """

    stages: list[Tensor]
    pooled: Tensor
    logits: Tensor


@runtime_checkable
class FeatureModel(Protocol):
    """What methods rely on. ``model(x)`` still returns plain logits."""

    def forward_features(self, x: Tensor) -> FeatureOutput: ...

    @property
    def classifier_layer(self) -> nn.Linear:
        """The final nn.Linear; its weight rows are the category centres."""
        ...

    @property
    def penultimate_dim(self) -> int: ...


def centres(model: FeatureModel, detach: bool = False) -> tuple[Tensor, Tensor | None]:
    """Category centres (classifier weight [K, d]) and bias [K] of a model."""
    layer = model.classifier_layer
    w, b = layer.weight, layer.bias
    if detach:
        return w.detach(), (b.detach() if b is not None else None)
    return w, b


__all__ = ["FeatureOutput", "FeatureModel", "centres", "torch"]
