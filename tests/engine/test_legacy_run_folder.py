"""Run folders and checkpoints written before the redesign (tests/fixtures/legacy_run, made by the code of
commit 6b8f09b: a ce run of resnet8 on digits stopped after epoch 1 of 2) still evaluate and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pckd.cli import main
from pckd.config import load_config
from pckd.engine.trainer import Trainer

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_run"


@pytest.fixture()
def legacy(tmp_path: Path) -> Path:
    run = tmp_path / "legacy_run"
    shutil.copytree(LEGACY, run)
    return run


def test_legacy_checkpoint_evaluates(legacy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(legacy / "last.pt"), "train.device=cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = [json.loads(line) for line in (legacy / "metrics.jsonl").read_text().splitlines()]
    epoch1 = next(r for r in logged if r["kind"] == "epoch")
    assert result["arch"] == "resnet8" and result["data"] == "digits"
    assert result["top1"] == pytest.approx(epoch1["test/top1"], abs=1e-6)


def test_legacy_run_resumes_and_finishes(legacy: Path) -> None:
    cfg = load_config(legacy / "config.yaml", ["resume=true", f"output_dir={legacy}", "train.progress=false"])
    summary = Trainer(cfg).fit()
    assert summary["epochs"] == 2
    epochs = [json.loads(line)["epoch"] for line in (legacy / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert epochs == [1, 2]


def test_legacy_pckd_config_text_loads() -> None:
    cfg = load_config(LEGACY / "pckd_config.yaml", ["output_dir=/tmp/unused"])
    assert cfg.method == "pckd" and cfg.pckd.preview.mode == "focal" and cfg.pckd.ccc == "supcon"
