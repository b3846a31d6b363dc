"""Checkpoints: atomic writes, fallback to the previous good file, and pickled code that never runs."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from pckd.cli import main
from pckd.engine import checkpoint_io, trainer
from pckd.engine.checkpoint_io import LAST, PREVIOUS, atomic_save, load_checkpoint_file, load_resume_checkpoint
from pckd.errors import PckdWarning, UserError
from tests.models.test_checkpoint import _Payload


def _state(value: float) -> dict[str, Any]:
    return {"format": "pckd", "epoch": int(value), "step": 0, "model": {"w": torch.full((3,), value)}}


def _disk_full(*_: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    last, prev = tmp_path / LAST, tmp_path / PREVIOUS
    atomic_save(_state(1), last, keep_previous=prev)
    atomic_save(_state(2), last, keep_previous=prev)
    assert load_checkpoint_file(prev)["epoch"] == 1 and load_checkpoint_file(last)["epoch"] == 2

    monkeypatch.setattr(checkpoint_io.os, "fsync", _disk_full)  # the data never reaches the disk
    with pytest.raises(OSError, match="No space left"):
        atomic_save(_state(3), last, keep_previous=prev)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LAST, PREVIOUS])  # no temp file left behind
    assert load_checkpoint_file(last)["epoch"] == 2 and load_checkpoint_file(prev)["epoch"] == 1
    assert torch.equal(load_checkpoint_file(last)["model"]["w"], torch.full((3,), 2.0))


def test_failed_save_while_training_stops_with_exit_1_and_keeps_last_good(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_save, calls = trainer.atomic_save, {"n": 0}

    def failing_second_save(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
        calls["n"] += Path(path).name == LAST
        if calls["n"] >= 2:  # epoch 2's last.pt
            with monkeypatch.context() as m:
                m.setattr(checkpoint_io.os, "fsync", _disk_full)
                return real_save(obj, path, keep_previous)
        return real_save(obj, path, keep_previous)

    monkeypatch.setattr(trainer, "atomic_save", failing_second_save)
    run_dir = tmp_path / "run"
    code = main(["train", str(tiny_config), f"output_dir={run_dir}", "data.train_limit=32", "data.test_limit=20",
                 "train.eval_batch_size=20"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"could not write checkpoint '{run_dir / LAST}' (No space left on device)" in err
    assert f"then resume with: pckd train {run_dir / 'config.yaml'} resume=true" in err
    assert load_checkpoint_file(run_dir / LAST)["epoch"] == 1  # epoch 1's checkpoint survived
    assert not list(run_dir.glob(".*.tmp-*"))


def _two_epoch_run(tiny_config: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", str(tiny_config), f"output_dir={run_dir}", "data.train_limit=32", "data.test_limit=20",
            "train.eval_batch_size=20", *extra]


def test_truncated_last_is_named_and_resume_falls_back_to_previous(
    tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(_two_epoch_run(tiny_config, run_dir)) == 0
    last = run_dir / LAST
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # a power cut on a filesystem without ordered writes

    with pytest.raises(UserError, match=rf"checkpoint '{last}' is truncated or corrupt"):
        load_checkpoint_file(last)
    with pytest.warns(PckdWarning, match=rf"'{last}' is truncated.*falling back to .*'{run_dir / PREVIOUS}'"):
        state, path = load_resume_checkpoint(run_dir)
    assert path.name == PREVIOUS and state["epoch"] == 1

    capsys.readouterr()
    assert main(_two_epoch_run(tiny_config, run_dir, "resume=true", "train.epochs=3")) == 0
    captured = capsys.readouterr()
    warnings_ = [line for line in captured.err.splitlines() if line.startswith("pckd: warning:")]
    fallback = [line for line in warnings_ if "truncated" in line]
    assert len(fallback) == 1 and str(last) in fallback[0] and "last.prev.pt" in fallback[0]
    # the only other line is the note that train.epochs grew (the resumed cosine schedule changes)
    assert [line for line in warnings_ if "truncated" not in line and "train.epochs" not in line] == []
    assert f"resuming {run_dir} from last.prev.pt: epoch 2, step 0" in captured.out
    assert load_checkpoint_file(last)["epoch"] == 3


def test_resume_with_every_checkpoint_corrupt_names_both_files(tmp_path: Path) -> None:
    for name in (LAST, PREVIOUS):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError) as info:
        load_resume_checkpoint(tmp_path)
    message = str(info.value)
    assert str(tmp_path / LAST) in message and str(tmp_path / PREVIOUS) in message and "\n" not in message


def test_malicious_teacher_checkpoint_is_refused_through_pckd_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "teacher.pth"
    torch.save({"model": {"fc.weight": torch.zeros(10, 64)}, "extra": _Payload(marker)}, evil)
    run_dir = tmp_path / "run"
    config = tmp_path / "kd.yaml"
    config.write_text("method: kd\nstudent: {arch: resnet8}\ndata: {name: digits}\n"
                      "train: {epochs: 1, device: cpu, progress: false}\n")
    code = main(["train", str(config), "teacher.arch=resnet8", f"teacher.checkpoint={evil}", f"output_dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("pckd: error:") == 1 and "Traceback" not in err
    assert str(evil) in err and "teacher.trust_checkpoint=true" in err and "NOT loaded or executed" in err
    assert not marker.exists()  # the payload never ran
    assert not run_dir.exists()  # refused before anything was written

    export = tmp_path / "out.safetensors"
    assert main(["export", str(evil), str(export)]) == 2  # export reads the same safe way
    assert not marker.exists() and not export.exists()


def _spoil(kind: str, good: dict[str, Any], marker: Path) -> Any:
    """A last.pt that loads (or is refused) but cannot be resumed from, built from a real checkpoint."""
    if kind == "pickled code":
        return {**good, "model": _Payload(marker)}
    if kind == "bare format tag":
        return {"format": "pckd"}
    if kind == "missing entries":
        return {k: v for k, v in good.items() if k not in ("optimizer", "rng")}
    if kind == "wrong types":
        return {**good, "epoch": "two", "model": dict.fromkeys(good["model"], 1.0)}
    if kind == "wrong state-dict keys":
        return {**good, "model": {f"renamed.{k}": v for k, v in good["model"].items()}}
    if kind == "wrong shapes":
        return {**good, "model": {k: v.flatten()[:1] for k, v in good["model"].items()}}
    raise AssertionError(kind)


EXPECTED_REASON = {
    "pickled code": "contains pickled code/objects (io.open) and was NOT loaded or executed",
    "bare format tag": "is not a complete pckd checkpoint (missing method, arch, model, heads, optimizer",
    "missing entries": "is not a complete pckd checkpoint (missing optimizer, rng)",
    "wrong types": "is not a complete pckd checkpoint (wrong type of epoch, model)",
    "wrong state-dict keys": "does not fit this run's model (missing 'conv1.weight';",
    "wrong shapes": "does not fit this run's model ('conv1.weight' has shape (1,);",
}


@pytest.mark.parametrize("kind", list(EXPECTED_REASON))
def test_an_unusable_last_pt_is_named_and_resume_falls_back_to_previous(
    kind: str, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint that is complete on disk but malicious or structurally invalid is as unusable as a truncated
    one: one warning naming the file and why, and the resume continues from last.prev.pt (never a traceback)."""
    run_dir = tmp_path / "run"
    assert main(_two_epoch_run(tiny_config, run_dir)) == 0
    last = run_dir / LAST
    marker = tmp_path / "payload-ran"
    torch.save(_spoil(kind, load_checkpoint_file(last), marker), last)
    capsys.readouterr()
    assert main(_two_epoch_run(tiny_config, run_dir, "resume=true", "train.epochs=3")) == 0
    captured = capsys.readouterr()
    fallback = [line for line in captured.err.splitlines() if "falling back" in line]
    assert len(fallback) == 1, captured.err
    assert fallback[0].startswith(f"pckd: warning: checkpoint '{last}' {EXPECTED_REASON[kind]}"), fallback[0]
    assert f"falling back to the previous good checkpoint '{run_dir / PREVIOUS}'" in fallback[0]
    assert "Traceback" not in captured.err and not marker.exists()
    assert f"resuming {run_dir} from last.prev.pt: epoch 2, step 0" in captured.out
    assert load_checkpoint_file(last)["epoch"] == 3


def test_unusable_last_and_previous_name_both_in_one_line(tiny_config: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert main(_two_epoch_run(tiny_config, run_dir)) == 0
    torch.save({"format": "pckd"}, run_dir / LAST)
    torch.save({"format": "pckd", "epoch": 1}, run_dir / PREVIOUS)
    capsys.readouterr()
    assert main(_two_epoch_run(tiny_config, run_dir, "resume=true", "train.epochs=3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pckd: error: no readable checkpoint in '{run_dir}': ")
    assert f"'{run_dir / LAST}' is not a complete" in err and f"'{run_dir / PREVIOUS}' is not a complete" in err


@pytest.mark.parametrize("content, fragment", [
    ({"format": "pckd"}, "does not say its architecture; add student.arch=NAME"),
    ({"format": "pckd", "arch": "resnet8", "model": {"x": torch.zeros(1)}},
     "does not fit CifarResNet: missing conv1.weight"),  # the stored arch is used without a stored config
])
def test_eval_of_a_pckd_checkpoint_without_config_is_one_line(
    content: dict[str, Any], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bare.pt"
    torch.save(content, path)
    assert main(["eval", str(path), "data.name=digits", "data.test_limit=8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pckd: error:") and fragment in err, err
