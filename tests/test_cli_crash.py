"""The CLI's last resort: a bug deep inside a command is one `pckd: error:` line naming it and the crash log,
exit 1, with the traceback in RUN/crash.log (or $PCKD_HOME before a run folder exists); PCKD_DEBUG=1 re-raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.cli import main
from pckd.crash import note_run_dir

CONFIG = ("method: ce\nstudent: {arch: resnet8}\ndata: {name: digits, train_limit: 32, test_limit: 16}\n"
          "train: {epochs: 1, batch_size: 16, device: cpu, progress: false, eval_teacher: false}\n")


@pytest.fixture()
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    note_run_dir(None)  # no run folder left over from an earlier test in this process
    monkeypatch.setenv("PCKD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PCKD_DEBUG", raising=False)
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    return path


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom\nin two lines")


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("pckd: error:")]


def test_a_crash_during_training_is_one_line_and_a_crash_log_in_the_run_folder(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from pckd.engine.trainer import Trainer

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "_end_epoch", _boom)
    assert main(["train", str(config), f"output_dir={run}"]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert errors == [f"pckd: error: RuntimeError: boom in two lines (unexpected; please report it with "
                      f"{run / 'crash.log'})"]
    log = (run / "crash.log").read_text()
    assert "Traceback (most recent call last)" in log and "_boom" in log and "RuntimeError: boom" in log
    assert not (tmp_path / "home").exists()

    monkeypatch.undo()  # the bug is fixed: a plain rerun trains and clears the crashed run's files
    monkeypatch.setenv("PCKD_HOME", str(tmp_path / "home"))
    assert main(["train", str(config), f"output_dir={run}"]) == 0
    assert not (run / "crash.log").exists() and (run / "last.pt").is_file()


def test_a_crash_before_the_run_folder_exists_goes_to_pckd_home(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pckd.engine.trainer

    monkeypatch.setattr(pckd.engine.trainer, "build", _boom)
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}"]) == 1
    errors = _error_lines(capsys.readouterr().err)
    logs = list((tmp_path / "home").glob("crash-*.log"))
    assert len(logs) == 1 and "RuntimeError: boom" in logs[0].read_text()
    assert errors == [f"pckd: error: RuntimeError: boom in two lines (unexpected; please report it with {logs[0]})"]
    assert not (tmp_path / "run").exists()


def test_a_crash_in_another_command_without_a_run_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pckd.models

    note_run_dir(None)
    monkeypatch.setenv("PCKD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(pckd.models, "model_summary", _boom)
    assert main(["models"]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "unexpected; please report it with" in errors[0]
    assert len(list((tmp_path / "home").glob("crash-*.log"))) == 1


def test_pckd_debug_re_raises_with_the_traceback(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pckd.engine.trainer

    monkeypatch.setattr(pckd.engine.trainer, "build", _boom)
    monkeypatch.setenv("PCKD_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["train", str(config), f"output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "home").exists()


def test_a_path_longer_than_the_filesystem_allows_is_bad_input(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = tmp_path / ("x" * 300)
    for args in (["train", str(config), f"output_dir={long}"],
                 ["train", str(config), "data.name=imagefolder", f"data.root={long}"],
                 ["eval", str(long) + ".pt", "student.arch=resnet8"]):
        assert main(args) == 2, args
        errors = _error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and "is longer than the filesystem allows" in errors[0], errors
        assert "xxxxxxxxxx" in errors[0] and len(errors[0]) < 400
