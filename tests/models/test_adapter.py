"""The hook adapter gives torchvision and user models the FeatureModel view without changing them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from pckd.errors import UserError
from pckd.models import FeatureModel, as_feature_model, create_model
from pckd.models.adapter import FeatureAdapter


@pytest.fixture()
def tv_resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


def _backbone_by_hand(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    stem = model.relu(model.bn1(model.conv1(x)))
    h = model.maxpool(stem)
    stages = [stem]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        h = layer(h)
        stages.append(h)
    return stages, torch.flatten(model.avgpool(h), 1)


def test_resnet18_features_equal_a_manual_forward(tv_resnet: nn.Module) -> None:
    wrapped = as_feature_model(tv_resnet)
    assert isinstance(wrapped, FeatureModel)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = wrapped.forward_features(x)
        stages, pooled = _backbone_by_hand(tv_resnet, x)
        logits = tv_resnet(x)
    torch.testing.assert_close(out.pooled, pooled)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(wrapped(x), logits)
    assert [tuple(s.shape) for s in out.stages] == [tuple(s.shape) for s in stages]
    assert [s.shape[1] for s in out.stages] == [64, 64, 128, 256, 512]
    for got, want in zip(out.stages, stages):
        torch.testing.assert_close(got, want)
    assert wrapped.classifier_layer is tv_resnet.fc
    assert wrapped.penultimate_dim == 512


def test_state_dict_keys_are_the_wrapped_models(tv_resnet: nn.Module) -> None:
    wrapped = as_feature_model(tv_resnet)
    assert list(wrapped.state_dict()) == list(tv_resnet.state_dict())
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in tv_resnet.named_parameters()]

    # torchvision's own state dict (another instance's weights) loads unchanged and strictly.
    torch.manual_seed(1)
    other = resnet18(num_classes=10).eval()
    wrapped.load_state_dict(other.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), other(x))
        torch.testing.assert_close(tv_resnet(x), other(x))  # same parameters, not a copy


def test_keys_stay_unprefixed_inside_a_parent_module(tv_resnet: nn.Module) -> None:
    parent = nn.Module()
    parent.teacher = as_feature_model(tv_resnet)
    keys = list(parent.state_dict())
    assert keys == ["teacher." + k for k in tv_resnet.state_dict()]
    state = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in parent.state_dict().items()}
    parent.load_state_dict(state, strict=True)
    assert float(tv_resnet.fc.weight.detach().abs().sum()) == 0.0


def test_plain_forward_keeps_no_captures(tv_resnet: nn.Module) -> None:
    wrapped = as_feature_model(tv_resnet)
    with torch.no_grad():
        wrapped(torch.randn(1, 3, 32, 32))
        wrapped.forward_features(torch.randn(1, 3, 32, 32))
    assert all(getattr(m, "_pckd_captured_output", None) is None for m in tv_resnet.modules())
    assert tv_resnet.fc.__dict__.get("_pckd_captured_input") is None


def test_deepcopy_captures_from_the_copy(tv_resnet: nn.Module) -> None:
    wrapped = as_feature_model(tv_resnet)
    twin = copy.deepcopy(wrapped)
    with torch.no_grad():
        twin.classifier_layer.weight.add_(1.0)
        x = torch.randn(1, 3, 32, 32)
        a, b = wrapped.forward_features(x), twin.forward_features(x)
    torch.testing.assert_close(a.pooled, b.pooled)
    assert not torch.allclose(a.logits, b.logits)
    assert twin.classifier_layer is not wrapped.classifier_layer


def test_train_and_eval_reach_the_wrapped_root(tv_resnet: nn.Module) -> None:
    wrapped = as_feature_model(tv_resnet)
    wrapped.train()
    assert tv_resnet.training and tv_resnet.layer1.training
    wrapped.eval()
    assert not tv_resnet.training and not tv_resnet.layer1.training


def test_user_model_with_named_classifier_and_stages() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6),
        nn.Linear(6, 4),
    )
    wrapped = as_feature_model(net, classifier="4", stage_names=["1"])
    with torch.no_grad():
        out = wrapped.forward_features(torch.randn(3, 3, 8, 8))
    assert out.pooled.shape == (3, 8) and out.logits.shape == (3, 4)
    assert out.stages[0].shape == (3, 8, 8, 8)
    assert wrapped.penultimate_dim == 8
    assert as_feature_model(net).classifier_layer is net[5]  # default: the last Linear


def test_root_level_parameters_are_shared() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(4))
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x + self.bias)

    model = Tokens()
    wrapped = as_feature_model(model)
    assert list(wrapped.state_dict()) == ["bias", "head.weight", "head.bias"]
    assert wrapped.stage_names == [] and wrapped.forward_features(torch.ones(1, 4)).stages == []


def test_bad_names_give_user_errors(tv_resnet: nn.Module) -> None:
    with pytest.raises(UserError, match="module 'layer9' not found"):
        as_feature_model(tv_resnet, stage_names=["layer9"])
    with pytest.raises(UserError, match="not an nn.Linear"):
        as_feature_model(tv_resnet, classifier="layer1")
    with pytest.raises(UserError, match="no nn.Linear"):
        as_feature_model(nn.Sequential(nn.Conv2d(3, 4, 1)))


def test_zoo_models_and_adapters_are_not_wrapped_twice(tv_resnet: nn.Module) -> None:
    zoo = create_model("resnet8", num_classes=10)
    assert as_feature_model(zoo) is zoo
    wrapped = as_feature_model(tv_resnet)
    assert as_feature_model(wrapped) is wrapped
    rewrapped = as_feature_model(wrapped, stage_names=["layer4"])
    assert isinstance(rewrapped, FeatureAdapter) and rewrapped.wrapped is tv_resnet
