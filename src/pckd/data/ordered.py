"""The training set in index order, un-augmented: for analyses that score or show training images by their
dataset index (``Batch.index``, the index of PCKD's ``preview_records.csv``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from pckd.data.loader import InMemoryLoader


def ordered_training_loader(bundle: Any, batch_size: int, preset: str = "imagenet") -> Any:
    """A loader over ``bundle.train``'s images in index order with the evaluation view (no crop, no flip);
    ``preset`` is ``data.transforms`` (ImageFolder only)."""
    train = bundle.train
    if isinstance(train, InMemoryLoader):
        return InMemoryLoader(train.images, train.labels, batch_size, bundle.augment, shuffle=False,
                              device=train.device, rank=0, world_size=1)
    from pckd.data.imagefolder import ImageFolderLoader, eval_transform

    view = copy.copy(train.dataset)  # the same files and labels, read with the evaluation transform
    view.transform = eval_transform(bundle.input_size, preset)
    return ImageFolderLoader(view, batch_size, shuffle=False, num_workers=0, skip_corrupt=train.skip_corrupt,
                             device=train.device, rank=0, world_size=1)


def training_images(bundle: Any, index: Tensor | list[int], preset: str = "imagenet") -> Tensor:
    """The training images at dataset positions ``index`` as uint8 [n, 3, H, W] on the CPU, as the network
    sees them before normalisation (ImageFolder: resized and centre-cropped)."""
    positions = torch.as_tensor(index, dtype=torch.long)
    train = bundle.train
    if isinstance(train, InMemoryLoader):
        return train.images.index_select(0, positions.to(train.images.device)).cpu()
    from torchvision import transforms

    from pckd.data.imagefolder import resolve_preset

    side = int(bundle.input_size)
    small = resolve_preset(preset, side) == "cifar"  # the resize of eval_transform, without normalising
    view = transforms.Compose([transforms.Resize(side if small else int(side * 256 / 224)),
                               transforms.CenterCrop(side), transforms.PILToTensor()])
    dataset = train.dataset
    return torch.stack([view(dataset.loader(dataset.samples[int(i)][0]).convert("RGB")) for i in positions])

