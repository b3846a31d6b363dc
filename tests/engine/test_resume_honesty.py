"""Resume is honest: the printed command works as printed, changed settings are refused (an extension of
train.epochs is recorded, not written over history), and a finished run says it is finished."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from pckd.cli import main
from pckd.errors import PckdWarning

TINY = """\
method: kd
student: {arch: resnet8}
teacher: {arch: resnet8, checkpoint: TEACHER}
data: {name: digits, train_limit: 32, test_limit: 16}
train: {epochs: 2, batch_size: 16, device: cpu, progress: false, eval_teacher: false, schedule: cosine}
kd: {temperature: 4.0}
"""


@pytest.fixture()
def config(tmp_path: Path, random_teacher: Path) -> Path:
    path = tmp_path / "kd.yaml"
    path.write_text(TINY.replace("TEACHER", str(random_teacher)))
    return path


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_printed_resume_command_works_after_overwrite(config: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(config), f"output_dir={run}", "train.epochs=1"]) == 0
    assert main(["train", str(config), f"output_dir={run}", "overwrite=true"]) == 0
    saved = (run / "config.yaml").read_text()
    assert "overwrite: false" in saved and "resume: false" in saved
    # stop it after epoch 1 the way a signal would, then run the command it prints
    from pckd.config import load_config
    from pckd.engine.trainer import Trainer

    trainer = Trainer(load_config(config, [f"output_dir={run}", "overwrite=true"]))
    trainer.fit(stop_after_epoch=1)
    command = shlex.split(trainer.resume_command())
    assert command[:2] == ["pckd", "train"] and command[-1] == "resume=true"
    capsys.readouterr()
    assert main(command[1:]) == 0, capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_changed_hyper_parameters_are_refused_in_one_line(config: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    from pckd.config import load_config
    from pckd.engine.trainer import Trainer

    Trainer(load_config(config, [f"output_dir={run}"])).fit(stop_after_epoch=1)
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    code = main(["train", str(run / "config.yaml"), "resume=true", "kd.temperature=2", "train.lr=0.1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "kd.temperature: 4.0 -> 2.0" in err and "train.lr: 0.05 -> 0.1" in err
    assert (run / "config.yaml").read_text() == before


def test_epoch_extension_is_kept_warned_and_recorded(config: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", str(config), f"output_dir={run}"]) == 0
    before = (run / "config.yaml").read_text()
    with pytest.warns(PckdWarning, match=r"train\.epochs extended from 2 to 3.*cosine learning rate jumps from"):
        from pckd.config import load_config
        from pckd.engine.trainer import Trainer

        trainer = Trainer(load_config(run / "config.yaml", ["resume=true", "train.epochs=3"]))
        summary = trainer.fit()
    assert summary["epochs"] == 3
    assert (run / "config.yaml").read_text() == before  # history is not rewritten
    resumes = [r for r in _records(run) if r["kind"] == "resume"]
    assert resumes[-1]["changes"] == {"train.epochs": [2, 3]} and resumes[-1]["epoch"] == 3
    assert trainer.resume_command().endswith("resume=true train.epochs=3")


def test_resuming_a_finished_run_says_it_is_finished(config: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(config), f"output_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), "resume=true"]) == 0
    err = capsys.readouterr().err
    assert "already finished its 2 epochs" in err and "train.epochs=N" in err
