"""`intra_class` on ImageFolder data: its two views must be two independent crops + flips. The loader workers
make them (``second_view = "weak"``); before, both views were the one worker crop, so every positive pair was an
image against itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pckd.config import load_config
from pckd.config.schema import DataConfig
from pckd.data import build_data
from pckd.data.augment import PreAugmented, PreAugmentedPair
from pckd.engine.trainer import train
from pckd.methods.base import method_registry


def test_intra_class_asks_the_workers_for_a_second_weak_view() -> None:
    assert method_registry()["intra_class"].cls.second_view == "weak"
    assert method_registry()["mld"].cls.second_view == "strong"
    assert method_registry()["kd"].cls.second_view == ""


def test_the_two_worker_views_are_independent_crops_of_the_same_images(shared_data: Path) -> None:
    mini = shared_data / "cifar10-jpeg-mini"
    bundle = build_data(DataConfig(name="imagefolder", root=str(mini), image_size=32, num_workers=1,
                                   transforms="cifar"),
                        batch_size=32, eval_batch_size=100, seed=1, device=torch.device("cpu"), second_view="weak")
    assert isinstance(bundle.train.augment, PreAugmentedPair)
    batch = next(iter(bundle.train))
    assert batch.images.shape == (32, 2, 3, 32, 32)
    first, second = batch.augment.standard(batch.images), batch.augment.another_view(batch.images)
    differ = [not torch.equal(first[i], second[i]) for i in range(32)]
    assert sum(differ) >= 28  # a crop offset (81 choices) and a flip each: equal views are rare
    # same images: the views are crops of one picture, so their per-image means stay close (normalised units)
    gap = (first.mean(dim=(1, 2, 3)) - second.mean(dim=(1, 2, 3))).abs()
    assert float(gap.median()) < 0.3


def test_a_single_view_batch_refuses_a_second_view() -> None:
    with pytest.raises(RuntimeError, match="second_view='weak'"):
        PreAugmented().another_view(torch.zeros(2, 3, 8, 8))


def test_intra_class_trains_one_epoch_on_the_imagefolder_set(shared_data: Path, tmp_path: Path) -> None:
    mini = shared_data / "cifar10-jpeg-mini"
    run = tmp_path / "teacher"
    cfg = load_config(None, [
        "method=intra_class", "student.arch=resnet8", "data.name=imagefolder", f"data.root={mini}",
        "data.image_size=32", "data.num_workers=1", "data.train_limit=128", "data.test_limit=40",
        "train.epochs=1", "train.batch_size=32", "train.eval_batch_size=40", "train.device=cpu",
        "train.progress=false", "train.log_interval=1", "intra_class.margin=none", f"output_dir={run}"])
    summary = train(cfg)
    assert summary["epochs"] == 1
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert len(steps) == 4
    for record in steps:
        assert math.isfinite(record["train/ce"]) and math.isfinite(record["train/intra"]) and record["train/intra"] > 0  # margin none: every anchor counts


def test_own_loop_batches_carry_the_callers_second_view() -> None:
    from pckd.api import batch_from_tensors
    from pckd.errors import UserError

    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    batch = batch_from_tensors(a, torch.arange(4), second=b)
    assert torch.equal(batch.augment.standard(batch.images), a)
    assert torch.equal(batch.augment.another_view(batch.images), b)
    with pytest.raises(UserError, match="not both"):
        batch_from_tensors(a, torch.arange(4), strong=b, second=b)
    with pytest.raises(UserError, match="second must have the shape"):
        batch_from_tensors(a, torch.arange(4), second=b[:2])
