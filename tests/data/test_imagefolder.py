"""ImageFolder path on the shared cifar10-jpeg-mini JPEGs: sizes, batches, order, workers, corrupt files."""

from __future__ import annotations

import os
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


def test_a_file_that_is_no_image_stops_when_the_data_is_built(mini: Path, tmp_path: Path):
    root, (garbage, _) = _corrupt_copy(mini, tmp_path)
    with pytest.raises(UserError) as err:
        _bundle(root, train_limit=100)  # the header check, before any batch (and any file of the run)
    message = str(err.value)
    assert "\n" not in message and "data.skip_corrupt=true" in message
    assert message.startswith(f"data: cannot read image '{garbage}' (UnidentifiedImageError")


def test_a_truncated_image_with_an_intact_header_stops_when_read(mini: Path, tmp_path: Path):
    root, (garbage, truncated) = _corrupt_copy(mini, tmp_path)
    shutil.copyfile(mini / "train" / "airplane" / garbage.name, garbage)
    whole = (mini / "train" / "airplane" / truncated.name).read_bytes()
    truncated.write_bytes(whole[: len(whole) - 200])  # the header and part of the pixels
    bundle = _bundle(root, train_limit=100)  # only the airplane folder; its headers are all intact
    with pytest.raises(UserError) as err:
        list(bundle.train)
    message = str(err.value)
    assert "\n" not in message and "data.skip_corrupt=true" in message and f"'{truncated}'" in message


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_images_are_skipped_and_counted(mini: Path, tmp_path: Path, workers: int):
    root, _ = _corrupt_copy(mini, tmp_path)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        bundle = _bundle(root, train_limit=100, skip_corrupt=True, num_workers=workers)
        batches = list(bundle.train)
    indices = torch.cat([b.index for b in batches])
    assert indices.numel() == 98 and set(range(100)) - set(indices.tolist()) == {3, 7}
    assert all(b.images.shape[0] == b.labels.shape[0] == b.index.shape[0] for b in batches)
    assert bundle.train.corrupt_count == 2
    assert any("skipped 2 unreadable image(s)" in str(r.message) for r in records)
    assert any("2 of 100 image(s)" in str(r.message) and "0003.jpg" in str(r.message) for r in records)  # header


def _linked_tree(mini: Path, root: Path) -> Path:
    """Two classes of four real JPEGs per split, then the attacks: a link from a class back to the split (a loop
    through every class), a class folder linking to itself, a link to a sibling class, and a file link and a
    hard link to another class's image. A class folder that is itself a link to a folder outside stays legal."""
    for split in ("train", "val"):
        for cls in ("airplane", "bird"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((mini / split / cls).iterdir())[:4]:
                shutil.copyfile(src, root / split / cls / src.name)
    outside = root / "outside" / "ship"
    outside.mkdir(parents=True)
    for src in sorted((mini / "train" / "ship").iterdir())[:4]:
        shutil.copyfile(src, outside / src.name)
    (root / "train" / "ship").symlink_to(outside, target_is_directory=True)
    (root / "val" / "ship").mkdir()
    shutil.copyfile(sorted((mini / "val" / "ship").iterdir())[0], root / "val" / "ship" / "0000.jpg")
    train = root / "train"
    (train / "bird" / "loop").symlink_to("..", target_is_directory=True)
    (train / "airplane" / "self").symlink_to(".", target_is_directory=True)
    (train / "bird" / "planes").symlink_to("../airplane", target_is_directory=True)
    first_plane = sorted((train / "airplane").glob("*.jpg"))[0]
    (train / "bird" / "zz-linked.jpg").symlink_to(first_plane)
    os.link(first_plane, train / "bird" / "zz-hard.jpg")
    return root


def test_link_loops_are_never_walked_and_duplicates_are_warned_about(mini: Path, tmp_path: Path):
    root = _linked_tree(mini, tmp_path / "tree")
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        bundle = _bundle(root)
    samples = bundle.train.dataset.samples
    names = [(Path(p).relative_to(root / "train").as_posix(), label) for p, label in samples]
    planes = sorted(p.name for p in (root / "train" / "airplane").glob("*.jpg"))
    birds = sorted(p.name for p in (root / "train" / "bird").glob("0*.jpg"))
    ships = sorted(p.name for p in (root / "outside" / "ship").iterdir())
    assert names == ([(f"airplane/{n}", 0) for n in planes] + [(f"bird/{n}", 1) for n in birds]
                     + [("bird/zz-hard.jpg", 1), ("bird/zz-linked.jpg", 1)] + [(f"ship/{n}", 2) for n in ships])
    messages = [str(r.message) for r in records]
    links = [m for m in messages if "linked folder(s)" in m]
    assert len(links) == 1 and links[0].startswith(f"data.root: left out 3 linked folder(s) under '{root / 'train'}'")
    dupes = [m for m in messages if "duplicate image file(s)" in m]
    assert len(dupes) == 1 and f"2 duplicate image file(s) under '{root / 'train'}'" in dupes[0]
    assert f"'{root / 'train' / 'bird' / 'zz-hard.jpg'}' is '{root / 'train' / 'airplane' / planes[0]}'" in dupes[0]
    assert (bundle.train_size, bundle.num_classes) == (14, 3)


def test_missing_split_folder(tmp_path: Path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"data.root: no 'val' folder under"):
        _bundle(tmp_path)
