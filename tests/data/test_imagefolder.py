"""ImageFolder path on the shared cifar10-jpeg-mini JPEGs: sizes, batches, order, workers, corrupt files."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from pckd.config.schema import DataConfig
from pckd.data import PreAugmented, build_data
from pckd.data.loader import epoch_permutation
from pckd.errors import UserError


def _bundle(root: Path, **overrides):
    overrides.setdefault("num_workers", 0)
    cfg = DataConfig(name="imagefolder", root=str(root), image_size=32, **overrides)
    return build_data(cfg, batch_size=64, eval_batch_size=100, seed=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def mini(shared_data: Path) -> Path:
    return shared_data / "cifar10-jpeg-mini"


def test_sizes_classes_and_float_batches(mini: Path):
    bundle = _bundle(mini)
    assert (bundle.train_size, bundle.test_size, bundle.num_classes, bundle.input_size) == (1000, 200, 10, 32)
    assert bundle.class_names[:2] == ["airplane", "automobile"] and isinstance(bundle.augment, PreAugmented)
    assert len(bundle.train) == 16 and len(bundle.test) == 2
    bundle.train.set_epoch(2)
    batch = next(iter(bundle.train))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (64, 3, 32, 32)
    assert batch.images.min() < -1.5 and batch.images.max() > 1.5  # ImageNet-normalised
    assert torch.equal(batch.index, epoch_permutation(1000, 1, 2)[:64])  # the in-memory loader's order
    assert torch.equal(batch.labels, batch.index // 100)  # samples are sorted by class, 100 per class
    assert batch.augment.rotated_views(batch.images).shape == (256, 3, 32, 32)


def test_evaluation_epoch_with_two_workers(mini: Path):
    bundle = _bundle(mini, num_workers=2)
    batches = list(bundle.test)
    assert [b.size for b in batches] == [100, 100]
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(200))
    assert torch.equal(torch.cat([b.labels for b in batches]), torch.arange(200) // 20)
    again = torch.cat([b.images for b in bundle.test])  # persistent workers, deterministic val transform
    torch.testing.assert_close(again, torch.cat([b.images for b in batches]))


def test_subsets_and_resume_step(mini: Path):
    bundle = _bundle(mini, classes=3, train_limit=250, test_limit=30)
    assert (bundle.train_size, bundle.test_size, bundle.num_classes) == (250, 30, 3)
    assert bundle.class_names == ["airplane", "automobile", "bird"]
    bundle.train.set_epoch(0, start_step=3)
    tail = [b.index for b in bundle.train]
    assert len(tail) == 1 and torch.equal(tail[0], epoch_permutation(250, 1, 0)[192:])


def _corrupt_copy(mini: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "mini"
    shutil.copytree(mini, root)
    garbage = root / "train" / "airplane" / "0003.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 10)
    truncated = root / "train" / "airplane" / "0007.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    return root, [garbage, truncated]


def test_corrupt_image_stops_with_its_path(mini: Path, tmp_path: Path):
    root, bad = _corrupt_copy(mini, tmp_path)
    bundle = _bundle(root, train_limit=100)  # only the airplane folder
    with pytest.raises(UserError) as err:
        list(bundle.train)
    message = str(err.value)
    assert "\n" not in message and "data.skip_corrupt=true" in message
    assert any(f"'{path}'" in message for path in bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_images_are_skipped_and_counted(mini: Path, tmp_path: Path, workers: int):
    root, _ = _corrupt_copy(mini, tmp_path)
    bundle = _bundle(root, train_limit=100, skip_corrupt=True, num_workers=workers)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        batches = list(bundle.train)
    indices = torch.cat([b.index for b in batches])
    assert indices.numel() == 98 and set(range(100)) - set(indices.tolist()) == {3, 7}
    assert all(b.images.shape[0] == b.labels.shape[0] == b.index.shape[0] for b in batches)
    assert bundle.train.corrupt_count == 2
    assert any("skipped 2 unreadable image(s)" in str(r.message) for r in records)


def test_missing_split_folder(tmp_path: Path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"data.root: no 'val' folder under"):
        _bundle(tmp_path)
