"""The CIFAR zoo matches the published RepDistiller/mdistiller definitions, and the registry finds models."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from pckd.errors import UserError
from pckd.models import FeatureModel, create_model, list_models, model_summary
from pckd.models.cifar import CIFAR_MODELS

ZOO = list(CIFAR_MODELS)


def test_zoo_names_are_the_reference_names(zoo_reference: dict) -> None:
    assert sorted(ZOO) == sorted(zoo_reference)
    assert len(ZOO) == 22


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_matches_reference(name: str, zoo_reference: dict) -> None:
    ref = zoo_reference[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=100).eval()
    assert isinstance(model, FeatureModel)
    assert model.input_size == 32

    state = model.state_dict()
    assert list(state) == list(ref["state_dict"]), "state-dict keys or their order differ from the reference"
    assert {k: list(v.shape) for k, v in state.items()} == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref["num_parameters"]

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.forward_features(x)
        logits = model(x)
    assert [list(f.shape[1:]) for f in out.stages] == ref["feature_shapes"][:-1]
    assert all(f.shape[0] == 2 for f in out.stages)
    assert list(out.pooled.shape) == [2, *ref["feature_shapes"][-1]]
    assert out.logits.shape == (2, 100)
    torch.testing.assert_close(logits, out.logits)
    torch.testing.assert_close(model.classifier_layer(out.pooled), out.logits)

    assert isinstance(model.classifier_layer, nn.Linear)
    assert model.penultimate_dim == ref["penultimate_dim"]
    assert tuple(model.classifier_layer.weight.shape) == (100, ref["penultimate_dim"])

    # A state dict with exactly the reference shapes (as a published teacher has) loads strictly.
    fake = {
        k: torch.zeros((), dtype=torch.long) if not shape else torch.randn(shape)
        for k, shape in ref["state_dict"].items()
    }
    model.load_state_dict(fake, strict=True)
    first = next(iter(fake))
    torch.testing.assert_close(model.state_dict()[first], fake[first])


def test_num_classes_changes_only_the_classifier() -> None:
    model = create_model("resnet8", num_classes=10)
    assert model.classifier_layer.out_features == 10
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_wrn_accepts_builder_options() -> None:
    model = create_model("wrn_16_1", num_classes=10, drop_rate=0.3)
    assert model.block1.layer[0].drop_rate == 0.3
    with pytest.raises(UserError, match="resnet8.*does not accept"):
        create_model("resnet8", num_classes=10, drop_rate=0.3)


def test_list_models_has_zoo_and_torchvision() -> None:
    names = list_models()
    assert names[: len(ZOO)] == ZOO
    for name in ("torchvision.resnet18", "torchvision.resnet34", "torchvision.resnet50"):
        assert name in names
    assert "torchvision.squeezenet1_0" not in names  # convolutional head: no category centres
    with pytest.raises(UserError, match="squeezenet1_0.*no nn.Linear"):
        create_model("torchvision.squeezenet1_0", num_classes=10)


def test_model_summary_matches_reference(zoo_reference: dict) -> None:
    summary = model_summary("resnet32x4")
    assert summary == {
        "name": "resnet32x4",
        "family": "resnet",
        "params": zoo_reference["resnet32x4"]["num_parameters"],
        "penultimate_dim": 256,
        "input_size": 32,
    }
    assert model_summary("torchvision.resnet18", num_classes=1000)["params"] == 11_689_512
    # RegNet builders cannot run on the meta device; the summary still allocates no real weights.
    assert model_summary("torchvision.regnet_x_400mf", num_classes=1000)["params"] == 5_495_976


def test_torchvision_model_is_wrapped_without_weights() -> None:
    model = create_model("torchvision.resnet18", num_classes=10)
    assert isinstance(model, FeatureModel)
    assert model.input_size == 224
    assert model.penultimate_dim == 512
    assert "fc.weight" in model.state_dict()
    with pytest.raises(UserError, match="never downloads weights"):
        create_model("torchvision.resnet18", num_classes=10, weights="DEFAULT")


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("resnet19", "resnet14"),
        ("resnet18", "torchvision.resnet18"),
        ("mobilenetv2", "MobileNetV2"),
        ("torchvision.resnet19", "torchvision.resnet18"),
    ],
)
def test_unknown_name_suggests_the_closest(name: str, suggestion: str) -> None:
    with pytest.raises(UserError) as info:
        create_model(name, num_classes=10, key="student.arch")
    message = str(info.value)
    assert f"unknown model '{name}' (student.arch)" in message
    assert f"did you mean '{suggestion}'?" in message
    assert "pckd models" in message and "\n" not in message


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_names_need_timm() -> None:
    with pytest.raises(UserError, match="pip install"):
        create_model("timm.resnet18", num_classes=10)


def test_timm_model_is_wrapped_without_weights() -> None:
    pytest.importorskip("timm")
    model = create_model("timm.resnet18", num_classes=10).eval()
    assert isinstance(model, FeatureModel) and model.input_size == 224
    with torch.no_grad():
        out = model.forward_features(torch.randn(1, 3, 64, 64))
    assert [s.shape[1] for s in out.stages] == [64, 64, 128, 256, 512]
    assert out.pooled.shape == (1, 512) and out.logits.shape == (1, 10)
    with pytest.raises(UserError, match="never downloads weights"):
        create_model("timm.resnet18", num_classes=10, pretrained=True)


def test_feature_shapes_reads_stage_shapes_without_touching_state() -> None:
    from pckd.models.interface import feature_shapes

    model = create_model("resnet8x4", 100).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    shapes = feature_shapes(model)
    assert shapes.stages == [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert shapes.pooled == 256 and shapes.logits == 100
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched
