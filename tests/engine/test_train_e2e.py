"""End-to-end training on the shared CIFAR-100: teacher, KD student, exact resume, ImageFolder, metrics files."""

from __future__ import annotations

import json

import pytest
import torch

from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.engine.trainer import Trainer, train

from .conftest import cifar_slice_config

pytestmark = pytest.mark.slow


def test_teacher_beats_chance_and_writes_run_files(trained_teacher):
    run_dir = trained_teacher.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_top1"] > 30.0 and summary["epochs"] == 4  # chance: 10%
    assert {"config.yaml", "metrics.jsonl", "env.json", "last.pt", "best.pt"} <= {p.name for p in run_dir.iterdir()}
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert all("train/ce" in r and "test/top1" in r and r["img_per_s"] > 0 for r in epochs)
    assert any(p.name.startswith("events") for p in (run_dir / "tensorboard").iterdir())


def test_kd_student_trains_from_saved_teacher(shared_data, trained_teacher, tmp_path, capsys):
    cfg = cifar_slice_config(shared_data, tmp_path / "kd", "kd", teacher=str(trained_teacher), epochs=1)
    summary = train(cfg)
    assert "teacher resnet8: test top-1" in capsys.readouterr().out  # teacher evaluated before training
    assert summary["teacher_top1"] > 30.0
    assert summary["best_top1"] > 10.0
    record = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train/kd"] > 0 and record["train/ce"] > 0


def _final_state(run_dir):
    return load_checkpoint_file(run_dir / "last.pt")


def test_resume_after_epoch_one_equals_uninterrupted(shared_data, trained_teacher, tmp_path):
    full = cifar_slice_config(shared_data, tmp_path / "full", "kd", teacher=str(trained_teacher), epochs=2,
                              train_limit=320)
    train(full)
    part = cifar_slice_config(shared_data, tmp_path / "part", "kd", teacher=str(trained_teacher), epochs=2,
                              train_limit=320)
    Trainer(part).fit(stop_after_epoch=1)
    assert _final_state(tmp_path / "part")["epoch"] == 1
    resumed = cifar_slice_config(shared_data, tmp_path / "part", "kd", teacher=str(trained_teacher), epochs=2,
                                 train_limit=320, extra=["resume=true"])
    train(resumed)
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "part")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for ka, kb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(ka["momentum_buffer"], kb["momentum_buffer"])


def test_imagefolder_runs_on_shared_jpegs(shared_data, tmp_path):
    from pckd.config import load_config

    cfg = load_config(None, [
        "method=ce", "student.arch=resnet8", "data.name=imagefolder", f"data.root={shared_data / 'cifar10-jpeg-mini'}",
        "data.image_size=32", "data.num_workers=0", "train.epochs=1", "train.device=cpu", "train.progress=false",
        f"output_dir={tmp_path / 'if'}", "train.batch_size=50"])
    summary = train(cfg)
    assert summary["last_top1"] >= 0 and (tmp_path / "if" / "last.pt").exists()
