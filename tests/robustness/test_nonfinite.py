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


class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward: the update itself spoils the weights."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


def _record_calls(monkeypatch: pytest.MonkeyPatch, nan_loss_at: int = 0, nan_grad_at: int = 0) -> list[float]:
    """Patch ce's training forward: a NaN loss at call ``nan_loss_at``, a finite loss with NaN gradients at call
    ``nan_grad_at``; returns the list that collects every call's 'ce' value."""
    inner = CE.forward_train
    seen: list[float] = []

    def forward_train(self: CE, batch: Any, epoch: int) -> Any:
        out = inner(self, batch, epoch)
        if len(seen) + 1 == nan_loss_at:
            out.losses["ce"] = out.losses["ce"] * float("nan")
        if len(seen) + 1 == nan_grad_at:
            out.losses["ce"] = _NaNGradient.apply(out.losses["ce"])
        seen.append(float(out.losses["ce"]))
        return out

    monkeypatch.setattr(CE, "forward_train", forward_train)
    return seen


def _no_nonfinite_checkpoint(run_dir: Path) -> None:
    for name in ("last.pt", "best.pt", "last.prev.pt"):
        if (run_dir / name).exists():
            state = load_checkpoint_file(run_dir / name)
            assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), name


@pytest.mark.parametrize("mode", ["stop", "skip_step"])
def test_finite_loss_with_nonfinite_update_is_never_saved(
    mode: str, tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last step of epoch 1 has a finite loss but NaN gradients: the epoch-end checkpoint must not be written."""
    _record_calls(monkeypatch, nan_grad_at=STEPS_PER_EPOCH)
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, run_dir, f"train.on_nonfinite={mode}")) == 3
    err = capsys.readouterr().err
    assert "pckd: the weights became non-finite after epoch 1 (" in err and "were not saved; no checkpoint was " \
        "written yet. Lower train.lr" in err, err
    assert not (run_dir / "last.pt").exists() and not (run_dir / "best.pt").exists()
    assert not (run_dir / "summary.json").exists()


def test_skip_step_stops_when_every_step_of_a_window_is_skipped(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN gradients in epoch 2 step 2 make every later loss NaN: skip_step must not skip on to a 'success'."""
    _record_calls(monkeypatch, nan_grad_at=STEPS_PER_EPOCH + 2)
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, run_dir, "train.on_nonfinite=skip_step", "train.log_interval=2")) == 3
    err = capsys.readouterr().err
    assert (f"pckd: non-finite loss at every step of epoch 2 steps 3-4 of {STEPS_PER_EPOCH} (train.on_nonfinite="
            f"skip_step skipped all 2: the weights no longer train); last good checkpoint: {run_dir / 'last.pt'}. "
            "Lower train.lr") in err, err
    assert load_checkpoint_file(run_dir / "last.pt")["epoch"] == 1  # epoch 1's checkpoint, finite
    _no_nonfinite_checkpoint(run_dir)
    assert not (run_dir / "summary.json").exists()


def test_skip_step_averages_only_the_steps_that_ran(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _record_calls(monkeypatch, nan_loss_at=STEPS_PER_EPOCH + 3)  # epoch 2, step 3 skipped
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, run_dir, "train.on_nonfinite=skip_step", "train.log_interval=2")) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch2 = seen[STEPS_PER_EPOCH:]
    assert math.isnan(epoch2[2]) and len(epoch2) == STEPS_PER_EPOCH
    ran = [v for v in epoch2 if not math.isnan(v)]
    epoch_record = next(r for r in records if r["kind"] == "epoch" and r["epoch"] == 2)
    assert epoch_record["skipped_steps"] == 1
    assert epoch_record["train/ce"] == pytest.approx(sum(ran) / 5, rel=1e-5)  # over 5 steps, not 6
    window = next(r for r in records if r["kind"] == "step" and r["epoch"] == 2 and r["step"] == 4)
    assert window["train/ce"] == pytest.approx(epoch2[3], rel=1e-5)  # steps 3-4: only step 4 ran
    _no_nonfinite_checkpoint(run_dir)


@pytest.mark.parametrize("command, key, value", [
    ("train", "train.lr", "nan"), ("train", "train.lr", "inf"), ("train", "train.lr_decay", "nan"),
    ("train", "train.lr_decay", "-inf"), ("probe", "probe.lr", "nan"), ("probe", "probe.lr_decay", "inf"),
])
def test_nonfinite_learning_rates_are_refused_up_front(
    command: str, key: str, value: str, tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    first = str(tiny_config) if command == "train" else str(tmp_path / "missing.pt")
    assert main([command, first, f"output_dir={run_dir}", f"{key}={value}"]) == 2
    assert f"pckd: error: config key '{key}'={float(value)!r} must be a finite number" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_rerun_after_a_crash_before_the_first_checkpoint_is_accepted(
    tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No dead end: a NaN in epoch 1 leaves a folder without a checkpoint; resume=true says to drop it, and the
    plain rerun it points to starts the run (the failed run's log is replaced, not appended to)."""
    _poison_call(monkeypatch, 2)
    run_dir = tmp_path / "run"
    assert main(_args(tiny_config, run_dir)) == 3
    assert (run_dir / "metrics.jsonl").exists() and not (run_dir / "last.pt").exists()
    monkeypatch.undo()
    capsys.readouterr()
    assert main(_args(tiny_config, run_dir, "resume=true")) == 2
    assert "holds no run to resume (no checkpoint was written); drop resume=true" in capsys.readouterr().err
    assert main(_args(tiny_config, run_dir)) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert load_checkpoint_file(run_dir / "last.pt")["epoch"] == 2
