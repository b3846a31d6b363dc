"""Build any model by name: the CIFAR zoo, ``torchvision.<name>`` and (when installed) ``timm.<name>``.

Every model comes back with the FeatureModel interface and an ``input_size`` attribute (the side of the
square image it expects). Pretrained weights are never downloaded here; load checkpoints explicitly with
:func:`pckd.models.checkpoint.load_weights`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pckd.errors import UserError
from pckd.models.adapter import as_feature_model
from pckd.models.cifar import CIFAR_MODELS

TORCHVISION_PREFIX = "torchvision."
TIMM_PREFIX = "timm."
_CIFAR_INPUT_SIZE = 32
_IMAGENET_INPUT_SIZE = 224
# torchvision models trained at another resolution (their weights' transforms say so; we load no weights).
_TORCHVISION_INPUT_SIZES = {"inception_v3": 299}
# Classification builders whose head is a convolution: no nn.Linear whose rows are category centres.
_NO_LINEAR_HEAD = {"squeezenet1_0", "squeezenet1_1"}


def _torchvision_names(usable_only: bool = False) -> list[str]:
    from torchvision import models

    names = sorted(models.list_models(module=models))  # classification builders only
    return [n for n in names if n not in _NO_LINEAR_HEAD] if usable_only else names


def _timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def list_models() -> list[str]:
    """The CIFAR zoo names (in zoo order) followed by the ``torchvision.<name>`` classification models.

    ``timm.<name>`` is accepted by :func:`create_model` when timm is installed, but its thousand-odd names
    are not listed here (see ``timm.list_models()``).
    """
    return list(CIFAR_MODELS) + [TORCHVISION_PREFIX + name for name in _torchvision_names(usable_only=True)]


def _at(key: str) -> str:
    """' (student.arch)' when the name came from a config key, else ''."""
    return f" ({key})" if key else ""


def _unknown(name: str, key: str, candidates: list[str]) -> UserError:
    if not name.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)) and name in _torchvision_names():
        guess = [TORCHVISION_PREFIX + name]  # an ImageNet name given without its prefix
    else:
        guess = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
        if not guess:  # case slips (resnet50 vs ResNet50) score low on the raw names
            lowered = {c.lower(): c for c in candidates}
            guess = [lowered[g] for g in difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)]
    hint = f"did you mean '{guess[0]}'? " if guess else ""
    return UserError(f"unknown model '{name}'{_at(key)}: {hint}Run 'pckd models' for the list")


def _create_torchvision(name: str, num_classes: int, kwargs: dict[str, Any], key: str) -> nn.Module:
    from torchvision import models

    if name not in _torchvision_names():
        raise _unknown(TORCHVISION_PREFIX + name, key, list_models())
    if kwargs.get("weights") is not None:
        raise UserError(
            f"model '{TORCHVISION_PREFIX}{name}'{_at(key)}: pckd never downloads weights; drop 'weights' and load a "
            "local checkpoint file instead"
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "weights"}
    try:
        model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as err:
        full = TORCHVISION_PREFIX + name
        raise UserError(f"model '{full}'{_at(key)} does not accept {sorted(kwargs)}: {err}") from None
    try:
        wrapped = as_feature_model(model)
    except UserError as err:
        raise UserError(f"model '{TORCHVISION_PREFIX}{name}'{_at(key)} cannot be distilled: {err}") from None
    _set_input_size(wrapped, int(kwargs.get("image_size", _TORCHVISION_INPUT_SIZES.get(name, _IMAGENET_INPUT_SIZE))))
    return wrapped


def _create_timm(name: str, num_classes: int, kwargs: dict[str, Any], key: str) -> nn.Module:
    if not _timm_available():
        raise UserError(f"model '{TIMM_PREFIX}{name}'{_at(key)} needs timm: pip install 'pckd[timm]'")
    import timm

    if kwargs.get("pretrained"):
        raise UserError(
            f"model '{TIMM_PREFIX}{name}'{_at(key)}: pckd never downloads weights; drop 'pretrained' and load a "
            "local checkpoint file instead"
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    if not timm.is_model(name):
        guess = difflib.get_close_matches(name, timm.list_models(), n=1, cutoff=0.5)
        hint = f"did you mean '{TIMM_PREFIX}{guess[0]}'? " if guess else ""
        raise UserError(f"unknown model '{TIMM_PREFIX}{name}'{_at(key)}: {hint}see timm.list_models()")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    wrapped = as_feature_model(model)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    _set_input_size(wrapped, int(cfg.get("input_size", (3, _IMAGENET_INPUT_SIZE, _IMAGENET_INPUT_SIZE))[-1]))
    return wrapped


def create_model(name: str, num_classes: int, key: str = "", **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs and random weights.

    ``key`` is the config key the name came from (e.g. ``student.arch``), named in error messages. Extra
    keyword arguments go to the builder (e.g. ``drop_rate`` for the WRNs, ``dropout`` for torchvision models).
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _create_torchvision(name[len(TORCHVISION_PREFIX) :], num_classes, kwargs, key)
    if name.startswith(TIMM_PREFIX):
        return _create_timm(name[len(TIMM_PREFIX) :], num_classes, kwargs, key)
    if ":" in name:
        return _create_from_factory(name, num_classes, kwargs, key)
    if name not in CIFAR_MODELS:
        raise _unknown(name, key, list_models())
    _, builder = CIFAR_MODELS[name]
    try:
        model = builder(num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise UserError(f"model '{name}'{_at(key)} does not accept {sorted(kwargs)}: {err}") from None
    _set_input_size(model, _CIFAR_INPUT_SIZE)
    return model


def _create_from_factory(name: str, num_classes: int, kwargs: dict[str, Any], key: str) -> nn.Module:
    """``"package.module:factory"``: your own model, built by ``factory(num_classes=K, **kwargs)`` from a module
    Python can import (installed, or on PYTHONPATH); pckd imports the module and calls nothing else in it."""
    import importlib

    module_name, _, factory_name = name.partition(":")
    if not module_name or not factory_name.isidentifier():
        raise UserError(f"model '{name}'{_at(key)}: write a custom model as 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"model '{name}'{_at(key)}: module '{module_name}' cannot be imported ({err}); install it "
                        f"or add its folder to PYTHONPATH") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UserError(f"model '{name}'{_at(key)}: '{module_name}' has no callable '{factory_name}'")
    try:
        model = factory(num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise UserError(f"model '{name}'{_at(key)}: {factory_name}(num_classes=...) failed: {err}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{name}'{_at(key)}: {factory_name} returned {type(model).__name__}, not an nn.Module")
    wrapped = as_feature_model(model)
    if getattr(wrapped, "input_size", None) is None:
        _set_input_size(wrapped, int(getattr(model, "input_size", 0)) or None)
    return wrapped


def _set_input_size(model: nn.Module, size: int | None) -> None:
    """Record the model's native input side as a plain attribute (not a parameter, buffer or submodule)."""
    vars(model)["input_size"] = size


def model_family(name: str) -> str:
    """'resnet', 'wrn', ... for zoo models; 'torchvision' or 'timm' for the others."""
    if name.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if name.startswith(TIMM_PREFIX):
        return "timm"
    if ":" in name:
        return "custom"
    if name not in CIFAR_MODELS:
        raise _unknown(name, "", list_models())
    return CIFAR_MODELS[name][0]


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Move each parameter to the meta device as it is registered, so initialisers cost nothing.

    For builders that cannot run entirely under ``torch.device('meta')`` because they compute layer sizes
    with real tensors (torchvision's RegNets).
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def model_summary(name: str, num_classes: int = 100) -> dict[str, Any]:
    """Name, family, trainable parameter count, penultimate width and input size of a model.

    The model is built without real weights (meta device), so even large models summarise instantly.
    """
    family = model_family(name)
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes)
    except (NotImplementedError, RuntimeError):
        with _parameters_on_meta():
            model = create_model(name, num_classes)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "name": name,
        "family": family,
        "params": params,
        "penultimate_dim": model.penultimate_dim,
        "input_size": model.input_size,
    }


__all__ = ["create_model", "list_models", "model_family", "model_summary"]
