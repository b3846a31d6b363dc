"""Unreadable ImageFolder data never ends in a 0% "success": with data.skip_corrupt=true a split whose every
image is unreadable stops the run with one line naming the folder; data.image_size is validated as a key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pckd.cli import main


def _folder(shared_data: Path, root: Path, spoil: tuple[str, ...]) -> Path:
    """Eight real JPEGs per class and split (two classes); every file of the splits in ``spoil`` cut to 100 bytes."""
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((shared_data / "cifar10-jpeg-mini" / split / cls).iterdir())[:8]:
                dst = root / split / cls / src.name
                if split in spoil:
                    dst.write_bytes(src.read_bytes()[:100])
                else:
                    shutil.copyfile(src, dst)
    return root


def _args(config: Path, root: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", str(config), f"output_dir={run_dir}", "data.name=imagefolder", f"data.root={root}",
            "data.image_size=32", "train.epochs=1", *extra]


@pytest.mark.parametrize("split", ["train", "val"])
def test_skip_corrupt_stops_when_every_image_of_a_split_is_unreadable(
    split: str, shared_data: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(shared_data, tmp_path / "data", (split,))
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, root, run_dir, "data.skip_corrupt=true")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pckd: error:")]
    where = " in epoch 1" if split == "train" else ""
    assert len(errors) == 1 and errors[0].startswith(
        f"pckd: error: data.skip_corrupt: every image read from '{root / split}'{where} was unreadable (16 images, "
        f"first: '{root / split / 'cat'}"), err
    assert "Traceback" not in err
    assert not (run_dir / "summary.json").exists() and not (run_dir / "best.pt").exists()


def test_skip_corrupt_with_some_readable_images_still_trains(
    shared_data: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(shared_data, tmp_path / "data", ())
    (root / "train" / "cat" / sorted((root / "train" / "cat").iterdir())[0].name).write_bytes(b"not a jpeg")
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, root, run_dir, "data.skip_corrupt=true")) == 0
    assert "skipped 1 unreadable image(s) in epoch 1" in capsys.readouterr().err
    assert (run_dir / "summary.json").exists()


@pytest.mark.parametrize("value, rule", [("0", "must be positive"), ("-32", "must be positive")])
def test_image_size_is_validated_as_a_key(value: str, rule: str, shared_data: Path, tiny_config: Path,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(shared_data, tmp_path / "data", ())
    run_dir = tmp_path / "run"
    assert main([*_args(tiny_config, root, run_dir, "data.skip_corrupt=true"), f"data.image_size={value}"]) == 2
    assert capsys.readouterr().err == f"pckd: error: config key 'data.image_size'={value} {rule}\n"
    assert not run_dir.exists()
