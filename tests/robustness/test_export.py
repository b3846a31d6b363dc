"""`pckd export` never writes over anything but a regular file that is not its input: devices, folders, links and
the checkpoint itself are refused with one line and exit 2; a failed write is exit 1 and leaves no temp file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from pckd.cli import main
from pckd.errors import UserError
from pckd.models import create_model, read_checkpoint
from pckd.models.export import check_export_target


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "A.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, path)
    return path


def _export(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["export", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("pckd: error:")]


def test_export_onto_its_own_input_keeps_the_checkpoint(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = ckpt.read_bytes()
    code, errors = _export([str(ckpt), str(ckpt)], capsys)
    assert code == 2 and len(errors) == 1 and ".safetensors" in errors[0]
    assert ckpt.read_bytes() == before


def test_export_onto_the_input_under_another_name_is_refused(ckpt: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "w.safetensors"
    assert _export([str(ckpt), str(first)], capsys)[0] == 0
    alias = tmp_path / "alias.safetensors"
    os.link(first, alias)  # the same file through a hard link
    before = first.read_bytes()
    for out in (first, alias):
        code, errors = _export([str(first), str(out)], capsys)
        assert code == 2 and len(errors) == 1 and "is the input" in errors[0], errors
    assert first.read_bytes() == before


def test_a_device_or_fifo_output_is_not_replaced(ckpt: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe.safetensors"  # stands in for /dev/null: a file that is not a regular file
    os.mkfifo(fifo)
    code, errors = _export([str(ckpt), str(fifo)], capsys)
    assert code == 2 and len(errors) == 1 and "not a regular file" in errors[0]
    assert fifo.is_fifo()
    with pytest.raises(UserError):  # /dev/null itself is refused by the check, before anything is written
        check_export_target(ckpt, Path("/dev/null"))
    assert Path("/dev/null").is_char_device()


def test_a_folder_or_link_output_is_refused(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, errors = _export([str(ckpt), str(folder)], capsys)
    assert code == 2 and len(errors) == 1 and "a folder" in errors[0]
    assert (folder / "keep.txt").read_text() == "mine"
    code, errors = _export([str(ckpt), str(tmp_path)], capsys)
    assert code == 2 and len(errors) == 1 and ".safetensors" in errors[0]

    target = tmp_path / "precious.safetensors"
    target.write_text("user data")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    code, errors = _export([str(ckpt), str(link)], capsys)
    assert code == 2 and len(errors) == 1 and "a link" in errors[0]
    assert link.is_symlink() and target.read_text() == "user data"


def test_missing_parent_folders_are_created(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a" / "b" / "w.safetensors"
    assert _export([str(ckpt), str(out)], capsys)[0] == 0
    assert set(read_checkpoint(out)) == set(torch.load(ckpt)["model"])
    out.write_bytes(b"old")  # an existing regular file is replaced
    assert _export([str(ckpt), str(out)], capsys)[0] == 0 and out.read_bytes() != b"old"
    (tmp_path / "afile").write_text("x")
    code, errors = _export([str(ckpt), str(tmp_path / "afile" / "w.safetensors")], capsys)
    assert code == 2 and len(errors) == 1 and "afile" in errors[0]


def test_disk_full_is_exit_1_naming_the_file_without_temp(ckpt: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "out" / "w.safetensors"
    code, errors = _export([str(ckpt), str(out)], capsys)
    assert code == 1 and len(errors) == 1 and str(out) in errors[0] and "No space left" in errors[0]
    assert list(out.parent.iterdir()) == []
