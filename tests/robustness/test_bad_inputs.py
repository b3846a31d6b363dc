"""Bad inputs are refused before training: one `pckd: error:` line naming the key/file, exit 2, no traceback,
and nothing written into output_dir."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pckd.cli import main
from pckd.models import create_model

BASE = "method: ce\nstudent: {arch: resnet8}\ndata: {name: digits}\ntrain: {epochs: 1, device: cpu, progress: false}\n"


@dataclass
class Case:
    """One bad input: extra CLI arguments (``{tmp}`` is replaced by the test folder), the fragments the error
    line must contain, and an optional setup that creates files in the test folder."""

    args: list[str]
    fragments: list[str]
    setup: Callable[[Path], None] | None = None
    config: str = BASE
    run_dir_exists: bool = False  # the case itself puts something at output_dir


def _fake_cifar100(root: Path, bad_label: int | None = None, complete: bool = True) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = [0, 1, 2, 3] if bad_label is None else [0, 1, bad_label, 3]
    split = {"data": np.zeros((4, 3072), dtype=np.uint8), "fine_labels": labels}
    for name in ("train", "test") if complete else ("train",):
        (folder / name).write_bytes(pickle.dumps(split))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))


def _image_folder(root: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 40), (10, 200, 30)).save(root / split / cls / "0.png")


def _teacher(tmp: Path, arch: str, classes: int) -> None:
    torch.save({"model": create_model(arch, num_classes=classes).state_dict()}, tmp / "teacher.pth")


def _truncated_teacher(tmp: Path) -> None:
    _teacher(tmp, "resnet8", 10)
    data = (tmp / "teacher.pth").read_bytes()
    (tmp / "teacher.pth").write_bytes(data[: len(data) // 2])


def _previous_run(tmp: Path) -> None:
    """A finished run's results without its resumable checkpoint (last.pt): still a run, never overwritten."""
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.jsonl").write_text('{"kind": "epoch", "epoch": 1}\n')
    (tmp / "run" / "summary.json").write_text('{"best_top1": 50.0}\n')


KD = ["method=kd", "teacher.arch=resnet8", "teacher.checkpoint={tmp}/teacher.pth"]
IMAGEFOLDER = ["data.name=imagefolder", "data.root={tmp}/images", "data.num_workers=0"]

CASES: dict[str, Case] = {
    "bad yaml": Case([], ["bad.yaml", "line 4", "not valid YAML"], config="method: ce\ntrain:\n  epochs: 1\n lr: 0.1\n"),
    "config not a mapping": Case([], ["bad.yaml", "must hold a mapping"], config="- 1\n- 2\n"),
    "override without =": Case(["train.epochs"], ["'train.epochs'", "key=value"]),
    "unknown key with suggestion": Case(["train.lrr=0.1"], ["'train.lrr'", "did you mean 'train.lr'"]),
    "unknown section": Case(["bogus.key=1"], ["'bogus'", "valid keys here"]),
    "other method's section": Case(["kd.temperature=4"], ["'kd'", "method=kd"]),
    "wrong type": Case(["train.epochs=ten"], ["'train.epochs'", "type int"]),
    "wrong type list": Case(["train.milestones=soon"], ["'train.milestones'", "list[int]"]),
    "negative epochs": Case(["train.epochs=-3"], ["'train.epochs'=-3", "must be positive"]),
    "zero batch": Case(["train.batch_size=0"], ["'train.batch_size'=0"]),
    "resume and overwrite": Case(["resume=true", "overwrite=true"], ["'resume'", "'overwrite'"]),
    "unknown method": Case(["method=kdd"], ["'kdd'", "did you mean 'kd'", "valid: ", ", ce, ckd, ", ", kd, ", ", pckd, "]),
    "retired method lskd (override)": Case(["method=lskd"], ["'method'='lskd'", "renamed 'ls'", "method=ls",
                                                             "docs/methods/ls.md"]),
    "retired method lskd (config file)": Case([], ["'method'='lskd'", "method=ls", "docs/methods/ls.md"],
                                              config=BASE.replace("method: ce", "method: lskd")),
    "unknown model": Case(["student.arch=resnet88"], ["'resnet88'", "student.arch", "did you mean 'resnet8'"]),
    "unknown data.name": Case(["data.name=mnist"], ["'data.name'='mnist'", "cifar100"]),
    "missing data root": Case(["data.name=cifar100", "data.root={tmp}/nowhere"], ["data.root", "nowhere"]),
    "missing data file": Case(["data.name=cifar100", "data.root={tmp}/cifar"], ["data.root", "cifar-100-python/test",
                                                                               "is missing"],
                              setup=lambda t: _fake_cifar100(t / "cifar", complete=False)),
    "label out of range": Case(["data.name=cifar100", "data.root={tmp}/cifar"], ["label 150", "cifar-100-python/train"],
                               setup=lambda t: _fake_cifar100(t / "cifar", bad_label=150)),
    "data.classes too large": Case(["data.classes=50"], ["data.classes=50", "1..10"]),
    "data.num_classes differs": Case(["data.num_classes=7"], ["data.num_classes=7", "10 classes"]),
    "missing imagefolder root": Case(["data.name=imagefolder", "data.root={tmp}/nowhere"], ["data.root", "train"]),
    "kd without teacher checkpoint": Case(["method=kd"], ["method=kd", "teacher.checkpoint=PATH"]),
    "teacher checkpoint not found": Case(KD, ["teacher.pth", "(teacher.checkpoint) not found"]),
    "teacher checkpoint corrupt": Case(KD, ["teacher.pth", "(teacher.checkpoint)", "truncated or corrupt"],
                                       setup=_truncated_teacher),
    "teacher of the wrong arch": Case(KD, ["teacher.pth", "(teacher.checkpoint)", "'resnet14' checkpoint"],
                                      setup=lambda t: _teacher(t, "resnet14", 10)),
    "teacher classes differ from data": Case(KD, ["teacher.pth", "(teacher.checkpoint) has 100 classes but the data "
                                                  "has 10"], setup=lambda t: _teacher(t, "resnet8", 100)),
    "cifar student on 224px images": Case(IMAGEFOLDER, ["student.arch=resnet8", "32x32", "224x224"],
                                          setup=lambda t: _image_folder(t / "images")),
    "cifar teacher on 224px images": Case(IMAGEFOLDER + ["student.arch=torchvision.resnet18", *KD],
                                          ["teacher.arch=resnet8", "32x32", "224x224"],
                                          setup=lambda t: (_image_folder(t / "images"), _teacher(t, "resnet8", 2))),
    "bad pckd.preview.mode": Case(["method=pckd", "pckd.preview.mode=sometimes"], ["pckd.preview.mode", "sometimes"]),
    "bad ckd.negatives": Case(["method=ckd", "ckd.negatives=everyone"], ["ckd.negatives", "teacher_student"]),
    "bad train.device": Case(["train.device=tpu"], ["'train.device'='tpu'"]),
    "output_dir not creatable": Case(["output_dir={tmp}/afile/run"], ["output_dir", "afile", "is a file"],
                                     setup=lambda t: (t / "afile").write_text("x")),
    "output_dir is a file": Case(["output_dir={tmp}/afile"], ["output_dir", "afile", "is a file"],
                                 setup=lambda t: (t / "afile").write_text("x")),
    "output_dir holds another run": Case([], ["output_dir", "already holds a run", "overwrite=true"],
                                         setup=_previous_run, run_dir_exists=True),
    "resume with nothing to resume": Case(["resume=true"], ["resume=true", "holds no run"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    if case.setup is not None:
        case.setup(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(case.config)
    run_dir = tmp_path / "run"
    args = ["train", str(config), f"output_dir={run_dir}", *(a.replace("{tmp}", str(tmp_path)) for a in case.args)]
    code = main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("pckd: error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in case.fragments:
        assert fragment.replace("{tmp}", str(tmp_path)) in errors[0], (fragment, errors[0])
    if not case.run_dir_exists:
        assert not run_dir.exists(), "a refused config must not create the run folder"


def test_refused_overwrite_keeps_the_old_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """overwrite=true with a config that fails validation must not delete the run it was going to replace."""
    _previous_run(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text(BASE)
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}", "overwrite=true", "data.classes=50"]) == 2
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"kind": "epoch", "epoch": 1}\n'
    assert "data.classes=50" in capsys.readouterr().err


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20
