"""A two-stage method whose first stage (AB/FT/FSP's init stage, SSKD's teacher stage) is as long as the run would
never train the student: training refuses it up front, naming the key, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.cli import main


@pytest.mark.parametrize("method, init", [("ab", 30), ("ft", 30), ("fsp", 30), ("sskd", 60)])
def test_first_stage_as_long_as_the_run_is_refused(method, init, random_teacher, tmp_path: Path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(f"method: {method}\n")
    code = main(["train", str(config), "student.arch=resnet8", "teacher.arch=resnet8",
                 f"teacher.checkpoint={random_teacher}", "data.name=digits", "data.train_limit=32",
                 "data.test_limit=16", f"train.epochs={init}", "train.device=cpu", "train.progress=false",
                 f"output_dir={run}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("pckd: error:")
    assert f"'{method}.init_epochs'={init} is not below train.epochs={init}" in err[0]
    assert not run.exists() or not any(run.iterdir())  # refused before anything was written


def test_first_stage_shorter_than_the_run_is_accepted():
    from pckd.config import load_config
    from pckd.engine.build import check_first_stage

    check_first_stage(load_config(None, ["method=ab", "train.epochs=31"]))  # 30 init epochs + 1 student epoch
    check_first_stage(load_config(None, ["method=ab", "ab.init_epochs=0", "train.epochs=1"]))  # no init stage
