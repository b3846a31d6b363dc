"""What a checkpoint records about the process besides the weights: RNG states and the environment."""

from __future__ import annotations

import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

import pckd.distributed as dist
from pckd import __version__


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states, as tensors and plain lists (``weights_only``-loadable)."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def environment(cfg: Any) -> dict[str, Any]:
    """Versions, git revision, seed, world size and command line of this run (``env.json``)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"pckd": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.version.cuda, "git_revision": rev,
            "seed": cfg.train.seed, "world_size": dist.world_size(), "command": " ".join(sys.argv)}
