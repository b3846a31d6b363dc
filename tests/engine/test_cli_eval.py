"""`pckd eval` on a trained checkpoint reproduces the accuracy the trainer logged."""

from __future__ import annotations

import json

import pytest

from pckd.cli import main

pytestmark = pytest.mark.slow


def test_eval_reproduces_logged_best_accuracy(trained_teacher, capsys):
    summary = json.loads((trained_teacher.parent / "summary.json").read_text())
    assert main(["eval", str(trained_teacher), "train.device=cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(summary["best_top1"], abs=1e-6)
    assert result["n"] == 1000 and result["arch"] == "resnet8"


def test_eval_of_foreign_weights_needs_arch(trained_teacher, tmp_path, capsys):
    import torch

    bare = tmp_path / "bare.pth"
    torch.save(torch.load(trained_teacher, weights_only=True)["model"], bare)
    assert main(["eval", str(bare)]) == 2
    assert "add student.arch=NAME" in capsys.readouterr().err
