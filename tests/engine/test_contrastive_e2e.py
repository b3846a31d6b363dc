"""End-to-end `ckd` and `intra_class` runs on a slice of the shared CIFAR-100: the loss falls, and a run stopped
after epoch 1 and resumed ends bit-identical to an uninterrupted one (for `intra_class` the feature queue too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.engine.trainer import Trainer, train

from .conftest import cifar_slice_config

pytestmark = pytest.mark.slow

# 640 images of 10 classes at batch 64: 10 steps per epoch, one log window every 2 steps.
SLICE = {"epochs": 2, "train_limit": 640, "extra_common": ["train.log_interval=2", "data.test_limit=200"]}


def _config(shared_data: Path, run_dir: Path, method: str, teacher: Path | None, extra: list[str]) -> Any:
    return cifar_slice_config(shared_data, run_dir, method, epochs=SLICE["epochs"], train_limit=SLICE["train_limit"],
                              teacher=None if teacher is None else str(teacher),
                              extra=SLICE["extra_common"] + extra)


def _step_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "step"]


def _first_last(records: list[dict[str, Any]], key: str, n: int = 2) -> tuple[float, float]:
    """Mean of ``key`` over the first and the last ``n`` log windows (2 steps each)."""
    values = [r[key] for r in records]
    return sum(values[:n]) / n, sum(values[-n:]) / n


def _stop_and_resume(shared_data: Path, run_dir: Path, method: str, teacher: Path | None,
                     extra: list[str]) -> dict[str, Any]:
    """Train to the end of epoch 1, stop as if interrupted, resume to epoch 2; returns the final checkpoint."""
    Trainer(_config(shared_data, run_dir, method, teacher, extra)).fit(stop_after_epoch=1)
    assert load_checkpoint_file(run_dir / "last.pt")["epoch"] == 1
    train(_config(shared_data, run_dir, method, teacher, extra + ["resume=true"]))
    return load_checkpoint_file(run_dir / "last.pt")


def _assert_same_student(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


# ---- ckd ------------------------------------------------------------------------------------------------
CKD_EXTRA = ["ckd.weight=10", "ckd.tau=1"]


@pytest.fixture(scope="module")
def ckd_run(shared_data: Path, trained_teacher: Path, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch CKD student distilled from the shared resnet8 teacher."""
    run_dir = tmp_path_factory.mktemp("ckd") / "full"
    train(_config(shared_data, run_dir, "ckd", trained_teacher, CKD_EXTRA))
    return run_dir


def test_ckd_loss_falls(ckd_run):
    records = _step_records(ckd_run)
    assert len(records) == 10  # 2 epochs x 5 windows
    assert all(r["train/ckd"] > 0 and r["train/ce"] > 0 for r in records)
    first, last = _first_last(records, "train/loss")
    assert last < 0.95 * first, (first, last)
    # The contrast itself falls: the student's logits line up with the teacher's sample by sample.
    first_ckd, last_ckd = _first_last(records, "train/ckd")
    assert last_ckd < first_ckd, (first_ckd, last_ckd)
    summary = json.loads((ckd_run / "summary.json").read_text())
    assert summary["method"] == "ckd" and summary["teacher"] == "resnet8"
    assert summary["extra_parameters"] == 0  # CKD adds no trainable heads


def test_ckd_resume_equals_uninterrupted(shared_data, trained_teacher, ckd_run, tmp_path):
    resumed = _stop_and_resume(shared_data, tmp_path / "part", "ckd", trained_teacher, CKD_EXTRA)
    _assert_same_student(load_checkpoint_file(ckd_run / "last.pt"), resumed)


# ---- intra_class ----------------------------------------------------------------------------------------
# Gate off: in two short epochs almost no anchor would reach the default margin, and the contrast (with its
# queue) should act from the first step. The gate itself is unit-tested in tests/methods/test_intra_class.py.
INTRA_EXTRA = ["intra_class.margin=none", "intra_class.queue_size=16", "train.lr=0.1"]


@pytest.fixture(scope="module")
def intra_run(shared_data: Path, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch intra-class teacher run (no teacher of its own)."""
    run_dir = tmp_path_factory.mktemp("intra") / "full"
    train(_config(shared_data, run_dir, "intra_class", None, INTRA_EXTRA))
    return run_dir


def test_intra_class_loss_falls_and_fills_queue(intra_run):
    records = _step_records(intra_run)
    assert len(records) == 10
    first, last = _first_last(records, "train/loss")
    assert last < 0.95 * first, (first, last)
    first_ce, last_ce = _first_last(records, "train/ce")
    assert last_ce < first_ce, (first_ce, last_ce)
    # With the gate off every anchor counts, and the contrast is active from the first window on.
    assert all(r["train/gate_pass_fraction"] == 1.0 and r["train/intra"] > 0 for r in records)
    state = load_checkpoint_file(intra_run / "last.pt")
    assert state["method"] == "intra_class" and json.loads((intra_run / "summary.json").read_text())["teacher"] is None
    queue = state["method_state"]["queue"]
    assert tuple(queue["feats"].shape) == (10, 16, 64)  # classes x queue_size x resnet8 feature dim
    # 1280 images seen, 64+ per class: every class queue is full and holds unit-norm features.
    assert queue["fill"].tolist() == [16] * 10
    assert torch.allclose(queue["feats"].norm(dim=2), torch.ones(10, 16), atol=1e-5)


def test_intra_class_resume_equals_uninterrupted(shared_data, intra_run, tmp_path):
    full = load_checkpoint_file(intra_run / "last.pt")
    resumed = _stop_and_resume(shared_data, tmp_path / "part", "intra_class", None, INTRA_EXTRA)
    _assert_same_student(full, resumed)
    qa, qb = full["method_state"]["queue"], resumed["method_state"]["queue"]
    assert qa.keys() == qb.keys() == {"feats", "fill", "ptr"}
    for key in qa:
        assert torch.equal(qa[key], qb[key]), key
