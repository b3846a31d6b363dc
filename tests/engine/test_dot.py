"""DOT (`train.optimizer=dot`): the two momentum buffers after two steps by hand, the split of the losses, the
equivalence with SGD when the momenta agree, config errors, and a run of KD+DOT through the one trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pckd.config import load_config
from pckd.engine.dot import DistillationOrientedSGD, dot_backward_step, split_losses
from pckd.engine.trainer import Trainer
from pckd.errors import UserError


def _params() -> tuple[torch.nn.Parameter, torch.nn.Parameter, torch.nn.Parameter]:
    return tuple(torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64)) for _ in range(3))  # type: ignore


def test_two_steps_by_hand():
    # a gets both gradients, b only the task one, c only the distillation one. Linear losses, so the gradients
    # are constant: task = 2a + 3b, kd = 5a + 7c. lr 0.5, wd 0.1, momenta 0.8 (task) / 0.95 (kd), mean 0.875.
    a, b, c = _params()
    opt = DistillationOrientedSGD([a, b, c], lr=0.5, momentum_task=0.8, momentum_kd=0.95, weight_decay=0.1)

    def step() -> None:
        dot_backward_step({"ce": 2 * a.sum() + 3 * b.sum(), "kd": 5 * a.sum() + 7 * c.sum()}, opt)

    step()
    # a: task buf 2 + 0.1*1 = 2.1, a = 1 - 0.5*2.1 = -0.05; kd buf 5 (no decay on a kd buffer), a = -0.05 - 2.5.
    # b: task buf 3.1, b = 1 - 1.55. c: kd buf 7 (its first step takes no decay), c = 1 - 3.5.
    assert (a.item(), b.item(), c.item()) == pytest.approx((-2.55, -0.55, -2.5), abs=1e-12)
    step()
    # a: task buf 0.8*2.1 + (2 + 0.1*-2.55) = 3.425; kd buf 0.95*5 + 5 = 9.75; a = -2.55 - 0.5*(3.425 + 9.75).
    # b: task buf 0.875*3.1 + (3 + 0.1*-0.55) = 5.6575 (no kd gradient: the mean momentum); b = -0.55 - 2.82875.
    # c: kd buf 0.875*7 + (7 + 0.1*-2.5) = 12.875 (no task gradient: mean momentum, decay here); c = -2.5 - 6.4375.
    state = opt.state
    assert state[a]["momentum_buffer"].item() == pytest.approx(3.425, abs=1e-12)
    assert state[a]["momentum_kd_buffer"].item() == pytest.approx(9.75, abs=1e-12)
    assert state[b]["momentum_buffer"].item() == pytest.approx(5.6575, abs=1e-12)
    assert "momentum_kd_buffer" not in state[b]
    assert state[c]["momentum_kd_buffer"].item() == pytest.approx(12.875, abs=1e-12)
    assert "momentum_buffer" not in state[c]
    assert (a.item(), b.item(), c.item()) == pytest.approx((-9.1375, -3.37875, -8.9375), abs=1e-12)
    # The buffers are optimizer state: they travel in its state_dict (checkpoints, resume).
    saved = opt.state_dict()["state"]
    assert saved[0]["momentum_kd_buffer"].item() == pytest.approx(9.75, abs=1e-12)


def test_equal_momenta_without_decay_is_sgd_with_momentum_on_the_sum():
    # Every parameter reached by both losses, delta = 0: the two buffers add up to SGD's buffer of the total.
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    w_ref = torch.nn.Parameter(w.detach().clone())
    x = torch.randn(5, 4, dtype=torch.float64)
    dot = DistillationOrientedSGD([w], lr=0.1, momentum_task=0.9, momentum_kd=0.9)
    sgd = torch.optim.SGD([w_ref], lr=0.1, momentum=0.9)
    for _ in range(3):
        dot_backward_step({"ce": (x @ w).pow(2).mean(), "kd": (x @ w).sin().sum()}, dot)
        sgd.zero_grad()
        ((x @ w_ref).pow(2).mean() + (x @ w_ref).sin().sum()).backward()
        sgd.step()
    assert torch.allclose(w, w_ref, rtol=1e-12, atol=1e-12)


def test_split_losses_puts_ce_on_the_task_side():
    t = torch.tensor
    task, kd = split_losses({"ce": t(1.0), "tckd": t(2.0), "nckd": t(4.0)})
    assert task.item() == 1.0 and kd.item() == 6.0
    assert split_losses({"ce": t(3.0)}) == (t(3.0), None)


@pytest.mark.parametrize("override, key", [(["train.nesterov=true"], "train.optimizer"),
                                           (["train.dot_delta=0.95"], "train.dot_delta")])
def test_config_errors_name_the_key(override, key, tmp_path: Path, random_teacher: Path):
    cfg = load_config(None, ["method=kd", "train.optimizer=dot", "student.arch=resnet8", "teacher.arch=resnet8",
                             f"teacher.checkpoint={random_teacher}", "data.name=digits", "data.train_limit=16",
                             "data.test_limit=16", "train.device=cpu", f"output_dir={tmp_path / 'run'}", *override])
    with pytest.raises(UserError, match=key):
        Trainer(cfg).fit()


def test_unknown_optimizer_is_a_one_line_error():
    with pytest.raises(UserError, match="train.optimizer"):
        load_config(None, ["train.optimizer=adam"])


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_kd_and_dkd_train_with_dot_through_the_trainer(method: str, tmp_path: Path, random_teacher: Path):
    run = tmp_path / "run"
    cfg = load_config(None, [f"method={method}", "train.optimizer=dot", "student.arch=resnet8",
                             "teacher.arch=resnet8", f"teacher.checkpoint={random_teacher}", "data.name=digits",
                             "data.train_limit=32", "data.test_limit=16", "train.epochs=1", "train.batch_size=16",
                             "train.device=cpu", "train.progress=false", "train.log_interval=1",
                             "train.eval_teacher=false", f"output_dir={run}"])
    trainer = Trainer(cfg)
    assert isinstance(trainer.built.optimizer, DistillationOrientedSGD)
    assert trainer.fit()["epochs"] == 1
    state = trainer.built.optimizer.state
    assert any("momentum_kd_buffer" in s for s in state.values()) and any("momentum_buffer" in s for s in state.values())
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(steps) == 2 and all("train/ce" in r for r in steps)
