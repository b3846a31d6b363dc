"""Start a training job in this process, joining a torchrun process group when launched by torchrun."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed

import pckd.distributed as dist


def _init_process_group() -> bool:
    if not dist.launched_by_torchrun() or dist.is_distributed():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend=backend)
    return True


def run_training(cfg: Any) -> dict[str, Any] | None:
    """Train; returns the summary on rank 0 (None on other ranks)."""
    from pckd.engine.signals import StopRequest
    from pckd.engine.trainer import Trainer

    started = _init_process_group()
    try:
        # Listening from before the data and models are built: a SIGTERM during start-up stops the run cleanly
        # (a checkpoint where training would begin), and one repeated while the process exits is ignored.
        with StopRequest(ignore_sigterm_after_stop=True) as stop:
            summary = Trainer(cfg, stop=stop).fit()
        return summary if dist.is_main_process() else None
    finally:
        if started:
            torch.distributed.destroy_process_group()
