"""A teacher for your own data from published weights: torchvision weights by name (served from a local cache
here, never downloaded), a fresh classifier for the data's classes, a backbone-freezing fine-tune, custom models
named by factory, and a warning for ImageNet models on tiny images."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from pckd.config import load_config
from pckd.engine.build import build_network
from pckd.errors import PckdWarning, UserError
from pckd.models import create_model


@pytest.fixture()
def cached_resnet18(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """torchvision's resnet18 IMAGENET1K_V1 file, as its cache would hold it (random 1000-class weights)."""
    from torchvision.models import ResNet18_Weights, resnet18

    torch.manual_seed(3)
    state = resnet18(num_classes=1000).state_dict()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / Path(ResNet18_Weights.IMAGENET1K_V1.url).name)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return state


def _student(*overrides: str):
    return load_config(None, ["student.arch=torchvision.resnet18", *overrides]).student


def test_weights_with_other_classes_need_reset_classifier(cached_resnet18: dict) -> None:
    with pytest.raises(UserError, match=r"student\.weights: torchvision ResNet18_Weights\.IMAGENET1K_V1 has 1000 "
                                        r"classes but the data has 10; add student\.reset_classifier=true"):
        build_network(_student("student.weights=IMAGENET1K_V1"), "student", 10, 224)


def test_reset_classifier_keeps_the_backbone_and_says_so(cached_resnet18: dict,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = build_network(_student("student.weights=IMAGENET1K_V1", "student.reset_classifier=true"),
                          "student", 10, 224)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in cached_resnet18.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (10, 512)
    out = capsys.readouterr().out
    assert "student: kept 120 backbone tensors from torchvision ResNet18_Weights.IMAGENET1K_V1; re-initialised " \
           "the classifier 'fc' (1000 -> 10 classes)" in out


def test_unknown_weights_name_lists_the_valid_ones(cached_resnet18: dict) -> None:
    with pytest.raises(UserError, match=r"'IMAGENET9K' is not a weights name of torchvision\.resnet18; use one of "
                                        r"DEFAULT, IMAGENET1K_V1"):
        build_network(_student("student.weights=IMAGENET9K"), "student", 10, 224)


def test_reset_classifier_from_a_checkpoint_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    hundred = create_model("resnet8", 100).state_dict()
    torch.save({"model": hundred}, tmp_path / "ckpt.pth")
    cfg = load_config(None, ["student.arch=resnet8", f"student.checkpoint={tmp_path / 'ckpt.pth'}",
                             "student.reset_classifier=true"]).student
    model = build_network(cfg, "student", 10, 32)
    assert torch.equal(model.state_dict()["conv1.weight"], hundred["conv1.weight"])
    assert model.state_dict()["fc.weight"].shape == (10, 64)
    assert "(100 -> 10 classes)" in capsys.readouterr().out


def test_custom_model_by_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("my_models:tiny", 5, key="student.arch")
    out = model.forward_features(torch.randn(2, 3, 16, 16))
    assert out.logits.shape == (2, 5) and out.pooled.shape == (2, 8)
    with pytest.raises(UserError, match="module 'nope_models' cannot be imported"):
        create_model("nope_models:tiny", 5, key="student.arch")
    with pytest.raises(UserError, match="has no callable 'huge'"):
        create_model("my_models:huge", 5, key="student.arch")
    sys.modules.pop("my_models", None)


def test_imagenet_model_on_tiny_images_warns() -> None:
    cfg = load_config(None, ["student.arch=torchvision.mobilenet_v3_small"]).student
    with pytest.warns(PckdWarning, match=r"designed for 224x224 inputs but gets 32x32.*data\.image_size=224"):
        build_network(cfg, "student", 10, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_network(cfg, "student", 10, 224)


def test_small_imagefolder_images_get_the_cifar_transforms() -> None:
    from torchvision import transforms

    from pckd.data.imagefolder import eval_transform, train_transform

    small = [type(t) for t in train_transform(32, "auto").transforms]
    assert transforms.RandomCrop in small and transforms.RandomResizedCrop not in small
    assert transforms.RandomResizedCrop in [type(t) for t in train_transform(224, "auto").transforms]
    assert eval_transform(32, "auto").transforms[0].size == 32
    assert eval_transform(224, "auto").transforms[0].size == 256
    assert load_config(None, ["data.transforms=imagenet"]).data.transforms == "imagenet"


def test_freezing_the_backbone_trains_only_the_classifier(tmp_path: Path) -> None:
    from pckd.engine.trainer import Trainer

    cfg = load_config(None, ["method=ce", "student.arch=resnet8", "data.name=digits", "data.train_limit=32",
                             "data.test_limit=16", "train.epochs=1", "train.batch_size=16", "train.device=cpu",
                             "train.progress=false", "train.freeze_backbone_epochs=1", f"output_dir={tmp_path}/r"])
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.distiller.student.state_dict().items()}
    trainer.fit()
    after = trainer.distiller.student.state_dict()
    assert torch.equal(after["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
