"""ImageNet-style folders (``train/<class>/*`` and ``val/<class>/*``) read by DataLoader workers.

Workers decode, crop, flip and normalise, so batches arrive as float tensors and carry a :class:`PreAugmented`
augmenter. Batch order and rank sharding are those of the in-memory loader (same seeded per-epoch permutation,
same share of each global batch), so a resumed epoch recomputes its order and skips its first steps without
reading them. The workers' random crops/flips are not restored on resume; only the order is.

Unreadable images stop the run with a UserError naming the file, or with ``data.skip_corrupt`` are left out
of their batch and counted (``corrupt_count``; a warning at the end of each epoch that skipped some). Under
several ranks a skipped image makes that rank's batch smaller; a batch whose images are all unreadable is not
yielded at all, which a multi-rank run cannot survive, so clean the data first for distributed runs.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets, transforms

from pckd import distributed
from pckd.data.augment import NORMALIZATION, PreAugmented, PreAugmentedPair
from pckd.data.batch import Batch
from pckd.data.loader import (
    epoch_permutation,
    eval_batches,
    local_batch_size,
    train_batches,
)
from pckd.data.randaugment_pil import RandAugmentCutout
from pckd.errors import UserError

# What PIL raises for files it cannot decode (SyntaxError for some malformed headers).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


SMALL_IMAGES = 64  # `data.transforms: auto` uses the CIFAR-style preset up to this side


def resolve_preset(preset: str, image_size: int) -> str:
    """``auto`` -> ``cifar`` for images of at most 64 pixels, else ``imagenet``."""
    if preset == "auto":
        return "cifar" if image_size <= SMALL_IMAGES else "imagenet"
    return preset


def train_transform(image_size: int, preset: str = "imagenet", strong: bool = False) -> Callable:
    """Training view: ImageNet-style RandomResizedCrop + flip, or CIFAR-style resize + padded crop + flip.
    ``strong``: MLD's strong view, the released RandAugment + Cutout after the crop and flip."""
    mean, std = NORMALIZATION["imagenet"]
    if resolve_preset(preset, image_size) == "cifar":
        crop = [transforms.Resize(image_size), transforms.CenterCrop(image_size),
                transforms.RandomCrop(image_size, padding=4)]
    else:
        crop = [transforms.RandomResizedCrop(image_size)]
    extra = [RandAugmentCutout()] if strong else []
    return transforms.Compose([*crop, transforms.RandomHorizontalFlip(), *extra, transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


SECOND_VIEWS = ("", "weak", "strong")  # none; another crop + flip (two-view methods); MLD's strong view


class TwoViews:
    """Two views of one image, each with its own crop and flip, stacked: [2,3,H,W]. The second is another weak
    view (``weak``) or MLD's strong one (``strong``: the released ``MultipleApply([weak, strong])``)."""

    def __init__(self, image_size: int, preset: str, second: str) -> None:
        self.weak = train_transform(image_size, preset)
        self.second = train_transform(image_size, preset, strong=second == "strong")

    def __call__(self, image: Image.Image) -> Tensor:
        return torch.stack([self.weak(image), self.second(image)])


def eval_transform(image_size: int, preset: str = "imagenet") -> Callable:
    """Test view: ImageNet-style resize (256/224) + centre crop, or CIFAR-style resize + centre crop."""
    mean, std = NORMALIZATION["imagenet"]
    small = resolve_preset(preset, image_size) == "cifar"
    resize = image_size if small else int(image_size * 256 / 224)  # the usual 256->224 ratio
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


class TolerantImageFolder(datasets.ImageFolder):
    """An ImageFolder whose items are ``(image or None, label, index, path, error)``: a file that cannot be
    read comes back as ``None`` plus the reason, and the main process decides what to do with it."""

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, int, str, str | None]:
        path, target = self.samples[index]
        try:
            image = self.transform(self.loader(path))
        except _DECODE_ERRORS as exc:
            return None, target, index, path, f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        return image, target, index, path, None

    def keep(self, positions: list[int]) -> None:
        """Restrict the dataset to ``positions`` (in order), e.g. for data.classes / limits."""
        self.samples: list[tuple[str, int]] = [self.samples[i] for i in positions]
        self.imgs = self.samples
        self.targets = [s[1] for s in self.samples]


def check_root(root: str | Path) -> None:
    """Fail early, naming data.root, unless ``root`` holds both ``train/`` and ``val/``."""
    base = Path(root).expanduser()
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise UserError(
                f"data.root: no '{split}' folder under '{base}' (expected {base / split}/<class>/<image>); "
                "set data.root=... to a folder holding train/ and val/"
            )


def open_split(root: str | Path, split: str, image_size: int, preset: str = "imagenet",
               second_view: str = "") -> TolerantImageFolder:
    """Scan ``root/split`` (``train`` or ``val``) with the matching transform of ``preset``; with a
    ``second_view`` (``weak`` or ``strong``) the training items are two views (:class:`TwoViews`)."""
    check_root(root)
    folder = Path(root).expanduser() / split
    transform: Callable
    if split != "train":
        transform = eval_transform(image_size, preset)
    else:
        transform = TwoViews(image_size, preset, second_view) if second_view else train_transform(image_size, preset)
    try:
        return TolerantImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(
            f"data.root: no images in class folders under '{folder}' ({' '.join(str(exc).split())}); "
            "put the images in <class>/ subfolders with an image extension (.jpg, .png, ...)"
        ) from exc


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start-up: ignore SIGTERM and SIGINT. Slurm, ``kill -- -PGID`` and Ctrl-C signal the
    whole process group; the main process handles the stop (it finishes the step and checkpoints, which needs
    its workers alive) and ends its workers itself. A worker whose main process dies exits on its own."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Collated:
    """A worker's batch: the readable images stacked, and what could not be read."""

    def __init__(self, items: list[tuple[Any, ...]]) -> None:
        good = [it for it in items if it[0] is not None]
        self.images = torch.stack([it[0] for it in good]) if good else None
        self.labels = torch.tensor([it[1] for it in good], dtype=torch.long)
        self.index = torch.tensor([it[2] for it in good], dtype=torch.long)
        self.failed = [(it[3], it[4]) for it in items if it[0] is None]

    def pin_memory(self) -> _Collated:
        # Called by the DataLoader's pinning thread when pin_memory=True.
        if self.images is not None:
            self.images = self.images.pin_memory()
        self.labels, self.index = self.labels.pin_memory(), self.index.pin_memory()
        return self


class ShardedBatchSampler(Sampler[list[int]]):
    """Index lists of this rank's batches: the in-memory loader's order and sharding, as a Sampler."""

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int, drop_last: bool
    ) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        if shuffle:
            self.bounds = train_batches(n, batch_size, rank, world_size, drop_last)
        else:
            self.bounds = eval_batches(n, max(1, batch_size // world_size), rank, world_size)
        self.epoch = 0
        self.start_step = 0

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        for lo, hi in self.bounds[self.start_step :]:
            yield order[lo:hi].tolist()

    def __len__(self) -> int:
        return len(self.bounds)


class ImageFolderLoader:
    """Yields :class:`Batch` objects of float images (already augmented) on ``device``.

    ``batch_size`` is global, as for :class:`~pckd.data.loader.InMemoryLoader`. ``rank``/``world_size``
    default to the torch.distributed ones.
    """

    def __init__(
        self,
        dataset: TolerantImageFolder,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        num_workers: int = 0,
        skip_corrupt: bool = False,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        second_view: str = "",
    ) -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.skip_corrupt = skip_corrupt
        # two views per item ([B,2,3,H,W]) when the workers also make a second view (another crop, or MLD's strong)
        self.augment: PreAugmented = PreAugmentedPair() if second_view else PreAugmented()
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        if shuffle:
            local_batch_size(batch_size, self.world_size)
        self.sampler = ShardedBatchSampler(
            len(dataset), batch_size, shuffle, seed, self.rank, self.world_size, drop_last
        )
        self.corrupt_count = 0  # unreadable images skipped so far (all epochs)
        self.loader: DataLoader[Any] = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=self.device.type == "cuda",
            collate_fn=_Collated,
            generator=torch.Generator().manual_seed(seed),  # worker seeds follow the run's seed
            worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        )

    @property
    def dataset_size(self) -> int:
        """Images in the whole dataset (all ranks together)."""
        return len(self.dataset)

    @property
    def local_size(self) -> int:
        """Images this rank is given per epoch (before skipping unreadable ones)."""
        return sum(hi - lo for lo, hi in self.sampler.bounds)

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch whose order the next iteration follows, starting at step ``start_step``."""
        self.sampler.epoch = int(epoch)
        self.sampler.start_step = int(start_step)

    def iter_from(self, step: int) -> Iterator[Batch]:
        """The batches of the current epoch from ``step`` on; the skipped ones are never read."""
        previous = self.sampler.start_step
        self.sampler.start_step = int(step)
        try:
            yield from self._epoch()
        finally:
            self.sampler.start_step = previous

    def __iter__(self) -> Iterator[Batch]:
        return self._epoch()

    def _epoch(self) -> Iterator[Batch]:
        skipped, read, first = 0, 0, None
        for part in self.loader:
            if part.failed:
                path, reason = part.failed[0]
                if not self.skip_corrupt:
                    raise UserError(
                        f"data: cannot read image '{path}' ({reason}); fix or delete the file, "
                        "or set data.skip_corrupt=true to skip unreadable images"
                    )
                skipped += len(part.failed)
                self.corrupt_count += len(part.failed)
                first = first or path
            if part.images is None:
                continue  # every image of this batch was unreadable
            read += int(part.labels.shape[0])
            yield Batch(
                images=part.images.to(self.device, non_blocking=True),
                labels=part.labels.to(self.device, non_blocking=True),
                index=part.index.to(self.device, non_blocking=True),
                augment=self.augment,
            )
        if skipped and not read:  # nothing left to train on or evaluate: a 0% "success" would hide it
            raise UserError(
                f"data.skip_corrupt: every image read from '{self.dataset.root}'"
                f"{f' in epoch {self.epoch}' if self.epoch else ''} was unreadable ({skipped} images, first: "
                f"'{first}'); fix the files or point data.root at an intact copy"
            )
        if skipped:
            warnings.warn(
                f"data.skip_corrupt: skipped {skipped} unreadable image(s) in epoch {self.epoch} "
                f"(first: '{first}'; {self.corrupt_count} in total)",
                stacklevel=2,
            )
