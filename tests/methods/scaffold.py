"""Shared scaffolding for the method tests: a normalising fake augmenter, random uint8 batches, a feature spy and
the checks every training step makes (gradients reach the trained parameters; the teacher is left untouched).

Every helper reproduces the old per-file helpers bit for bit (same constants, same generator and draw order), since
several tests compare against values computed from these batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from pckd.data.batch import Batch


class NormalisingAugmenter:
    """Augmenter stand-in: every view is ``(images / divisor - mean) / std``, deterministic.

    The defaults give roughly zero mean, unit variance; ``mean=0, std=1`` gives ``images / 255`` exactly and
    ``divisor=1, mean=128, std=64`` gives ``(images - 128) / 64`` exactly (division by 1 and subtracting 0 are exact).
    """

    def __init__(self, divisor: float = 255.0, mean: float = 0.5, std: float = 0.25) -> None:
        self.divisor, self.mean, self.std = divisor, mean, std

    def standard(self, images: Tensor) -> Tensor:
        """The training view: the normalised images."""
        return (images.float() / self.divisor - self.mean) / self.std

    def another_view(self, images: Tensor) -> Tensor:
        """A second training view: the same normalisation (deterministic, so equal to the first)."""
        return self.standard(images)

    def evaluate(self, images: Tensor) -> Tensor:
        """The evaluation view: the same normalisation."""
        return self.standard(images)


def make_batch(
    batch_size: int,
    num_classes: int,
    seed: int = 0,
    size: int = 32,
    augment: NormalisingAugmenter | None = None,
    index: Tensor | None = None,
    labels: Literal["random", "cycle"] = "random",
) -> Batch:
    """A batch of random uint8 images ``[batch_size, 3, size, size]`` drawn from a generator seeded with ``seed``.

    ``labels="random"`` draws the labels from the same generator right after the images; ``"cycle"`` uses
    ``arange(batch_size) % num_classes``. ``index`` defaults to ``arange(batch_size)``; ``augment`` to
    ``NormalisingAugmenter()``.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, size, size), generator=g, dtype=torch.uint8)
    if labels == "random":
        label_tensor = torch.randint(0, num_classes, (batch_size,), generator=g)
    else:
        label_tensor = torch.arange(batch_size) % num_classes
    return Batch(
        images=images,
        labels=label_tensor,
        index=torch.arange(batch_size) if index is None else index,
        augment=NormalisingAugmenter() if augment is None else augment,
    )


def spy_features(model: nn.Module, store: dict, key: str) -> None:
    """Record in ``store[key]`` the FeatureOutput of every ``forward_features`` call of ``model``."""
    original = model.forward_features

    def wrapped(x):
        store[key] = out = original(x)
        return out

    model.forward_features = wrapped


def teacher_snapshot(teacher: nn.Module) -> dict[str, Tensor]:
    """A copy of ``teacher``'s state_dict (parameters and buffers such as BN statistics)."""
    return {k: v.detach().clone() for k, v in teacher.state_dict().items()}


def assert_teacher_untouched(teacher: nn.Module, snapshot: dict[str, Tensor]) -> None:
    """After a step: no gradient reached the teacher, it is in eval mode, and its state equals ``snapshot``."""
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    after = teacher.state_dict()
    assert set(after) == set(snapshot)
    for k, v in after.items():
        assert torch.equal(snapshot[k], v), k


def assert_grads_reach(params: nn.Module | Iterable[nn.Parameter], nonzero: bool = False, finite: bool = False) -> None:
    """Every parameter has a gradient (``nonzero``: with a non-zero sum of magnitudes; ``finite``: all finite)."""
    params = list(params.parameters() if isinstance(params, nn.Module) else params)
    assert params
    for p in params:
        assert p.grad is not None
        if nonzero:
            assert p.grad.abs().sum() > 0
        if finite:
            assert torch.isfinite(p.grad).all()
