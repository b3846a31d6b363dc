"""Unreadable ImageFolder data never ends in a 0% "success": with data.skip_corrupt=true a split whose every
image is unreadable stops the run with one line naming the folder; data.image_size is validated as a key."""

from __future__ import annotations

import json
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
    assert len(errors) == 1 and errors[0].startswith(
        f"pckd: error: data.skip_corrupt: every image read from '{root / split}' was unreadable (16 images, "
        f"first: '{root / split / 'cat'}"), err
    assert "Traceback" not in err
    assert not run_dir.exists()  # found by the header check, before the run folder is made


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


def test_a_file_that_is_no_image_is_refused_before_anything_is_written(
    shared_data: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 12 and item 5: the bad file is found by its header when the data is built, so neither a new run's
    folder nor the earlier run that overwrite=true was going to replace is touched."""
    root = _folder(shared_data, tmp_path / "data", ())
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, root, run_dir)) == 0
    kept = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    bad = root / "val" / "dog" / sorted((root / "val" / "dog").iterdir())[3].name
    bad.write_bytes(b"\x00" * 64)
    capsys.readouterr()
    for target, extra in ((tmp_path / "fresh", []), (run_dir, ["overwrite=true"])):
        assert main([*_args(tiny_config, root, target), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pckd: error: data: cannot read image '{bad}' (UnidentifiedImageError") and \
            err.count("\n") == 1, err
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == kept


def test_skip_corrupt_warns_about_bad_headers_once_and_trains(
    shared_data: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(shared_data, tmp_path / "data", ())
    for name in ("0000.jpg", "notes.png"):
        (root / "train" / "dog" / name).write_bytes(b"not an image")
    assert main(_args(tiny_config, root, tmp_path / "run", "data.skip_corrupt=true")) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "will be skipped" in line] == [
        f"pckd: warning: data.skip_corrupt: 2 of 17 image(s) under '{root / 'train'}' are unreadable and will be "
        f"skipped (first: '{root / 'train' / 'dog' / '0000.jpg'}': UnidentifiedImageError: cannot identify image "
        f"file '{root / 'train' / 'dog' / '0000.jpg'}')"], err


def test_an_imagefolder_link_loop_is_one_warning_line_through_the_cli(
    shared_data: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(shared_data, tmp_path / "data", ())
    (root / "train" / "dog" / "loop").symlink_to("../..", target_is_directory=True)  # back to data.root itself
    assert main(_args(tiny_config, root, tmp_path / "run")) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "linked folder" in line]
    assert lines == [f"pckd: warning: data.root: left out 1 linked folder(s) under '{root / 'train'}' whose folder is "
                     f"already read (a link loop, or a second way to one folder), e.g. '{root / 'train' / 'dog' / 'loop'}'"
                     f" -> '{root}'"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1


def test_verify_images_false_skips_the_header_check_and_the_file_is_found_when_read(
    shared_data: Path, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pckd.config import load_config
    from pckd.config.schema import DataConfig
    from pckd.data import build_data
    from pckd.errors import UserError

    root = _folder(shared_data, tmp_path / "data", ())
    bad = sorted((root / "train" / "cat").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    cpu = __import__("torch").device("cpu")
    with pytest.raises(UserError, match="cannot read image"):  # default: refused when the data is built
        build_data(DataConfig(name="imagefolder", root=str(root), image_size=32), 8, 8, 0, cpu)
    build_data(DataConfig(name="imagefolder", root=str(root), image_size=32, verify_images=False), 8, 8, 0, cpu)
    assert load_config(None, ["data.verify_images=false"]).data.verify_images is False
    # unchecked, the bad file is still met when an epoch reads it: skipped with data.skip_corrupt, counted
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, root, run_dir, "data.verify_images=false", "data.skip_corrupt=true")) == 0
    assert "skipped 1 unreadable image(s) in epoch 1" in capsys.readouterr().err
