"""`mld` end to end: one epoch on a slice of the real CIFAR-100 (strong view on the device), and one on the
real-JPEG ImageFolder set, whose loader workers make both views (RandAugment + Cutout on PIL images)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from pckd.config import load_config
from pckd.config.schema import DataConfig
from pckd.data import build_data
from pckd.data.augment import PreAugmentedPair
from pckd.engine.trainer import train
from tests.engine.conftest import cifar_slice_config

TERMS = ("train/ce", "train/kd_weak", "train/kd_strong", "train/cc", "train/bc")


def _steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]


def test_mld_one_epoch_on_a_cifar100_slice(shared_data: Path, random_teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / "mld"
    cfg = cifar_slice_config(shared_data, run, "mld", epochs=1, train_limit=256, teacher=str(random_teacher),
                             extra=["train.eval_teacher=false", "train.log_interval=1"])
    summary = train(cfg)
    assert summary["method"] == "mld" and summary["epochs"] == 1
    steps = _steps(run)
    assert len(steps) == 4  # 256 images, batch 64
    for record in steps:
        for key in TERMS:
            assert math.isfinite(record[key]) and record[key] >= 0, (key, record)
        assert "train/cc_strong" not in record  # released: the strong cc/bc terms are dropped
        assert record["train/mask_fraction"] == 0.5  # 64 distinct confidences: the median keeps half


def test_mld_corrected_on_the_imagefolder_set(shared_data: Path, random_teacher: Path, tmp_path: Path) -> None:
    mini = shared_data / "cifar10-jpeg-mini"
    bundle = build_data(DataConfig(name="imagefolder", root=str(mini), image_size=32, num_workers=1),
                        batch_size=32, eval_batch_size=100, seed=1, device=torch.device("cpu"), strong_view=True)
    assert isinstance(bundle.train.augment, PreAugmentedPair)
    batch = next(iter(bundle.train))
    assert batch.images.shape == (32, 2, 3, 32, 32)  # the workers' weak and strong views
    weak, strong = batch.augment.standard(batch.images), batch.augment.strong(batch.images)
    assert weak.shape == strong.shape == (32, 3, 32, 32) and not torch.equal(weak, strong)
    test_batch = next(iter(bundle.test))
    assert test_batch.images.shape == (100, 3, 32, 32)  # the test split keeps one view
    assert torch.equal(bundle.augment.evaluate(test_batch.images), test_batch.images)

    run = tmp_path / "mld_folder"
    cfg = load_config(None, [
        "method=mld", "mld.corrected=true", "student.arch=resnet8", "teacher.arch=resnet8",
        f"teacher.checkpoint={random_teacher}", "data.name=imagefolder", f"data.root={mini}", "data.image_size=32",
        "data.num_workers=1", "data.train_limit=128", "data.test_limit=40", "train.epochs=1", "train.batch_size=32",
        "train.eval_batch_size=40", "train.device=cpu", "train.progress=false", "train.log_interval=1",
        "train.eval_teacher=false", f"output_dir={run}"])
    summary = train(cfg)
    assert summary["epochs"] == 1 and 0.0 <= summary["last_top1"] <= 100.0
    steps = _steps(run)
    assert len(steps) == 4
    for record in steps:
        for key in (*TERMS, "train/cc_strong", "train/bc_strong"):  # corrected: the strong terms count
            assert math.isfinite(record[key]) and record[key] >= 0, (key, record)
