"""TinyImageNet's standard ``tiny-imagenet-200/`` layout, built in this file from real CIFAR-100 images
(upsampled to 64x64, saved as JPEGs): wnids.txt, words.txt, train/<wnid>/images/*.JPEG and val/images with
val/val_annotations.txt, as the official zip has them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pckd.cli import main
from pckd.config.schema import DataConfig
from pckd.data import build_data
from pckd.data.tinyimagenet import load_tinyimagenet
from pckd.errors import UserError

WNIDS = ["n02124075", "n01443537", "n09999999"]  # deliberately unsorted in wnids.txt


def write_tiny(folder: Path, shared_data: Path, per_class: int = 6, n_val: int = 9) -> dict[str, list]:
    """The folder layout; returns [(path, 0-based label in sorted-wnid order)] of each split."""
    with open(shared_data / "cifar-100-python" / "train", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    rows = np.asarray(entry["data"][: len(WNIDS) * per_class + n_val], dtype=np.uint8).reshape(-1, 3, 32, 32)
    pictures = rows.transpose(0, 2, 3, 1).repeat(2, axis=1).repeat(2, axis=2)  # HWC, 64x64
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\n")
    order = sorted(WNIDS)
    out: dict[str, list] = {"train": [], "val": [], "pixels": pictures}
    k = 0
    for wnid in WNIDS:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            path = images / f"{wnid}_{i}.JPEG"
            picture = Image.fromarray(pictures[k])
            (picture.convert("L") if k == 1 else picture).save(path, quality=95)  # one greyscale file
            out["train"].append((path, order.index(wnid)))
            k += 1
    lines = []
    for i in range(n_val):
        path = folder / "val" / "images" / f"val_{i}.JPEG"
        Image.fromarray(pictures[k]).save(path, quality=95)
        wnid = WNIDS[i % len(WNIDS)]
        lines.append(f"{path.name}\t{wnid}\t0\t0\t63\t63")
        out["val"].append((path, order.index(wnid)))
        k += 1
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture
def tiny(tmp_path: Path, shared_data: Path):
    return tmp_path, write_tiny(tmp_path / "tiny-imagenet-200", shared_data)


def test_splits_labels_and_names_follow_the_folders(tiny):
    root, written = tiny
    pixels = torch.from_numpy(written["pixels"].transpose(0, 3, 1, 2).copy()).int()
    n_train = len(written["train"])
    for split, train in (("train", True), ("val", False)):
        images, labels, names = load_tinyimagenet(root, train=train)
        assert images.dtype == torch.uint8 and images.shape == (len(written[split]), 3, 64, 64)
        source = list(range(n_train)) if train else list(range(n_train, n_train + len(written["val"])))
        items = sorted(zip(written[split], source), key=lambda x: str(x[0][0])) if train else \
            list(zip(written[split], source))  # train files are read class by class, in file-name order
        assert labels.tolist() == [label for (_, label), _ in items]
        for got, (_, k) in zip(images, items):
            if k != 1:  # JPEG (quality 95, chroma subsampled) keeps the real pixels close
                assert (got.int() - pixels[k]).abs().float().mean() < 8  # other images: ~60 apart
        assert names == ["goldfish", "Egyptian cat", "n09999999"]  # sorted wnids; words.txt where it names them
        if train:
            grey = images[[k for _, k in items].index(1)]
            assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # greyscale -> 3 equal channels


def test_build_data_with_resize(tiny):
    root, _ = tiny
    data = build_data(DataConfig(name="tinyimagenet", root=str(root / "tiny-imagenet-200"), resize=32), 6, 9, 0, "cpu")
    assert (data.num_classes, data.input_size, data.train_size, data.test_size) == (3, 32, 18, 9)


def _damage_jpeg(written):
    path = written["val"][4][0]
    path.write_bytes(b"not a jpeg" + path.read_bytes()[:40])
    return path.name


def _no_annotations(folder, written):
    (folder / "val" / "val_annotations.txt").unlink()
    return "val_annotations.txt"


def _unknown_wnid(folder, written):
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    return "line 1"


def _missing_image(folder, written):
    (folder / "val" / "images" / "val_2.JPEG").unlink()
    return "val_2.JPEG"


@pytest.mark.parametrize("damage, fragment", [
    (_no_annotations, "is missing"),
    (lambda f, w: _damage_jpeg(w), "cannot decode TinyImageNet image"),
    (_unknown_wnid, "wnid of wnids.txt"),
    (_missing_image, "is missing"),
])
def test_corrupt_or_missing_val_files_are_one_user_error(tiny, damage, fragment):
    root, written = tiny
    name = damage(root / "tiny-imagenet-200", written)
    with pytest.raises(UserError, match=fragment) as info:
        load_tinyimagenet(root, train=False)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_train_class_folder(tiny):
    root, _ = tiny
    import shutil

    shutil.rmtree(root / "tiny-imagenet-200" / "train" / WNIDS[2])
    with pytest.raises(UserError, match=f"{WNIDS[2]}/images' is missing"):
        load_tinyimagenet(root, train=True)


def test_download_is_refused_with_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="no TinyImageNet download.*tiny-imagenet-200.zip"):
        load_tinyimagenet(tmp_path, train=True, download=True)


def test_train_eval_and_probe_end_to_end(tiny, tmp_path, capsys):
    root, written = tiny
    data = ["data.name=tinyimagenet", f"data.root={root}", "data.resize=32"]
    run = tmp_path / "run"
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    assert main(["train", str(config), "method=ce", "student.arch=resnet8", "train.epochs=1", "train.batch_size=6",
                 "train.device=cpu", "train.progress=false", f"output_dir={run}", *data]) == 0
    assert main(["eval", str(run / "last.pt"), *data, "train.device=cpu"]) == 0
    assert main(["probe", str(run / "last.pt"), *data, "train.device=cpu", "probe.epochs=1",
                 f"probe.output_dir={tmp_path / 'probe'}", "train.progress=false"]) == 0
    assert (tmp_path / "probe" / "probe.json").is_file()
    _damage_jpeg(written)
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), *data, "train.device=cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pckd: error:")]
    assert len(err) == 1 and "val_4.JPEG" in err[0]
