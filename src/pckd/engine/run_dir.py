"""Checking and preparing ``output_dir`` before a run writes to it (the layout is :mod:`pckd.run_folder`).

Nothing is written before every input is validated: :func:`check_run_dir` only reads, :func:`create_run_dir`
runs once the data, models and method are built. It takes the folder's lock for the whole run and removes an
earlier run's files (only those pckd wrote) when ``overwrite=true`` says so, or when the earlier run crashed
before writing any checkpoint or result (nothing of it could be resumed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pckd.distributed as dist
from pckd.errors import UserError
from pckd.run_folder import (
    LEGACY_FILES,
    TRAINER_FILES,
    RunLock,
    holds_checkpoint,
    holds_results,
    remove_stale_temps,
    remove_written,
    written_by_pckd,
)


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (what a ``mkdir -p`` would start from)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def method_output_files() -> list[str]:
    """Every file a registered method may write into a run folder (for folders without a manifest)."""
    from pckd.methods.base import method_registry

    return sorted({name for spec in method_registry().values() for name in spec.cls.output_files})


def check_run_dir(cfg: Any) -> Path:
    """Check ``output_dir`` without writing anything: refuse to mix two runs unless resume or overwrite says
    what to do, and refuse a folder that cannot be created or written. Returns the run folder."""
    run_dir = Path(cfg.output_dir).expanduser()
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError(f"output_dir '{run_dir}' is a broken link; remove it or choose another output_dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir '{run_dir}' is a file; choose a folder with output_dir=...")
    if run_dir.is_dir() and holds_results(run_dir) and not (cfg.resume or cfg.overwrite):
        raise UserError(
            f"output_dir '{run_dir}' already holds a run; add resume=true to continue it, overwrite=true to replace "
            f"it, or choose another output_dir")
    if cfg.resume and not (run_dir.is_dir() and holds_checkpoint(run_dir)):
        raise UserError(f"resume=true but output_dir '{run_dir}' holds no run to resume (no checkpoint was written); "
                        f"drop resume=true to start the run")
    base = _nearest_existing(run_dir)
    if not base.is_dir():
        raise UserError(f"output_dir '{run_dir}' cannot be created: '{base}' is a file; choose another with output_dir=...")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"output_dir '{run_dir}' is not writable (no write permission on '{base}'); "
                        f"choose another with output_dir=...")
    return run_dir


def _checkpoints_read(cfg: Any) -> list[Path]:
    paths = []
    for role in ("teacher", "student"):
        ckpt = getattr(getattr(cfg, role), "checkpoint", None)
        if ckpt and "://" not in str(ckpt) and not str(ckpt).startswith("zoo:"):
            paths.append(Path(ckpt).expanduser())
    return paths


def create_run_dir(cfg: Any, run_dir: Path) -> RunLock | None:
    """Make ``run_dir`` (rank 0), take its lock, and clear an earlier run that ``overwrite=true`` replaces or
    that left no checkpoint and no result. Returns the held lock (None on other ranks)."""
    if not dist.is_main_process():
        return None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        holder = lock.acquire()
    except OSError as exc:
        raise UserError(f"output_dir '{run_dir}' is not writable ({exc.strerror}); choose another with output_dir=...") from None
    if holder is not None:
        raise UserError(f"output_dir '{run_dir}' is in use by another pckd run ({holder}); wait for it to finish or "
                        f"choose another output_dir")
    try:
        # Temporary files of a process killed mid-write (its pid gone) are garbage whatever this run does.
        remove_stale_temps(run_dir, [*TRAINER_FILES, *method_output_files(), *LEGACY_FILES])
        if not cfg.resume and (cfg.overwrite or not holds_results(run_dir)):
            stale = written_by_pckd(run_dir, method_output_files())
            doomed = {(run_dir / n).resolve() for n in stale} | {run_dir.resolve() / n for n in stale}
            for ckpt in _checkpoints_read(cfg):
                if ckpt.resolve() in doomed or any(parent in doomed for parent in ckpt.resolve().parents):
                    raise UserError(f"overwrite=true would delete '{ckpt}', which this run reads; move it out of "
                                    f"output_dir '{run_dir}' first")
            remove_written(run_dir, stale)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        lock.release()
        raise UserError(f"output_dir '{run_dir}' is not writable ({exc.strerror}); choose another with output_dir=...") from None
    except UserError:
        lock.release()
        raise
    return lock
