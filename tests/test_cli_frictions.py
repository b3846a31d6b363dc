"""Small command-line frictions a new user met, each pinned."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pckd.cli import main
from pckd.config import load_config
from pckd.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100"


def test_teacher_keys_on_a_teacherless_run_are_refused() -> None:
    with pytest.raises(UserError, match=r"method=ce trains student\.arch=resnet56 without a teacher, so "
                                        r"teacher\.arch would be ignored; set student\.arch=resnet110"):
        load_config(CONFIGS / "teachers" / "resnet56.yaml", ["teacher.arch=resnet110"])


def test_run_folder_names_follow_architecture_overrides() -> None:
    assert load_config(CONFIGS / "teachers" / "resnet56.yaml", ["student.arch=resnet110"]).output_dir == \
        "runs/cifar100/teachers/resnet110"
    cfg = load_config(CONFIGS / "kd" / "resnet32x4-resnet8x4.yaml", ["student.arch=resnet20"])
    assert cfg.output_dir == "runs/cifar100/kd/resnet32x4-resnet20"


def test_config_shows_only_what_applies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(CONFIGS / "teachers" / "resnet56.yaml")]) == 0
    out = capsys.readouterr().out
    assert "\nteacher:" not in out and "eval_teacher" not in out and "image_size" not in out
    assert "arch: resnet56" in out
    assert main(["config", str(CONFIGS / "kd" / "resnet32x4-resnet8x4.yaml")]) == 0
    assert "\nteacher:" in capsys.readouterr().out


def test_methods_lists_full_keys_with_their_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "pckd.preview.mode = preview  [off | preview | curriculum | focal]" in out
    assert "kd.weighting.mode = none  [none | preview | curriculum | focal]" in out
    assert "PreviewParams(" not in out


def test_help_pages_list_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "train.*" in out and "pckd methods" in out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "safetensors file to write" in capsys.readouterr().out


def test_a_bare_command_shows_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "usage: pckd train" in err and "required" not in err


def test_models_into_a_closed_pipe_is_quiet() -> None:
    proc = subprocess.run(f"{sys.executable} -m pckd models | head -2", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_model_table_columns_stay_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("parameter counts")]
    family_col = {ln.index(ln.split()[1], len(ln.split()[0])) for ln in lines[:30]}
    assert len(family_col) == 1


def test_foreign_warnings_print_as_one_pckd_line(capsys: pytest.CaptureFixture[str]) -> None:
    from pckd.cli import _show_warning

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.warn("something odd\nacross lines", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.startswith("pckd: warning: something odd across lines (UserWarning from ") and err.count("\n") == 1


def test_loader_processes_default_to_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pckd.data import default_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_num_workers() == 8
    assert load_config(None, []).data.num_workers is None


def test_only_two_stage_methods_ask_ddp_to_search_for_unused_parameters() -> None:
    from pckd.methods.base import method_registry

    searching = sorted(n for n, spec in method_registry().items() if spec.cls.has_unused_parameters)
    assert searching == ["ab", "fsp", "ft", "sskd"]  # SSKD: the teacher head trains in its first stage only
