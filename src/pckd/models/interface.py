"""The one feature contract every model exposes to distillation methods.

Zoo models implement it natively; torchvision/timm/user models get it through
:func:`pckd.models.adapter.as_feature_model` (forward hooks, no surgery).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, cast, runtime_checkable

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


def feature_dim(model: nn.Module) -> int:
    """The width of a feature model's pooled (penultimate) feature."""
    return int(cast(FeatureModel, model).penultimate_dim)


def centres(model: nn.Module, detach: bool = False) -> tuple[Tensor, Tensor | None]:
    """Category centres (classifier weight [K, d]) and bias [K] of a feature model."""
    layer = cast(FeatureModel, model).classifier_layer
    w, b = layer.weight, layer.bias
    if detach:
        return w.detach(), (b.detach() if b is not None else None)
    return w, b


class FeatureShapes(NamedTuple):
    """Shapes of one sample's features (no batch dimension), as methods need them to size their heads."""

    stages: list[tuple[int, ...]]  # (C, H, W) of each stage, stem first
    pooled: int
    logits: int


def feature_shapes(model: nn.Module, input_size: int | None = None) -> FeatureShapes:
    """Run ``model`` once on two random images to read its feature shapes.

    The side defaults to ``model.input_size`` (every zoo/registry model has it), else 224. The model runs in
    eval mode without autograd (its BatchNorm statistics are not touched) and its mode is restored; the random
    images come from a private generator, so the global RNG (and hence a seeded run) is not disturbed.
    """
    side = int(input_size or getattr(model, "input_size", None) or 224)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    probe = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = cast(FeatureModel, model).forward_features(probe)
    finally:
        model.train(was_training)
    return FeatureShapes([tuple(s.shape[1:]) for s in out.stages], int(out.pooled.shape[1]), int(out.logits.shape[1]))


__all__ = ["FeatureModel", "FeatureOutput", "FeatureShapes", "centres", "feature_dim", "feature_shapes"]
