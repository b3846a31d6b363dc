"""End-to-end SSKD on a slice of the shared CIFAR-100: the teacher stage (own lr schedule, only the teacher's head
trains), then the student stage, and an interruption in the middle of the teacher stage that resumes exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.engine.trainer import Trainer
from pckd.errors import TrainingStopped

from .conftest import cifar_slice_config, signal_at_call

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# 192 images in batches of 32: 6 steps per epoch; epochs 1-2 are the teacher stage (lr 0.05, then 0.005 after
# its milestone 1), epoch 3 the student stage (cosine over the run's 3 epochs: 0.05 * (1 + cos(2 pi / 3)) / 2).
STAGE_LRS = [0.05, 0.005, 0.05 * 0.25]


def sskd_config(shared_data: Path, run_dir: Path, teacher: Path, extra: list[str] | None = None) -> Any:
    return cifar_slice_config(shared_data, run_dir, "sskd", teacher=str(teacher), epochs=3, train_limit=192,
                              extra=["train.batch_size=32", "train.log_interval=2", "data.test_limit=200",
                                     "train.eval_teacher=false", "sskd.init_epochs=2", "sskd.init_milestones=[1]",
                                     *(extra or [])])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]



def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_stage_then_student_stage(shared_data, random_teacher, tmp_path):
    run = tmp_path / "sskd"
    trainer = Trainer(sskd_config(shared_data, run, random_teacher))
    student0, t_head0, s_head0 = (_state(m) for m in (trainer.distiller.student, trainer.distiller.teacher_head,
                                                      trainer.distiller.student_head))
    trainer.fit(stop_after_epoch=2)  # the teacher stage alone
    after_stage = load_checkpoint_file(run / "last.pt")
    assert after_stage["epoch"] == 2
    for key, value in student0.items():  # the student, BN statistics included, is untouched by the teacher stage
        assert torch.equal(after_stage["model"][key], value), key
    heads = after_stage["heads"]
    assert all(torch.equal(heads[f"student_head.{k}"], v) for k, v in s_head0.items())
    assert not torch.equal(heads["teacher_head.0.weight"], t_head0["0.weight"])  # the teacher's head trained

    Trainer(sskd_config(shared_data, run, random_teacher, ["resume=true"])).fit()
    final = load_checkpoint_file(run / "last.pt")
    assert final["epoch"] == 3
    for key in ("teacher_head.0.weight", "teacher_head.2.bias"):  # frozen in the student stage
        assert torch.equal(final["heads"][key], heads[key]), key
    assert not torch.equal(final["heads"]["student_head.0.weight"], s_head0["0.weight"])
    assert not torch.equal(final["model"]["conv1.weight"], student0["conv1.weight"])

    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["lr"] for r in epochs] == pytest.approx(STAGE_LRS)
    for r in epochs[:2]:  # teacher stage: its loss and its head's rotation-matching accuracy, no student terms
        assert math.isfinite(r["train/ss_init"]) and 0.0 <= r["train/teacher_ss_acc"] <= 100.0
        assert "train/ce" not in r and r["epoch_time_s"] > 0  # its cost is in the run's record
    last = epochs[2]
    assert "train/ss_init" not in last
    for term in ("ce", "kd", "tf", "ss"):
        assert math.isfinite(last[f"train/{term}"]) and last[f"train/{term}"] > 0, term
    assert last["train/tf_kept"] == 1.0 and 0.75 <= last["train/ss_kept"] <= 1.0  # ratio_tf 1, ratio_ss 0.75


def test_interrupted_teacher_stage_resumes_exactly_and_is_not_redone(shared_data, random_teacher, tmp_path):
    Trainer(sskd_config(shared_data, tmp_path / "full", random_teacher)).fit()

    part = tmp_path / "part"
    interrupted = Trainer(sskd_config(shared_data, part, random_teacher))
    signal_at_call(interrupted, call=3)  # epoch 1 (the teacher stage), step 3 of 6 done
    with pytest.raises(TrainingStopped) as info:
        interrupted.fit()
    assert info.value.exit_code == 0 and "stopped at epoch 1 step 3" in str(info.value)
    saved = load_checkpoint_file(part / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 3)

    Trainer(sskd_config(shared_data, part, random_teacher, ["resume=true"])).fit()
    a, b = load_checkpoint_file(tmp_path / "full" / "last.pt"), load_checkpoint_file(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for entry in ("model", "heads"):
        assert a[entry].keys() == b[entry].keys()
        for key, value in a[entry].items():
            assert torch.equal(value, b[entry][key]), (entry, key)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]), key

    records = read_jsonl(part / "metrics.jsonl")
    resumed = [r for r in records if r["kind"] == "resume"]
    assert [(r["epoch"], r["step"]) for r in resumed] == [(1, 3)]
    steps = [(r["epoch"], r["step"]) for r in records if r["kind"] == "step"]
    assert len(steps) == len(set(steps)) == 9  # every logged step once: no step of the stage ran twice
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
