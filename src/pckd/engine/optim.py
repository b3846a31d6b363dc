"""The optimizer of a run and the update it makes each step, chosen by ``train.optimizer``.

Each choice gives the optimizer and its *step rule*: how a step's named losses become an update. The trainer
calls the rule and never asks which optimizer it has, so a new way of training (DOT's two backward passes) is
one entry here, and any method runs with any entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pckd.engine.dot import DistillationOrientedSGD, dot_backward_step
from pckd.errors import UserError

StepRule = Callable[[dict[str, Tensor], Tensor, Any], None]  # (named losses, their total, optimizer)


def plain_step(losses: dict[str, Tensor], total: Tensor, optimizer: torch.optim.Optimizer) -> None:
    """One backward of the total of the losses, then the optimizer's step (gradients already zeroed)."""
    total.backward()
    optimizer.step()


def _dot_step(losses: dict[str, Tensor], total: Tensor, optimizer: DistillationOrientedSGD) -> None:
    dot_backward_step(losses, optimizer)


@dataclass(frozen=True)
class OptimizerSetup:
    """An optimizer and the step rule that drives it."""

    optimizer: torch.optim.Optimizer
    step: StepRule


def _sgd(groups: list[dict[str, Any]], train: Any) -> OptimizerSetup:
    opt = torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                          nesterov=train.nesterov)
    return OptimizerSetup(opt, plain_step)


def _dot(groups: list[dict[str, Any]], train: Any) -> OptimizerSetup:
    if train.precision == "fp16":
        raise UserError("config key 'train.optimizer'='dot' does not run with train.precision=fp16 (its two backward "
                        "passes bypass the gradient scaler); use train.precision=bf16 or fp32")
    if train.nesterov:
        raise UserError("config key 'train.optimizer'='dot' has no Nesterov variant; set train.nesterov=false")
    if train.dot_delta > train.momentum:
        raise UserError(f"config key 'train.dot_delta'={train.dot_delta} exceeds train.momentum={train.momentum}: "
                        f"the task momentum momentum - dot_delta would be negative; use a delta <= the momentum")
    opt = DistillationOrientedSGD(groups, lr=train.lr, momentum_task=train.momentum - train.dot_delta,
                                  momentum_kd=train.momentum + train.dot_delta, weight_decay=train.weight_decay)
    return OptimizerSetup(opt, _dot_step)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], Any], OptimizerSetup]] = {"sgd": _sgd, "dot": _dot}


def build_optimizer(groups: list[dict[str, Any]], train: Any) -> OptimizerSetup:
    """The optimizer ``train.optimizer`` names, over ``groups``, with its step rule."""
    return OPTIMIZERS[str(train.optimizer)](groups, train)
