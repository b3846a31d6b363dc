"""Crash-safe checkpoint files.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the target, so a
reader sees either the old file or the new one, never half of one. Before the rename the previous ``last`` is
kept as ``last.prev.pt``; resuming falls back to it when ``last`` is unreadable.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from pckd.errors import PckdWarning, UserError
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


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load one of the project's own checkpoints (weights_only); UserError naming the file if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong file type
        raise UserError(f"checkpoint '{path}' is truncated or corrupt ({type(exc).__name__}); use another checkpoint") from None
    if not isinstance(obj, dict) or obj.get("format") != "pckd":
        raise UserError(f"'{path}' is not a pckd training checkpoint; to use it as a teacher set teacher.checkpoint={path}")
    return obj


def load_resume_checkpoint(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of a run: ``last.pt``, else ``last.prev.pt`` (saying so)."""
    candidates = [run_dir / LAST, run_dir / PREVIOUS]
    errors = []
    for path in candidates:
        if not path.exists():
            if path.name == LAST and (run_dir / PREVIOUS).exists():
                errors.append(f"checkpoint '{path}' is missing")
            continue
        try:
            state = load_checkpoint_file(path)
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
