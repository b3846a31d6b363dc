"""DOT, the Distillation-Oriented Trainer (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023).

SGD with two momentum buffers per parameter: one accumulates the gradient of the task loss (momentum
``momentum - delta``), the other the gradient of the distillation loss (momentum ``momentum + delta``). A step
takes two backward passes: the distillation terms first (:meth:`DistillationOrientedSGD.record_kd_grads`), then
the task terms, then :meth:`DistillationOrientedSGD.step`. Semantics and their source: docs/methods/dot.md.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pckd.distributed import is_distributed, world_size

TASK_TERMS = frozenset({"ce"})  # StepOutput loss names that are the task loss; every other term is distillation


class DistillationOrientedSGD(torch.optim.Optimizer):
    """DOT's optimizer: per parameter a task buffer (momentum ``momentum_task``) and a distillation buffer
    (``momentum_kd``). A parameter that only one of the losses reaches uses the mean of the two momenta for that
    buffer. Weight decay enters the task gradient, or the distillation gradient of a parameter without a task
    gradient (but not on that buffer's first step, as in the authors' code)."""

    def __init__(self, params: Any, lr: float, momentum_task: float, momentum_kd: float,
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or momentum_task < 0 or momentum_kd < 0 or weight_decay < 0:
            raise ValueError("lr, momenta and weight_decay must be >= 0")
        defaults = {"lr": lr, "momentum": momentum_task, "momentum_kd": momentum_kd, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self._kd_grads: dict[int, Tensor] = {}

    @torch.no_grad()
    def record_kd_grads(self) -> None:
        """Keep the gradients now in ``.grad`` as the distillation gradients of this step."""
        self._kd_grads = {id(p): p.grad.detach().clone() for group in self.param_groups for p in group["params"]
                          if p.grad is not None}

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Update with the task gradients now in ``.grad`` and the recorded distillation gradients."""
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task, m_kd = group["momentum"], group["momentum_kd"]
            m_mean = (m_task + m_kd) / 2.0
            for p in group["params"]:
                g_kd = self._kd_grads.get(id(p))
                state = self.state[p]
                if p.grad is not None:  # the task gradient
                    d = p.grad.add(p, alpha=wd) if wd != 0 else p.grad.clone()
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(m_task if g_kd is not None else m_mean).add_(d)
                    p.add_(buf, alpha=-lr)
                if g_kd is not None:  # the distillation gradient
                    buf = state.get("momentum_kd_buffer")
                    if buf is None:
                        buf = state["momentum_kd_buffer"] = g_kd.clone()
                    elif p.grad is not None:
                        buf.mul_(m_kd).add_(g_kd)
                    else:
                        buf.mul_(m_mean).add_(g_kd.add(p, alpha=wd) if wd != 0 else g_kd)
                    p.add_(buf, alpha=-lr)
        self._kd_grads = {}


def split_losses(losses: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
    """(task total, distillation total) of a step's named losses; None where a side has no term."""
    task = [v for k, v in losses.items() if k in TASK_TERMS]
    kd = [v for k, v in losses.items() if k not in TASK_TERMS]
    return (torch.stack(task).sum() if task else None), (torch.stack(kd).sum() if kd else None)


def average_grads_over_ranks(optimizer: torch.optim.Optimizer) -> None:
    """Average every ``.grad`` of the optimizer's parameters over the ranks (one flat all_reduce).

    DDP averages the gradients of the first backward after a forward only; its reducer ignores a second backward
    of the same forward, which would leave DOT's task gradients local to each rank and the ranks' weights drifting
    apart. Averaging values that are already equal on every rank changes nothing, so this is safe whatever DDP did.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def dot_backward_step(losses: dict[str, Tensor], optimizer: DistillationOrientedSGD) -> None:
    """One DOT step: backward of the distillation terms (graph kept), record, backward of the task terms, step.
    Under DDP the task gradients of the second backward are averaged over the ranks here."""
    task, kd = split_losses(losses)
    optimizer.zero_grad(set_to_none=True)
    if kd is not None and kd.requires_grad:
        kd.backward(retain_graph=task is not None)
    optimizer.record_kd_grads()
    optimizer.zero_grad(set_to_none=True)
    if task is not None and task.requires_grad:
        task.backward()
        if is_distributed() and kd is not None and kd.requires_grad:
            average_grads_over_ranks(optimizer)  # the second backward of this forward: DDP did not reduce it
    optimizer.step()
