"""The library's public surface: build a method's distiller from models you already have, wrap batches from any
DataLoader, and give any classifier the features interface. See docs/api.md ("PCKD in your own loop")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pckd.config import load_config, method_params
from pckd.data.augment import NORMALIZATION, BatchAugment, PreAugmented, PreAugmentedPair
from pckd.data.batch import Batch
from pckd.data.info import DataInfo
from pckd.errors import UserError
from pckd.methods.base import Distiller, check_not_retired, method_registry
from pckd.models import as_feature_model, create_model
from pckd.models.interface import FeatureModel


def method_settings(method: str, **params: Any) -> Any:
    """The hyper-parameters of ``method`` with ``params`` over its defaults, read and checked exactly as a config
    file's ``<method>:`` section (nested sections as dicts: ``preview={"mode": "off"}``)."""
    cfg = load_config(None, [], base={"method": method, method: params})
    return method_params(cfg)


def build_distiller(method: str, student: nn.Module, teacher: nn.Module | None = None, *,
                    num_classes: int | None = None, train_size: int = 0, input_size: int = 32,
                    train_labels: Tensor | None = None, **params: Any) -> Distiller:
    """The Distiller of ``method`` around your ``student`` (trained) and ``teacher`` (frozen: eval mode, no
    gradients, never in ``parameters()``). Models without ``forward_features`` are wrapped with
    :func:`as_feature_model`. ``num_classes`` defaults to the student's classifier; ``train_size`` (the number
    of training images; ``Batch.index`` must lie in ``[0, train_size)``) is needed by methods with memory banks
    (CRD). ``params`` override the method's defaults, e.g. ``build_distiller("kd", s, t, temperature=2)``.

    Optimise ``distiller.parameters()`` (the student and the method's heads) with any optimizer."""
    registry = method_registry()
    check_not_retired(method)
    if method not in registry:
        raise UserError(f"unknown method {method!r}; valid: {', '.join(sorted(registry))}")
    spec = registry[method]
    settings = method_settings(method, **params)
    student = as_feature_model(student)
    if teacher is not None:
        teacher = as_feature_model(teacher)
    if spec.cls.uses_teacher(settings) and teacher is None:
        raise UserError(f"method {method!r} needs a teacher: build_distiller({method!r}, student, teacher, ...)")
    classes = num_classes if num_classes is not None else _classes_of(student)
    data = DataInfo(num_classes=classes, train_size=train_size, input_size=input_size, train_labels=train_labels)
    distiller: Distiller = spec.cls(student, teacher, settings, data)
    device = next(student.parameters()).device
    return distiller.to(device)


def _classes_of(model: nn.Module) -> int:
    layer = model.classifier_layer if isinstance(model, FeatureModel) else None
    if not isinstance(layer, nn.Linear):
        raise UserError("cannot tell the number of classes from the student; pass num_classes=K")
    return int(layer.out_features)


def batch_from_tensors(images: Tensor, labels: Tensor, index: Tensor | None = None,
                       strong: Tensor | None = None) -> Batch:
    """A training batch from float images a DataLoader already augmented and normalised (e.g. torchvision
    transforms): the standard view is the images as they are; PCKD's rotated views rotate them. ``index`` are
    the samples' dataset indices (needed by memory banks and per-sample records; default 0..B-1). ``strong``:
    MLD's strong view of the same images, made by the caller's loader (same shape as ``images``)."""
    if not torch.is_floating_point(images) or images.dim() != 4:
        raise UserError(f"images must be a float tensor [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise UserError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
    if strong is not None and strong.shape != images.shape:
        raise UserError(f"strong must have the shape of images {tuple(images.shape)}, got {tuple(strong.shape)}")
    if index is None:
        index = torch.arange(images.shape[0], device=labels.device)
    if strong is not None:
        return Batch(images=torch.stack([images, strong], dim=1), labels=labels.long(), index=index,
                     augment=PreAugmentedPair())
    return Batch(images=images, labels=labels.long(), index=index, augment=PreAugmented())


def batch_from_uint8(images: Tensor, labels: Tensor, index: Tensor | None = None,
                     normalization: str = "cifar100") -> Batch:
    """A training batch from raw uint8 images [B, 3, H, W] on any device, augmented there as pckd's own CIFAR
    loader does (random crop with padding 4, flip, rotated views with an independent crop per copy) and
    normalised with the named mean/std (cifar100, cifar10, imagenet)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise UserError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    if normalization not in NORMALIZATION:
        raise UserError(f"normalization={normalization!r} is not one of {', '.join(NORMALIZATION)}")
    if index is None:
        index = torch.arange(images.shape[0], device=labels.device)
    return Batch(images=images, labels=labels.long(), index=index, augment=BatchAugment(*NORMALIZATION[normalization]))


__all__ = ["as_feature_model", "batch_from_tensors", "batch_from_uint8", "build_distiller", "create_model",
           "method_settings"]
