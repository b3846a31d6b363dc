"""The recent logit baselines (issue 15) are listed by `pckd methods` and `pckd demo --methods all`, and each
trains one epoch on the embedded digits through the one trainer, logging its named terms."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pckd.cli import main
from pckd.config import load_config
from pckd.demo import demo_methods
from pckd.engine.trainer import Trainer

# method -> the loss terms its steps log (besides the total)
TERMS = {"dist": {"ce", "inter", "intra"}, "nkd": {"ce", "nkd_target", "nkd_non"},
         "wttm": {"ce", "wttm"}, "ctkd": {"ce", "kd", "temperature", "grl_lambda"}}


def test_listed_by_methods_and_demo_all(capsys):
    assert main(["methods"]) == 0
    out = "\n" + capsys.readouterr().out
    everything = demo_methods(["all"])
    for name in TERMS:
        assert f"\n{name} " in out and "[teacher]" in out.split(f"\n{name} ")[1].splitlines()[0]
        assert name in everything


@pytest.mark.parametrize("method", sorted(TERMS))
def test_trains_one_epoch_through_the_trainer(method: str, tmp_path: Path, random_teacher: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config(None, [f"method={method}", "student.arch=resnet8", "teacher.arch=resnet8",
                             f"teacher.checkpoint={random_teacher}", "data.name=digits", "data.train_limit=32",
                             "data.test_limit=16", "train.epochs=1", "train.batch_size=16", "train.device=cpu",
                             "train.progress=false", "train.log_interval=1", "train.eval_teacher=false",
                             f"output_dir={run}"])
    summary = Trainer(cfg).fit()
    assert summary["epochs"] == 1
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(steps) == 2
    for record in steps:
        for term in TERMS[method]:
            assert math.isfinite(record[f"train/{term}"])
