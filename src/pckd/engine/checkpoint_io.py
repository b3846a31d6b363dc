"""Crash-safe checkpoint files.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the target, so a
reader sees either the old file or the new one, never half of one. Before the rename the previous ``last`` is
kept as ``last.prev.pt``; resuming falls back to it when ``last`` is unreadable.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pckd.errors import PckdWarning, UserError
from pckd.models.checkpoint import forbidden_globals
from pckd.run_folder import BEST, LAST, PREVIOUS  # noqa: F401  (re-exported: the checkpoint names)


def atomic_save(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    """Serialise ``obj`` to ``path`` atomically; if ``keep_previous`` is given, the old ``path`` is moved there
    (only once the new file is complete)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialise fully before touching the disk: a failure here leaves no file behind
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous is not None and path.exists():
            _keep_as_previous(path, Path(keep_previous))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _keep_as_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` the current ``path`` file. A hard link keeps ``path`` in place too, so at no instant
    is there no ``last``; where links are unsupported the file is moved (resume then falls back to it)."""
    link = previous.with_name(f".{previous.name}.tmp-{os.getpid()}")
    try:
        if link.exists():
            link.unlink()
        os.link(path, link)
        os.replace(link, previous)
    except OSError:
        if link.exists():
            link.unlink()
        os.replace(path, previous)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# What every pckd checkpoint holds, with the type each entry must have (see Trainer._checkpoint).
REQUIRED: dict[str, type | tuple[type, ...]] = {"method": str, "arch": str, "model": dict, "heads": dict, "optimizer": dict, "scheduler": dict,
            "epoch": int, "step": int, "rng": dict, "method_state": dict, "best_top1": (int, float),
            "best_epoch": int, "teacher_eval": dict, "wall_time": (int, float)}


def check_structure(state: dict[str, Any], path: Path) -> None:
    """UserError naming ``path`` unless ``state`` has every entry of :data:`REQUIRED` with its type, and tensors
    for weights (a file that only claims to be a pckd checkpoint is as unusable as a truncated one)."""
    missing = [k for k in REQUIRED if k not in state]
    wrong = [k for k, kind in REQUIRED.items() if k in state and (not isinstance(state[k], kind)
                                                                  or isinstance(state[k], bool))]
    wrong += [k for k in ("model", "heads") if k in state and isinstance(state[k], dict) and k not in wrong
              and not all(isinstance(v, torch.Tensor) for v in state[k].values())]
    if missing or wrong:
        what = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                           f"wrong type of {', '.join(wrong)}" if wrong else "") if part)
        raise UserError(f"checkpoint '{path}' is not a complete pckd checkpoint ({what}); use another checkpoint")
    if state["epoch"] < 0 or state["step"] < 0:
        raise UserError(f"checkpoint '{path}' has a negative epoch or step; use another checkpoint")


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load one of the project's own checkpoints (weights_only); UserError naming the file if it is unreadable
    or holds pickled code. (What a resume needs is checked by :func:`load_resume_checkpoint`.)"""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = forbidden_globals(exc)
        if found:  # pckd never writes one: no trust key applies to a run's own checkpoints
            raise UserError(f"checkpoint '{path}' contains pickled code/objects ({', '.join(found)}) and was NOT "
                            "loaded or executed; pckd never writes such a file; use another checkpoint") from None
        raise UserError(f"checkpoint '{path}' is truncated or corrupt (UnpicklingError); use another checkpoint") from None
    except Exception as exc:  # truncated zip, bad pickle, wrong file type
        raise UserError(f"checkpoint '{path}' is truncated or corrupt ({type(exc).__name__}); use another checkpoint") from None
    if not isinstance(obj, dict) or obj.get("format") != "pckd":
        raise UserError(f"'{path}' is not a pckd training checkpoint; to use it as a teacher set teacher.checkpoint={path}")
    return obj


def load_resume_checkpoint(run_dir: Path, check: Callable[[dict[str, Any], Path], None] | None = None
                           ) -> tuple[dict[str, Any], Path]:
    """The newest usable checkpoint of a run: ``last.pt``, else ``last.prev.pt`` (saying so). Each must hold
    every entry a resume needs (:func:`check_structure`); ``check`` (the trainer's: do the weights fit this run's networks?) raises UserError for a file that loads but cannot be
    restored, which then falls back the same way."""
    candidates = [run_dir / LAST, run_dir / PREVIOUS]
    errors = []
    for path in candidates:
        if not path.exists():
            if path.name == LAST and (run_dir / PREVIOUS).exists():
                errors.append(f"checkpoint '{path}' is missing")
            continue
        try:
            state = load_checkpoint_file(path)
            check_structure(state, path)
            if check is not None:
                check(state, path)
        except UserError as exc:
            errors.append(str(exc))
            continue
        if errors:
            warnings.warn(f"{errors[0]}; falling back to the previous good checkpoint '{path}'", PckdWarning,
                          stacklevel=2)
        return state, path
    if errors:
        raise UserError(f"no readable checkpoint in '{run_dir}': {'; '.join(errors)}")
    raise UserError(f"resume=true but '{run_dir}' holds no checkpoint ({LAST}); drop resume=true to start a new run")
