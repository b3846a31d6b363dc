"""ImageNet-style folders (``train/<class>/*`` and ``val/<class>/*``) read by DataLoader workers.

Workers decode, crop, flip and normalise, so batches arrive as float tensors and carry a :class:`PreAugmented`
augmenter. Batch order and rank sharding are those of the in-memory loader (same seeded per-epoch permutation,
same share of each global batch), so a resumed epoch recomputes its order and skips its first steps without
reading them. The workers' random crops/flips are not restored on resume; only the order is.

The class folders are scanned without walking any folder twice (a link loop never multiplies the data), and
every image's header is checked when the data is built, before anything is written to the run folder.
Unreadable images stop the run with a UserError naming the file, or with ``data.skip_corrupt`` are left out
of their batch and counted (``corrupt_count``; a warning at the end of each epoch that skipped some). Under
several ranks a skipped image makes that rank's batch smaller; a batch whose images are all unreadable is not
yielded at all, which a multi-rank run cannot survive, so clean the data first for distributed runs.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Sampler
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

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
from pckd.errors import PckdWarning, UserError

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


def _folder_key(path: str) -> str:
    return os.path.realpath(path)


def scan_class_folders(directory: str, class_to_idx: dict[str, int],
                       is_valid: Callable[[str], bool]) -> tuple[list[tuple[str, int]], list[tuple[str, str]],
                                                                 list[tuple[str, str]]]:
    """The ``(path, class index)`` samples under ``directory/<class>/`` in torchvision's order (folders sorted by
    path, files by name), following a linked folder only the first time its real folder is reached: a link loop,
    or a link back to the split or to another class, is never walked (torchvision's walk follows them until the
    path is too long, multiplying and relabelling the data). Returns the samples, the links left out
    ``(link, real folder)`` and the duplicate files ``(path, first path of the same file)`` (symbolic or hard
    links to one file; they stay in the samples)."""
    starts = {cls: os.path.join(directory, cls) for cls in sorted(class_to_idx)}
    split = _folder_key(directory)
    visited = {split} | {_folder_key(p) for p in starts.values() if os.path.isdir(p)}
    skipped: list[tuple[str, str]] = []
    samples: list[tuple[str, int]] = []
    duplicates: list[tuple[str, str]] = []
    first_path: dict[tuple[int, int], str] = {}
    for cls, start in starts.items():
        if not os.path.isdir(start):
            continue
        files: dict[str, list[tuple[str, tuple[int, int]]]] = {}
        stack = [start]
        while stack:
            folder = stack.pop()
            device = os.stat(folder).st_dev
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
            here = files.setdefault(folder, [])
            for entry in entries:
                if entry.is_dir():  # follows a link: its real folder decides whether it is walked
                    real = _folder_key(entry.path)
                    if real in visited or split.startswith(real.rstrip(os.sep) + os.sep):  # read, or holds the split
                        skipped.append((entry.path, real))
                        continue
                    visited.add(real)
                    stack.append(entry.path)
                elif entry.is_file() and is_valid(entry.path):
                    if entry.is_symlink():
                        info = os.stat(entry.path)
                        key = (info.st_dev, info.st_ino)
                    else:  # the inode from the directory listing: no stat per file
                        key = (device, entry.inode())
                    here.append((entry.path, key))
        for folder in sorted(files):  # torchvision's order: sorted(os.walk(...)) walks folders by path
            for path, key in files[folder]:
                if key in first_path:
                    duplicates.append((path, first_path[key]))
                else:
                    first_path[key] = path
                samples.append((path, class_to_idx[cls]))
    return samples, skipped, duplicates


class TolerantImageFolder(datasets.ImageFolder):
    """An ImageFolder whose items are ``(image or None, label, index, path, error)``: a file that cannot be
    read comes back as ``None`` plus the reason, and the main process decides what to do with it. Its scan
    never walks a folder twice (:func:`scan_class_folders`) and warns about links it left out and about
    duplicate files."""

    @staticmethod
    def make_dataset(directory: str | Path, class_to_idx: dict[str, int],
                     extensions: tuple[str, ...] | None = None, is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        valid = is_valid_file or (lambda p: has_file_allowed_extension(p, extensions or IMG_EXTENSIONS))
        samples, skipped, duplicates = scan_class_folders(str(directory), class_to_idx, valid)
        if skipped:
            link, real = skipped[0]
            warnings.warn(PckdWarning(
                f"data.root: left out {len(skipped)} linked folder(s) under '{directory}' whose folder is already "
                f"read (a link loop, or a second way to one folder), e.g. '{link}' -> '{real}'"), stacklevel=2)
        if duplicates:
            path, first = duplicates[0]
            warnings.warn(PckdWarning(
                f"data.root: {len(duplicates)} duplicate image file(s) under '{directory}' (one file reached by two "
                f"paths, each used as a sample), e.g. '{path}' is '{first}'"), stacklevel=2)
        found = {label for _, label in samples}
        empty = sorted(cls for cls, label in class_to_idx.items() if label not in found)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return samples

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, int, str, str | None]:
        path, target = self.samples[index]
        try:
            image = self.transform(self.loader(path))
        except _DECODE_ERRORS as exc:
            return None, target, index, path, f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        return image, target, index, path, None

    def verify_headers(self, skip_corrupt: bool) -> None:
        """Open every sample's header (format and size, nothing decoded) before anything is written: a file
        that is no image stops the run naming it, or with ``skip_corrupt`` is reported once (the loader skips
        it); a split of only such files stops either way."""
        paths = [path for path, _ in self.samples]
        if len(paths) > 256:  # bound by file opening, not by the CPU: threads overlap the waits
            from tqdm.auto import tqdm

            with ThreadPoolExecutor(max_workers=16) as pool:
                checks = pool.map(header_problem, paths, chunksize=64)
                # a bar only where the check takes a while (ImageNet: 1.28M files); data.verify_images=false skips it
                problems = list(tqdm(checks, total=len(paths), desc=f"checking images ({Path(self.root).name})",
                                     unit="img", disable=len(paths) < 20_000, leave=False))
        else:
            problems = [header_problem(p) for p in paths]
        bad = [(path, why) for path, why in zip(paths, problems) if why is not None]
        if not bad:
            return
        path, why = bad[0]
        if not skip_corrupt:
            raise UserError(f"data: cannot read image '{path}' ({why}); fix or delete the file, or set "
                            "data.skip_corrupt=true to skip unreadable images")
        if len(bad) == len(paths):
            raise UserError(f"data.skip_corrupt: every image read from '{self.root}' was unreadable ({len(bad)} "
                            f"images, first: '{path}': {why}); fix the files or point data.root at an intact copy")
        warnings.warn(PckdWarning(f"data.skip_corrupt: {len(bad)} of {len(paths)} image(s) under '{self.root}' "
                                  f"are unreadable and will be skipped (first: '{path}': {why})"), stacklevel=2)

    def keep(self, positions: list[int]) -> None:
        """Restrict the dataset to ``positions`` (in order), e.g. for data.classes / limits."""
        self.samples: list[tuple[str, int]] = [self.samples[i] for i in positions]
        self.imgs = self.samples
        self.targets = [s[1] for s in self.samples]


def header_problem(path: str) -> str | None:
    """Why ``path`` is not a readable image according to its header (PIL opens it lazily: the format and size
    are read, no pixels decoded), or None."""
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except _DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if not kind or width <= 0 or height <= 0:
        return "its header gives no image format or size"
    return None


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
