"""Batches of an in-memory dataset, with a recomputable per-epoch order and rank sharding.

Training order: the permutation of epoch ``e`` comes from ``torch.Generator().manual_seed(seed * 1000003 + e)``
(a CPU generator independent of the global RNG), so any epoch's order can be recomputed on resume, and skipping
the first steps of an epoch touches no RNG. ``batch_size`` is the global batch: every rank draws the same
permutation and takes its contiguous share of each global batch.

Evaluation order (``shuffle=False``): the dataset in order, split into one contiguous block per rank; the
trainer gathers the per-rank results (``dataset_size`` is the total).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from pckd import distributed
from pckd.data.batch import Augmenter, Batch
from pckd.errors import UserError

_SEED_STRIDE = 1000003  # a prime, so (seed, epoch) pairs of realistic runs never share a generator seed


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The training order of epoch ``epoch``: a CPU int64 permutation of ``range(n)``."""
    generator = torch.Generator().manual_seed(seed * _SEED_STRIDE + epoch)
    return torch.randperm(n, generator=generator)


def share(start: int, end: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous share of ``[start, end)``: equal parts, the first ranks taking one extra
    element when the length does not divide (the ``torch.tensor_split`` rule)."""
    size, extra = divmod(end - start, world_size)
    lo = start + rank * size + min(rank, extra)
    return lo, lo + size + (1 if rank < extra else 0)


def local_batch_size(batch_size: int, world_size: int, key: str = "train.batch_size") -> int:
    """The per-rank share of a global batch; the global batch must split evenly across ranks."""
    if batch_size < 1:
        raise UserError(f"{key}={batch_size} must be at least 1")
    if batch_size % world_size:
        raise UserError(
            f"{key}={batch_size} is not divisible by the {world_size} processes (world size); "
            f"set {key} to a multiple of {world_size}"
        )
    return batch_size // world_size


def train_batches(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """Positions ``[lo, hi)`` in the epoch permutation of this rank's part of every global batch.

    A trailing partial global batch is dropped with ``drop_last`` and, under several ranks, also when it has
    fewer images than ranks (a rank would get an empty batch); otherwise it is shared by :func:`share`.
    """
    bounds = []
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        if end - start < batch_size and (drop_last or end - start < world_size):
            break
        bounds.append(share(start, end, rank, world_size))
    return bounds


def eval_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """Positions ``[lo, hi)`` of this rank's batches over its contiguous block of ``range(n)``."""
    lo, hi = share(0, n, rank, world_size)
    return [(s, min(s + batch_size, hi)) for s in range(lo, hi, batch_size)]


class InMemoryLoader:
    """Yields :class:`Batch` objects (uint8 images, labels, dataset indices, the augmenter) of one epoch.

    Args:
        images: uint8 [N,3,H,W], normally already on ``device`` (``data.on_device``); when they live
            elsewhere (host memory) each batch is copied to ``device``.
        labels: int64 [N], on the same device as ``images``.
        batch_size: the global batch (training) or the global evaluation batch; each rank gets
            ``batch_size // world_size`` images per step.
        augment: the augmenter every batch carries.
        shuffle: training order (per-epoch permutation, sharded per global batch) when true, else evaluation
            order (contiguous block per rank).
        seed: the run's seed, for the permutations.
        drop_last: drop a trailing partial global batch (training order).
        device: where batches are delivered; defaults to the images' device.
        rank, world_size: default to the torch.distributed ones; passed explicitly in tests.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        augment: Augmenter,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels
        self.augment = augment
        self.shuffle = shuffle
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else images.device
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        n = images.shape[0]
        self.global_batch_size = int(batch_size)
        if shuffle:
            self.batch_size = local_batch_size(batch_size, self.world_size)
            self._bounds = train_batches(n, batch_size, self.rank, self.world_size, drop_last)
        else:
            # Evaluation batches only bound memory, so an uneven split is rounded instead of refused.
            self.batch_size = max(1, batch_size // self.world_size)
            self._bounds = eval_batches(n, self.batch_size, self.rank, self.world_size)
        self.epoch = 0
        self.start_step = 0
        self._order: Tensor | None = None  # positions -> dataset indices, on the images' device
        self._order_epoch = -1

    @property
    def dataset_size(self) -> int:
        """Images in the whole dataset (all ranks together)."""
        return int(self.images.shape[0])

    @property
    def local_size(self) -> int:
        """Images this rank sees per epoch."""
        return sum(hi - lo for lo, hi in self._bounds)

    def __len__(self) -> int:
        return len(self._bounds)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch whose order the next iteration follows, starting at step ``start_step``."""
        self.epoch = int(epoch)
        self.start_step = int(start_step)

    def order(self) -> Tensor:
        """Dataset indices in this epoch's order (the whole permutation, or ``arange`` when not shuffling)."""
        if self._order is None or (self.shuffle and self._order_epoch != self.epoch):
            if self.shuffle:
                perm = epoch_permutation(self.dataset_size, self.seed, self.epoch)
            else:
                perm = torch.arange(self.dataset_size)
            # One host->device copy per epoch; each step then slices it without syncing.
            self._order = perm.to(self.images.device)
            self._order_epoch = self.epoch
        return self._order

    def iter_from(self, step: int) -> Iterator[Batch]:
        """The batches of the current epoch from ``step`` on (no RNG is drawn for the skipped ones)."""
        order = self.order()
        for lo, hi in self._bounds[step:]:
            index = order[lo:hi]
            images = self.images.index_select(0, index)
            labels = self.labels.index_select(0, index)
            if self.images.device != self.device:
                images, labels, index = (self._to_device(t) for t in (images, labels, index))
            yield Batch(images=images, labels=labels, index=index, augment=self._shard_augment(lo))

    def _shard_augment(self, lo: int) -> Augmenter:
        """The augmenter of this rank's batch starting at position ``lo``. Under several ranks it draws the
        random parameters of the whole global batch and keeps this rank's (``BatchAugment.for_shard``), so the
        augmentation does not depend on the number of ranks."""
        if not (self.shuffle and self.world_size > 1 and hasattr(self.augment, "for_shard")):
            return self.augment
        start = lo - lo % self.global_batch_size  # global batches begin at multiples of the global batch size
        total = min(start + self.global_batch_size, self.dataset_size) - start
        return self.augment.for_shard(lo - start, total)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(self.start_step)

    def _to_device(self, tensor: Tensor) -> Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)
