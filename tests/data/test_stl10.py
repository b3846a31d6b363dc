"""STL-10's binary distribution, built in this file from real CIFAR-100 images (upsampled to 96x96 by pixel
repetition) in the exact on-disk layout: column-major 3x96x96 uint8 planes, uint8 labels 1..10."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pckd.cli import main
from pckd.config.schema import DataConfig
from pckd.data import build_data
from pckd.data.stl10 import load_stl10
from pckd.errors import UserError


def _cifar_rows(shared_data: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    with open(shared_data / "cifar-100-python" / "test", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    images = np.asarray(entry["data"][:n], dtype=np.uint8).reshape(n, 3, 32, 32)
    return images.repeat(3, axis=2).repeat(3, axis=3), np.asarray(entry["fine_labels"][:n]) % 10


def write_stl10(folder: Path, shared_data: Path, n_train: int = 40, n_test: int = 20) -> dict[str, tuple]:
    """stl10_binary/ with train and test splits; returns the [N,3,96,96] HWC-correct images and 0-based labels."""
    folder.mkdir(parents=True)
    images, labels = _cifar_rows(shared_data, n_train + n_test)
    out = {}
    for split, sl in (("train", slice(0, n_train)), ("test", slice(n_train, n_train + n_test))):
        x, y = images[sl], labels[sl]
        # each plane stored column-major: write the transposed (W, H) plane row by row
        (folder / f"{split}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        out[split] = (x, y)
    return out


@pytest.fixture
def stl10(tmp_path: Path, shared_data: Path):
    return tmp_path, write_stl10(tmp_path / "stl10_binary", shared_data)


def test_images_and_labels_follow_the_binary_layout(stl10):
    root, written = stl10
    for split, train in (("train", True), ("test", False)):
        images, labels, names = load_stl10(root, train=train)
        x, y = written[split]
        assert images.dtype == torch.uint8 and images.shape == (len(y), 3, 96, 96)
        assert torch.equal(images, torch.from_numpy(x)) and labels.tolist() == y.tolist()
        assert names[0] == "airplane" and len(names) == 10
    # the folder itself works as data.root too
    assert torch.equal(load_stl10(root / "stl10_binary", train=False)[0], torch.from_numpy(written["test"][0]))


def test_build_data_resizes_once_to_32(stl10):
    """data.resize=32 matches PIL's antialiased bilinear resize (what torchvision's Resize does to PIL images,
    as CRD's transfer protocol) to within one grey level."""
    from PIL import Image

    root, written = stl10
    data = build_data(DataConfig(name="stl10", root=str(root), resize=32), 8, 16, 0, "cpu")
    assert (data.num_classes, data.input_size, data.train_size, data.test_size) == (10, 32, 40, 20)
    pil = np.stack([np.asarray(Image.fromarray(x.transpose(1, 2, 0)).resize((32, 32), Image.BILINEAR))
                    for x in written["test"][0]]).transpose(0, 3, 1, 2)
    got = data.test.images
    assert got.shape == (20, 3, 32, 32) and got.dtype == torch.uint8
    assert (got.int() - torch.from_numpy(pil).int()).abs().max() <= 1


@pytest.mark.parametrize("damage, fragment", [
    (lambda f: (f / "test_X.bin").write_bytes((f / "test_X.bin").read_bytes()[:-5]), "not a whole number"),
    (lambda f: (f / "test_y.bin").write_bytes(b"\x00" * 20), "label 0"),
    (lambda f: (f / "test_y.bin").write_bytes(b"\x01" * 19), "19 labels for the 20 images"),
    (lambda f: (f / "test_y.bin").unlink(), "test_y.bin' is missing"),
])
def test_corrupt_or_missing_files_are_one_user_error(stl10, damage, fragment):
    root, _ = stl10
    damage(root / "stl10_binary")
    with pytest.raises(UserError, match=fragment):
        load_stl10(root, train=False)


def test_no_files_and_no_download_says_how(tmp_path):
    with pytest.raises(UserError, match="no STL-10 files.*data.download=true"):
        load_stl10(tmp_path, train=True)


def test_train_eval_and_probe_end_to_end(stl10, tmp_path, capsys):
    root, _ = stl10
    data = ["data.name=stl10", f"data.root={root}", "data.resize=32"]
    run = tmp_path / "run"
    args = ["method=ce", "student.arch=resnet8", "train.epochs=1", "train.batch_size=16", "train.device=cpu",
            "train.progress=false", f"output_dir={run}", *data]
    assert main(["train", *_config(tmp_path), *args]) == 0
    assert (run / "summary.json").is_file()
    assert main(["eval", str(run / "last.pt"), *data, "train.device=cpu"]) == 0
    probe_dir = tmp_path / "probe"
    settings = tmp_path / "stl10-probe.yaml"  # as configs/transfer/stl10.yaml, with this test's root
    settings.write_text(f"data: {{name: stl10, root: '{root}', resize: 32}}\nprobe: {{normalization: cifar100}}\n")
    assert main(["probe", "--config", str(settings), str(run / "last.pt"), "train.device=cpu", "probe.epochs=2",
                 f"probe.output_dir={probe_dir}", "train.progress=false"]) == 0
    result = json.loads((probe_dir / "probe.json").read_text())
    assert result["data"]["name"] == "stl10" and result["probe"]["normalization"] == "cifar100"
    # a corrupt file stops every command with one line
    (root / "stl10_binary" / "test_y.bin").write_bytes(b"\x0b" * 20)
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), *data, "train.device=cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pckd: error:")]
    assert len(err) == 1 and "label 11" in err[0]


def _config(tmp_path: Path) -> list[str]:
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return [str(path)]
