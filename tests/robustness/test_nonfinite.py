"""Non-finite losses: stop naming the term, epoch, exact step and last good checkpoint, or skip such steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pckd.cli import main
from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.methods.ce import CrossEntropy as CE

STEPS_PER_EPOCH = 6  # data.train_limit=96 at train.batch_size=16


def _poison_call(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the ``call``-th training forward of method ce return a NaN 'ce' term."""
    inner = CE.forward_train
    calls = {"n": 0}

    def forward_train(self: CE, batch: Any, epoch: int) -> Any:
        out = inner(self, batch, epoch)
        calls["n"] += 1
        if calls["n"] == call:
            out.losses["ce"] = out.losses["ce"] * float("nan")
        return out

    monkeypatch.setattr(CE, "forward_train", forward_train)


def _args(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", str(config), f"output_dir={run_dir}", "data.train_limit=96", "data.test_limit=40",
            "train.eval_batch_size=40", "train.log_interval=50", *extra]


def test_nonfinite_stops_naming_term_epoch_exact_step_and_last_good_checkpoint(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _poison_call(monkeypatch, STEPS_PER_EPOCH + 4)  # epoch 2, step 4; the log interval (50) is never reached
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, run_dir, "train.epochs=3")) == 3
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("pckd:")]
    assert lines == [
        f"pckd: non-finite loss term 'ce' in epoch 2 at step 4 of {STEPS_PER_EPOCH}; last good checkpoint: "
        f"{run_dir / 'last.pt'}. Lower train.lr, or set train.on_nonfinite=skip_step to skip such steps"
    ]
    good = load_checkpoint_file(run_dir / "last.pt")
    assert good["epoch"] == 1 and good["step"] == 0  # the spoiled epoch 2 was never saved
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_nonfinite_in_first_epoch_says_no_checkpoint_yet(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _poison_call(monkeypatch, 2)
    assert main(_args(tiny_config, tmp_path / "run", "train.log_interval=1")) == 3
    err = capsys.readouterr().err
    assert "non-finite loss term 'ce' in epoch 1 at step 2 of 6; no checkpoint was written yet" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_skip_step_finishes_and_counts_skipped_steps(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison_call(monkeypatch, STEPS_PER_EPOCH + 2)
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, run_dir, "train.on_nonfinite=skip_step")) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = {r["epoch"]: r for r in records if r["kind"] == "epoch"}
    assert epochs[1]["skipped_steps"] == 0 and epochs[2]["skipped_steps"] == 1
    assert math.isfinite(epochs[2]["train/ce"])  # the skipped step's NaN is not averaged in
    final = load_checkpoint_file(run_dir / "last.pt")
    assert final["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
