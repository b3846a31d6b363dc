"""The data layer: datasets, batch augmentation and loaders, behind one factory, :func:`build_data`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor

from pckd.config.schema import DataConfig, DatasetName
from pckd.data.augment import NORMALIZATION, BatchAugment, PreAugmented
from pckd.data.batch import Augmenter, Batch
from pckd.data.cifar import load_cifar
from pckd.data.digits import digits_normalization, load_digits_split
from pckd.data.info import DataInfo
from pckd.data.loader import InMemoryLoader
from pckd.data.stl10 import load_stl10
from pckd.data.subset import limit, resize_images, select_classes
from pckd.data.tinyimagenet import load_tinyimagenet
from pckd.errors import UserError

if TYPE_CHECKING:  # torchvision/PIL are imported only when an ImageFolder is actually used
    from pckd.data.imagefolder import ImageFolderLoader

DATASETS = tuple(m.value for m in DatasetName)

Loader = Union[InMemoryLoader, "ImageFolderLoader"]

__all__ = [
    "DATASETS",
    "Augmenter",
    "Batch",
    "BatchAugment",
    "DataBundle",
    "InMemoryLoader",
    "PreAugmented",
    "build_data",
]


@dataclass
class DataBundle:
    """Everything the trainer needs from the data layer.

    train_size / test_size count the whole dataset (all ranks); each loader's ``local_size`` is this rank's.
    """

    train: Loader
    test: Loader
    augment: Augmenter
    num_classes: int
    input_size: int
    class_names: list[str]
    train_size: int
    test_size: int

    @property
    def info(self) -> DataInfo:
        """What a method may know about this data (classes, training-set size, input size)."""
        return DataInfo(num_classes=self.num_classes, train_size=self.train_size, input_size=self.input_size)


def default_num_workers() -> int:
    """Loader processes when ``data.num_workers`` is unset: this process's share of the CPUs it may run on
    (split between the ranks of this machine under torchrun), less one for the training process, at most 8."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    per_rank = cpus // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(0, min(8, per_rank - 1))


def _check_num_classes(cfg: DataConfig, found: int) -> None:
    if cfg.num_classes is not None and cfg.num_classes != found:
        via = f" (data.classes={cfg.classes})" if cfg.classes is not None else ""
        raise UserError(
            f"data.num_classes={cfg.num_classes} but the data has {found} classes{via}; "
            f"remove data.num_classes or set it to {found}"
        )


def _subset(cfg: DataConfig, images: Tensor, labels: Tensor, n_available: int, train: bool) -> tuple[Tensor, Tensor]:
    if cfg.classes is not None:
        images, labels = select_classes(images, labels, cfg.classes, available=n_available)
    n = cfg.train_limit if train else cfg.test_limit
    if n is not None:
        images, labels = limit(images, labels, n, key="data.train_limit" if train else "data.test_limit")
    return images, labels


def _load_split(cfg: DataConfig, train: bool) -> tuple[Tensor, Tensor, list[str]]:
    """One split of an in-memory dataset other than digits: uint8 images, int64 labels, class names."""
    if cfg.name == "stl10":
        return load_stl10(cfg.root, train, download=cfg.download)
    if cfg.name == "tinyimagenet":
        return load_tinyimagenet(cfg.root, train, download=cfg.download)
    return load_cifar(str(cfg.name), cfg.root, train, download=cfg.download)


def _in_memory(cfg: DataConfig, batch_size: int, eval_batch_size: int, seed: int, device: torch.device) -> DataBundle:
    if cfg.name == "digits":
        splits = [load_digits_split(train) for train in (True, False)]
        mean, std = digits_normalization()
    else:
        splits = [_load_split(cfg, train) for train in (True, False)]
        mean, std = NORMALIZATION[str(cfg.name)]
    class_names = splits[0][2]
    (x_train, y_train), (x_test, y_test) = (
        _subset(cfg, images, labels, len(class_names), train)
        for (images, labels, _), train in zip(splits, (True, False))
    )
    if cfg.resize is not None:
        x_train, x_test = resize_images(x_train, cfg.resize), resize_images(x_test, cfg.resize)
    num_classes = cfg.classes if cfg.classes is not None else len(class_names)
    _check_num_classes(cfg, num_classes)
    if cfg.on_device:
        # One copy per run; every batch is then sliced and augmented on the device.
        x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    augment = BatchAugment(mean, std)
    return DataBundle(
        train=InMemoryLoader(x_train, y_train, batch_size, augment, shuffle=True, seed=seed, device=device),
        test=InMemoryLoader(x_test, y_test, eval_batch_size, augment, shuffle=False, seed=seed, device=device),
        augment=augment,
        num_classes=num_classes,
        input_size=int(x_train.shape[-1]),
        class_names=class_names[:num_classes],
        train_size=int(x_train.shape[0]),
        test_size=int(x_test.shape[0]),
    )


def _positions(cfg: DataConfig, targets: list[int], n_available: int, train: bool) -> list[int]:
    """The sample positions an ImageFolder split keeps under data.classes and the limits."""
    labels = torch.tensor(targets, dtype=torch.long)
    positions, _ = _subset(cfg, torch.arange(len(targets)), labels, n_available, train)  # same rules as CIFAR
    return positions.tolist()


def _imagefolder(cfg: DataConfig, batch_size: int, eval_batch_size: int, seed: int, device: torch.device,
                 second_view: str) -> DataBundle:
    from pckd.data.imagefolder import ImageFolderLoader, TolerantImageFolder, open_split

    train_set = open_split(cfg.root, "train", cfg.image_size, str(cfg.transforms), second_view=second_view)
    test_set = open_split(cfg.root, "val", cfg.image_size, str(cfg.transforms))
    if test_set.classes != train_set.classes:
        raise UserError(
            f"data.root: the class folders of '{cfg.root}/val' differ from those of '{cfg.root}/train'; "
            "give both splits the same class subfolders"
        )
    n_available = len(train_set.classes)
    for dataset, train in ((train_set, True), (test_set, False)):
        dataset.keep(_positions(cfg, dataset.targets, n_available, train))
        if cfg.verify_images:  # only the images this run reads; before anything is written
            dataset.verify_headers(cfg.skip_corrupt)
    num_classes = cfg.classes if cfg.classes is not None else n_available
    _check_num_classes(cfg, num_classes)
    workers = default_num_workers() if cfg.num_workers is None else cfg.num_workers
    def loader(dataset: TolerantImageFolder, size: int, shuffle: bool) -> ImageFolderLoader:
        return ImageFolderLoader(dataset, size, shuffle=shuffle, seed=seed, num_workers=workers,
                                 skip_corrupt=cfg.skip_corrupt, device=device,
                                 second_view=second_view if shuffle else "")

    train_loader = loader(train_set, batch_size, True)
    return DataBundle(
        train=train_loader,
        test=loader(test_set, eval_batch_size, False),
        augment=train_loader.augment,
        num_classes=num_classes,
        input_size=cfg.image_size,
        class_names=list(train_set.classes[:num_classes]),
        train_size=len(train_set),
        test_size=len(test_set),
    )


def build_data(
    data_cfg: DataConfig, batch_size: int, eval_batch_size: int, seed: int, device: torch.device,
    second_view: str = "",
) -> DataBundle:
    """Load the dataset ``data_cfg.name`` and wrap it in training and evaluation loaders.

    ``batch_size`` and ``eval_batch_size`` are global (split across ranks); ``seed`` fixes the per-epoch
    training order. Applies data.classes, data.train_limit, data.test_limit and checks data.num_classes.
    ``second_view``: the training loader of an ImageFolder also makes a second view of each image in its workers,
    ``weak`` (another crop + flip, for two-view methods) or ``strong`` (MLD's); in-memory data makes any view on
    the device whenever a method asks, so the flag changes nothing there.
    """
    device = torch.device(device)
    if data_cfg.name == "imagefolder":
        return _imagefolder(data_cfg, batch_size, eval_batch_size, seed, device, second_view)
    return _in_memory(data_cfg, batch_size, eval_batch_size, seed, device)
