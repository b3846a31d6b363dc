"""What a method may know about the data it trains on, passed to every method's constructor."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class DataInfo:
    """num_classes: K; train_size: images in the (whole, all-rank) training set, so ``Batch.index`` lies in
    ``[0, train_size)`` (memory banks size themselves by it); input_size: the square image side; train_labels:
    the labels of the whole training set in index order, when the data layer has them in memory."""

    num_classes: int
    train_size: int = 0
    input_size: int = 32
    train_labels: Tensor | None = None
