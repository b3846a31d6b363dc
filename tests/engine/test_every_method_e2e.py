"""Every registered method trains through the one trainer: `pckd train`'s path, from config to summary.

One short epoch on the embedded digits (10 classes, 64 images, batch 16) from a seeded random resnet8 teacher:
each method's named loss terms reach metrics.jsonl as finite numbers, the run finishes with a summary and a
checkpoint, and its config under configs/cifar100/<method>/ exists for all 13 pairs of the paper.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from pckd.config import load_config
from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.engine.trainer import Trainer
from pckd.methods.base import method_registry

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "cifar100"
TEACHER_METHODS = sorted(name for name, spec in method_registry().items() if spec.cls.needs_teacher)
# Methods whose configs are not the 13 standard pairs (they have their own layouts and tests).
OWN_LAYOUT = {"ckd", "intra_class", "pckd", "kd", "mld"}  # mld: tests/test_configs_mld.py
# Tables I and II of the PCKD paper, written out here independently of tools/make_configs.py.
PAPER_PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
               ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
               ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
               ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
# FSP needs equal channel counts stage by stage: only these pairs of the paper qualify (Table I has NA for
# WRN-40-2 -> WRN-40-1; RepDistiller has no FSP rows for the different-style pairs).
FSP_PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"),
             ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]
SMALL = {"crd": ["crd.nce_k=16"], "ckd": ["ckd.weight=1.0"]}  # CRD: 16 negatives out of 64 samples


@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_method_trains_one_epoch_end_to_end(method: str, random_teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / method
    # Methods with RepDistiller's init stage (AB, FT, FSP): one init epoch, then one main epoch.
    staged = "init_epochs" in {f.name for f in dataclasses.fields(method_registry()[method].params)}
    epochs = ["train.epochs=2", f"{method}.init_epochs=1"] if staged else ["train.epochs=1"]
    cfg = load_config(None, [
        f"method={method}", "student.arch=resnet8", "teacher.arch=resnet8", f"teacher.checkpoint={random_teacher}",
        "data.name=digits", "data.train_limit=64", "data.test_limit=40", *epochs, "train.batch_size=16",
        "train.eval_batch_size=40", "train.device=cpu", "train.progress=false", "train.log_interval=2",
        "train.eval_teacher=false", f"output_dir={run}", *SMALL.get(method, [])])
    summary = Trainer(cfg).fit()
    assert summary["epochs"] == (2 if staged else 1) and 0.0 <= summary["last_top1"] <= 100.0
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert len(steps) == (4 if staged else 2)  # 4 steps per epoch, read every 2
    terms = {k for r in steps for k in r if k.startswith("train/") and k not in ("train/top1", "train/top5")}
    assert "train/loss" in terms and "train/ce" in terms and len(terms) >= 3, terms  # the method's own term(s)
    for record in steps:
        for key in terms & set(record):
            assert math.isfinite(record[key]), (key, record[key])
    saved = load_checkpoint_file(run / "last.pt")
    assert saved["epoch"] == (2 if staged else 1)


@pytest.mark.parametrize("method", [m for m in TEACHER_METHODS if m not in OWN_LAYOUT])
def test_baseline_has_a_config_for_each_paper_pair(method: str) -> None:
    # Either configs/cifar100/<method>/<pair>.yaml, or one folder per schedule (<method>/e240_step/<pair>.yaml),
    # each of them with every pair.
    root = CONFIGS / method
    folders = [root] if any(root.glob("*.yaml")) else sorted(p for p in root.iterdir() if p.is_dir())
    assert folders
    expected = sorted(f"{t}-{s}" for t, s in PAPER_PAIRS if method != "fsp" or (t, s) in FSP_PAIRS)
    for folder in folders:
        files = sorted(p.stem for p in folder.glob("*.yaml"))
        assert files == expected, folder
        cfg = load_config(folder / f"{files[0]}.yaml", [])
        assert cfg.method == method
