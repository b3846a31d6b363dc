"""Issue 10, items 15 and 16: every input that once gave a raw traceback, run through the CLI in-process. Each is
one `pckd: error:` line and exit 2 (or, for the report's damaged run files, warning lines and a report); YAML
errors, even from a file of NUL bytes such as /proc/self/environ, stay on one line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from pckd.cli import main
from pckd.models import create_model

TINY = ("method: ce\nstudent: {arch: resnet8}\ndata: {name: digits, train_limit: 32, test_limit: 16}\n"
        "train: {epochs: 1, batch_size: 16, device: cpu, progress: false, eval_teacher: false}\n")


@dataclass
class Case:
    """A command (``{tmp}`` is the test folder, ``{cfg}`` a valid tiny config, ``{run}`` a finished run, ``{w}``
    plain resnet8 weights), files to create first (name -> bytes), and fragments of the one error line."""

    args: list[str]
    fragments: list[str]
    files: dict[str, bytes] = field(default_factory=dict)


LONG = "n" * 300
CASES: dict[str, Case] = {
    "list element a list": Case(["train", "{cfg}", "train.milestones=[[1,2],3]"], ["'train.milestones[0]'", "int"]),
    "list a mapping": Case(["train", "{cfg}", "train.milestones={a: 1}"], ["'train.milestones'", "list[int]"]),
    "probe list element a list": Case(["probe", "{w}", "student.arch=resnet8", "data.name=digits",
                                       "probe.milestones=[[1]]"], ["'probe.milestones[0]'", "int"]),
    "_base_ a nested list": Case(["train", "{tmp}/b.yaml"], ["b.yaml", "_base_ must be a file name"],
                                 {"b.yaml": b"_base_: [[x]]\nmethod: ce\n"}),
    "_base_ a number": Case(["train", "{tmp}/b.yaml"], ["{tmp}/5' not found"], {"b.yaml": b"_base_: 5\nmethod: ce\n"}),
    "non-UTF-8 config": Case(["train", "{tmp}/b.yaml"], ["b.yaml", "not UTF-8"], {"b.yaml": b"method: ce\n# \xff\xfe\n"}),
    "deep nesting": Case(["train", "{tmp}/b.yaml"], ["b.yaml", "nesting deeper than"],
                         {"b.yaml": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n"}),
    "seed beyond 64 bits": Case(["train", "{cfg}", f"train.seed={2**64 + 1}"], ["'train.seed'", str(2**64 + 1)]),
    "negative momentum": Case(["train", "{cfg}", "train.momentum=-0.9"], ["'train.momentum'=-0.9", ">= 0"]),
    "negative weight decay": Case(["train", "{cfg}", "train.weight_decay=-1e-4"], ["'train.weight_decay'", ">= 0"]),
    "negative num_workers": Case(["train", "{cfg}", "data.num_workers=-2"], ["'data.num_workers'=-2", ">= 0"]),
    "output_dir name too long": Case(["train", "{cfg}", f"output_dir={{tmp}}/{LONG}"],
                                     ["longer than the filesystem allows"]),
    "data.root name too long": Case(["train", "{cfg}", "data.name=imagefolder", f"data.root={{tmp}}/{LONG}"],
                                    ["longer than the filesystem allows"]),
    "teacher name too long": Case(["train", "{cfg}", "method=kd", "teacher.arch=resnet8",
                                   f"teacher.checkpoint={{tmp}}/{LONG}.pt"], ["longer than the filesystem allows"]),
    "resume with another data.classes": Case(["train", "{run}/config.yaml", "resume=true", "data.classes=5",
                                              "train.epochs=2"], ["{run}/last.pt", "does not fit", "fc.weight"]),
    "report into a file": Case(["report", "{run}", "--output-dir", "{tmp}/afile"], ["--output-dir", "afile",
                                                                                   "is a file"], {"afile": b"x"}),
    "report below a file": Case(["report", "{run}", "--output-dir", "{tmp}/afile/sub"], ["afile/sub",
                                                                                         "cannot be created"],
                                {"afile": b"x"}),
    "demo --scale nan": Case(["demo", "--scale", "nan", "--output-dir", "{tmp}/demo"], ["--scale nan"]),
    "demo --scale inf": Case(["demo", "--scale", "inf", "--output-dir", "{tmp}/demo"], ["--scale inf"]),
    "demo --scale 0": Case(["demo", "--scale", "0", "--output-dir", "{tmp}/demo"], ["--scale 0"]),
    "_base_ /proc/self/environ": Case(["train", "{tmp}/b.yaml"], ["not valid YAML"],
                                      {"b.yaml": b"_base_: env.bin\n", "env.bin": b"A=1\0B=2\0PATH=/bin\nX=\n\0"}),
    "unclosed quote": Case(["train", "{tmp}/b.yaml"], ["b.yaml", "line 2", "not valid YAML"],
                           {"b.yaml": b'a: "unclosed\n'}),
    "tab indentation": Case(["train", "{tmp}/b.yaml"], ["b.yaml", "not valid YAML"], {"b.yaml": b"a:\n\t- b\n"}),
    "mapping in a scalar": Case(["train", "{tmp}/b.yaml"], ["b.yaml", "not valid YAML"],
                                {"b.yaml": b"a: b: c\nd: [1,\n  2\n"}),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.yaml").write_text(TINY)
    assert main(["train", str(root / "tiny.yaml"), f"output_dir={root / 'run'}"]) == 0
    return root / "run"


def _fill(arg: str, tmp: Path, run: Path) -> str:
    return arg.replace("{tmp}", str(tmp)).replace("{cfg}", str(tmp / "tiny.yaml")).replace(
        "{run}", str(run)).replace("{w}", str(tmp / "w.pt"))


@pytest.mark.parametrize("name", list(CASES))
def test_once_a_traceback_now_one_line_exit_2(name: str, tmp_path: Path, finished_run: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    (tmp_path / "tiny.yaml").write_text(TINY + f"output_dir: {tmp_path / 'out'}\n")
    torch.save(create_model("resnet8", num_classes=10).state_dict(), tmp_path / "w.pt")
    for file, data in case.files.items():
        (tmp_path / file).write_bytes(data)
    before = sorted(p.name for p in finished_run.iterdir())
    capsys.readouterr()
    code = main([_fill(a, tmp_path, finished_run) for a in case.args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("pckd: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "(unexpected;" not in errors[0], errors[0]  # a validated input, not the last-resort handler
    for fragment in case.fragments:
        assert _fill(fragment, tmp_path, finished_run) in errors[0], (fragment, errors[0])
    assert sorted(p.name for p in finished_run.iterdir()) == before
    assert not (tmp_path / "out").exists()


def test_proc_self_environ_as_base_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.isfile("/proc/self/environ"):
        pytest.skip("no /proc on this system")
    (tmp_path / "b.yaml").write_text("_base_: /proc/self/environ\n")
    assert main(["train", str(tmp_path / "b.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pckd: error: config file '/proc/self/environ'"), err


def _edit_json(path: Path, **values: object) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


@pytest.mark.parametrize("damage", ["summary of wrong types", "config.yaml with non-JSON values",
                                    "huge plot ranges"])
def test_report_of_damaged_run_files_warns_and_reports(damage: str, tmp_path: Path, finished_run: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy_run(finished_run, tmp_path / "runs" / "a")
    if damage == "summary of wrong types":
        _edit_json(run / "summary.json", best_top1="high", last_top1=[1, 2], epochs={"a": 1}, best_epoch=None,
                   method=7, wall_time_s=True)
    elif damage == "config.yaml with non-JSON values":
        with open(run / "config.yaml", "a") as fh:
            fh.write("when: 2020-01-01\nstamp: 2020-01-01 10:00:00\nbag: !!set {a, b}\nraw: !!binary aGVsbG8=\n")
    else:
        lines = []
        for line in (run / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "epoch":
                record.update({"test/top1": 1e308, "epoch": 10**18})
            if record.get("kind") == "step":
                record.update({"train/loss": 1e308, "step": 10**18})
            lines.append(json.dumps(record))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["report", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pckd: error:" not in err, err
    assert code == 0
    assert (tmp_path / "report" / "report.md").is_file()
    if damage == "huge plot ranges":
        assert "pckd: warning: no figure top1_" in err and "cannot be drawn" in err, err
