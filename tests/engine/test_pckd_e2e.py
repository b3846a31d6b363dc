"""End-to-end PCKD on a 10-class slice of the shared CIFAR-100: learning, preview outputs, exact resume, Table VII."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from pckd.config import load_config
from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.engine.trainer import Trainer, train

from .conftest import cifar_slice_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BATCH = 16  # small batches: many steps (4 x 16 = 64 images per forward) in little time


def pckd_config(shared_data: Path, run_dir: Path, teacher: Path, train_limit: int, extra: list[str] | None = None):
    return cifar_slice_config(shared_data, run_dir, "pckd", teacher=str(teacher), epochs=2, train_limit=train_limit,
                              extra=[f"train.batch_size={BATCH}", "train.log_interval=10", "data.test_limit=500",
                                     *(extra or [])])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pckd_learns_and_writes_preview_outputs(shared_data, trained_teacher, tmp_path):
    run = tmp_path / "pckd"
    # 2 epochs x 100 steps; the teacher's own accuracy is checked by test_train_e2e
    cfg = pckd_config(shared_data, run, trained_teacher, train_limit=1600, extra=["train.eval_teacher=false"])
    summary = train(cfg)
    assert summary["best_top1"] > 20.0  # 10 classes: chance is 10%

    records = read_jsonl(run / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert [(r["epoch"], r["step"]) for r in steps][-1] == (2, 100) and len(steps) == 20
    first = sum(r["train/loss"] for r in steps[:3]) / 3
    last = sum(r["train/loss"] for r in steps[-3:]) / 3
    assert last < 0.9 * first, (first, last)

    for epoch, r in enumerate(epochs, start=1):
        for term in ("ce", "kd", "ccc", "fa", "ca"):  # resnet8 -> resnet8: equal classifier shapes, so CA is on
            assert math.isfinite(r[f"train/{term}"]) and r[f"train/{term}"] > 0, term
        assert r["train/threshold"] == pytest.approx(1.005 ** epoch, rel=1e-6)
        assert 0.0 < r["train/hard_fraction"] < 1.0
        assert 0.0 < r["train/weight_min"] < r["train/weight_mean"] < 1.0

    # last epoch's per-sample records: one row per training sample, weights follow Eq. 6 at t = 1.005^2
    with open(run / "preview_records.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == list(range(1600))
    assert {int(r["label"]) for r in rows} == set(range(10))
    t = 1.005 ** 2
    for r in rows:
        s, w = float(r["difficulty"]), float(r["weight"])
        if abs(s - t) < 1e-4:  # the CSV keeps 6 digits: too close to t to tell the side
            continue
        assert w == (1.0 if s <= t else pytest.approx(math.exp(-s * s), rel=1e-4, abs=1e-6)), r
    # every batch of 16 has mean difficulty exactly 1 (s_i = CE_i / batch-mean CE), so the epoch mean is 1 too
    assert sum(float(r["difficulty"]) for r in rows) / len(rows) == pytest.approx(1.0, abs=1e-4)

    history = json.loads((run / "preview_history.json").read_text())
    last_epoch = history["epochs"][-1]
    assert [e["epoch"] for e in history["epochs"]] == [1, 2] and last_epoch["samples"] == 1600
    assert last_epoch["weight_min"] == pytest.approx(min(float(r["weight"]) for r in rows), rel=1e-4)
    assert last_epoch["weight_easy"] == 1.0 and last_epoch["weight_hard"] < 1.0
    assert not (run / "preview_weights.png").exists()  # training writes the data; `pckd report` draws Fig. 6
    from pckd.report.preview_plot import plot_preview_history, read_history

    png = plot_preview_history(read_history(run), tmp_path / "fig6.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    for tag in ("pckd/difficulty", "pckd/weight"):
        assert [e.step for e in events.Histograms(tag)] == [1, 2]
        assert events.Histograms(tag)[-1].histogram_value.num == 1600
    for tag in ("train/ccc", "train/fa", "train/threshold", "train/hard_fraction", "pckd/weight_min",
                "pckd/weight_easy", "pckd/weight_hard"):
        assert events.Scalars(tag), tag


def test_pckd_resume_after_epoch_one_equals_uninterrupted(shared_data, trained_teacher, tmp_path):
    train(pckd_config(shared_data, tmp_path / "full", trained_teacher, train_limit=320))
    Trainer(pckd_config(shared_data, tmp_path / "part", trained_teacher, train_limit=320)).fit(stop_after_epoch=1)
    assert load_checkpoint_file(tmp_path / "part" / "last.pt")["epoch"] == 1
    train(pckd_config(shared_data, tmp_path / "part", trained_teacher, train_limit=320, extra=["resume=true"]))

    a, b = load_checkpoint_file(tmp_path / "full" / "last.pt"), load_checkpoint_file(tmp_path / "part" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for part in ("model", "heads"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert any(k.startswith("fa_head.") for k in a["heads"]) and {"embed_s.weight", "embed_t.weight"} <= set(a["heads"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    history = a["method_state"]["preview_history"]
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert b["method_state"] == a["method_state"]  # epoch 1 of the history survived the restart
    for name in ("preview_records.csv", "preview_history.json"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "part" / name).read_bytes(), name


def test_table7_ce_times_preview_config_never_runs_the_teacher(shared_data, tmp_path):
    table7 = Path(__file__).resolve().parents[2] / "configs/cifar100/pckd/ablations/table7"
    path = table7 / "wrn_40_2-wrn_16_2" / "2_ce_preview.yaml"
    cfg = load_config(path, [
        "student.arch=resnet8", "teacher.arch=resnet8", f"teacher.checkpoint={tmp_path / 'absent.pt'}",
        f"data.root={shared_data}", "data.classes=10", "data.train_limit=160", "data.test_limit=200",
        "train.epochs=1", f"train.batch_size={BATCH}", "train.device=cpu", "train.progress=false",
        "train.log_interval=5", f"output_dir={tmp_path / 't7'}"])
    trainer = Trainer(cfg)  # the named teacher file does not exist: no term reads the teacher, so none is built
    assert trainer.distiller.teacher is None
    summary = trainer.fit()
    assert summary["teacher_top1"] is None  # neither trained against nor evaluated
    records = read_jsonl(tmp_path / "t7" / "metrics.jsonl")
    assert all(r["kind"] != "teacher" for r in records)
    epoch = [r for r in records if r["kind"] == "epoch"][-1]
    losses = {k for k in epoch if k.startswith("train/") and k[6:] in ("ce", "kd", "ccc", "fa", "ca")}
    assert losses == {"train/ce"}
    assert epoch["train/weight_mean"] < 1.0  # the CE of hard samples is down-weighted (preview.on_ce)
    assert trainer.distiller.extra_parameters() == 0  # no head is built when its term is off
