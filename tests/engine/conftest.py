"""Helpers for end-to-end runs on slices of the shared CIFAR-100."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from pckd.config import load_config


def cifar_slice_config(shared_data: Path, run_dir: Path, method: str, arch: str = "resnet8", epochs: int = 2,
                       extra: list[str] | None = None, classes: int = 10, train_limit: int | None = 1000,
                       teacher: str | None = None, teacher_arch: str = "resnet8") -> Any:
    overrides = [
        f"method={method}", f"student.arch={arch}", "data.name=cifar100", f"data.root={shared_data}",
        f"data.classes={classes}", f"train.epochs={epochs}", "train.batch_size=64", "train.lr=0.05",
        "train.schedule=cosine", "train.device=cpu", "train.progress=false", "train.log_interval=5",
        f"output_dir={run_dir}", "train.eval_batch_size=500",
    ]
    if train_limit is not None:
        overrides.append(f"data.train_limit={train_limit}")
    if teacher is not None:
        overrides += [f"teacher.arch={teacher_arch}", f"teacher.checkpoint={teacher}"]
    return load_config(None, overrides + (extra or []))


@pytest.fixture(scope="session")
def trained_teacher(shared_data: Path, tmp_path_factory) -> Path:
    """A resnet8 teacher trained for a few epochs on 10 CIFAR-100 classes (shared by the e2e tests)."""
    from pckd.engine.trainer import train

    run_dir = tmp_path_factory.mktemp("teacher")
    cfg = cifar_slice_config(shared_data, run_dir, "ce", epochs=4, train_limit=None, extra=["train.lr=0.1"])
    summary = train(cfg)
    assert summary["best_top1"] > 30.0, summary  # 10 classes: chance is 10%
    return run_dir / "best.pt"


def signal_at_call(trainer: Any, call: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Make the ``call``-th training forward of ``trainer`` deliver ``sig`` to this process (as `kill` would)."""
    inner = trainer.distiller.forward_train
    calls = {"n": 0}

    def forward_train(batch: Any, epoch: int) -> Any:
        calls["n"] += 1
        out = inner(batch, epoch)
        if calls["n"] == call:
            signal.raise_signal(sig)
        return out

    trainer.distiller.forward_train = forward_train
