"""The batch a training step receives, and the augmentation contract methods draw views from.

The trainer hands every method the *raw* batch plus an :class:`Augmenter`; a method asks for the views it
needs (one standard view, 4 rotated views, two views, ...). So the trainer never branches on method names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


class Augmenter(Protocol):
    """Turns raw batches into normalised float views, on the batch's device, for whole batches at once."""

    def standard(self, images: Tensor) -> Tensor:
        """One training view per image: random crop (pad 4) + horizontal flip + normalisation. [B,3,H,W]."""
        ...

    def rotated_views(self, images: Tensor, n_rotations: int = 4) -> Tensor:
        """n_rotations views per image, flat index ``n*i + j`` = image i rotated by j*90 degrees CCW
        (``torch.rot90`` on H,W); one flip per image shared by its copies; an independent crop per copy.
        Returns [n*B,3,H,W]."""
        ...

    def strong(self, images: Tensor) -> Tensor:
        """MLD's strong view: an independent crop + flip, the released RandAugment (2 of 14 ops, random
        magnitudes) and Cutout, drawn per image, normalised. [B,3,H,W]."""
        ...

    def evaluate(self, images: Tensor) -> Tensor:
        """Test-time view: normalisation only. [B,3,H,W]."""
        ...


@dataclass
class Batch:
    """A training batch as the data layer delivers it.

    images: uint8 [B,3,H,W] for in-memory datasets (augmented on the device by ``augment``), or an already
        augmented float tensor for worker-fed datasets (ImageFolder), in which case ``augment`` only rotates /
        normalises as applicable.
    labels: int64 [B].
    index: int64 [B], dataset indices (for memory banks and per-sample records).
    augment: the augmenter that turns ``images`` into views.
    """

    images: Tensor
    labels: Tensor
    index: Tensor
    augment: Augmenter

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])
