"""The run folder: every file name a run writes, what it wrote (its manifest), and the lock that keeps one run
per folder.

The trainer writes the files of :data:`TRAINER_FILES`; a method writes the files it declares in
``Distiller.output_files`` through the run writer. Every write is recorded in the manifest (``MANIFEST``), so
``overwrite=true`` removes exactly what the earlier run wrote and never a file the user put in the folder.
Folders written before the manifest existed fall back to the names pckd has ever written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pckd.errors import WriteFailed

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LAST = "last.pt"
PREVIOUS = "last.prev.pt"
BEST = "best.pt"
TENSORBOARD = "tensorboard"
CRASH_LOG = "crash.log"
MANIFEST = ".pckd-manifest.json"
LOCK = ".pckd.lock"
ANALYSIS = "analysis"  # the figures and numbers of `pckd analyze` (a folder)

TRAINER_FILES = (CONFIG, ENV, METRICS, SUMMARY, LAST, PREVIOUS, BEST, TENSORBOARD, CRASH_LOG)
CHECKPOINTS = (LAST, PREVIOUS)
RESULTS = (BEST, SUMMARY)
# Names earlier versions wrote that no current code writes (removed with the run they belong to).
LEGACY_FILES = ("preview_weights.png",)


_TEMP = re.compile(r"^\.(?P<target>.+)\.tmp(?:-(?P<pid>\d+))?$")  # `.NAME.tmp-PID` (or `.NAME.tmp`, older)


def write_failed(path: Path, exc: OSError) -> WriteFailed:
    """The exit-1 error of a run file that could not be written (disk full, quota, I/O error)."""
    return WriteFailed(f"could not write '{path}' ({exc.strerror or exc}); no temporary file was left")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file ``.NAME.tmp-PID`` beside it, flushed and fsynced,
    then renamed over it. Any OSError removes the temporary file and becomes :class:`WriteFailed` naming
    ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failed(path, exc) from None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temps(run_dir: Path, names: Iterable[str]) -> list[str]:
    """Remove the temporary files of atomic writes of ``names`` (and of the manifest) that a killed process
    left (``.NAME.tmp-PID`` whose PID is no longer alive, or an older ``.NAME.tmp``). Returns what was removed."""
    targets = {*names, MANIFEST}
    removed = []
    for entry in Path(run_dir).iterdir():
        match = _TEMP.match(entry.name)
        if match is None or match["target"] not in targets or (entry.is_dir() and not entry.is_symlink()):
            continue
        if match["pid"] is not None and _alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry.name)
    return removed


def _is_temp_of(name: str, targets: Iterable[str]) -> bool:
    """Whether ``name`` is a temporary file of an atomic write of one of ``targets`` (``.NAME.tmp*``)."""
    return any(name.startswith(f".{t}.tmp") for t in targets)


class Manifest:
    """The names (relative to the run folder) that runs in this folder wrote."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / MANIFEST
        self.names: list[str] = []
        self.exists = self.path.is_file() and not self.path.is_symlink()
        if self.exists:
            try:
                data = json.loads(self.path.read_text())
                self.names = [str(n) for n in data.get("files", []) if isinstance(n, str)]
            except (OSError, ValueError, AttributeError):
                self.names = []

    def add(self, name: str) -> None:
        """Record ``name`` (written atomically: a crash leaves the old or the new manifest; WriteFailed when the
        disk is full)."""
        if name in self.names:
            return
        self.names.append(name)
        write_atomically(self.path, (json.dumps({"files": self.names}, indent=1) + "\n").encode())


def written_by_pckd(run_dir: Path, legacy_names: Iterable[str] = ()) -> list[str]:
    """What earlier runs wrote in ``run_dir``: the manifest's names, or, in a folder from before the manifest,
    the trainer's files plus ``legacy_names`` (the methods' output files) that exist. Temporary files of
    interrupted atomic writes are included."""
    run_dir = Path(run_dir)
    manifest = Manifest(run_dir)
    names = list(manifest.names) if manifest.exists else [*TRAINER_FILES, *legacy_names, *LEGACY_FILES]
    if not manifest.exists and TENSORBOARD in names:  # a tensorboard/ pckd did not record may be the user's:
        names.remove(TENSORBOARD)                      # only its event files are pckd's (never through a link)
        board = run_dir / TENSORBOARD
        if board.is_dir() and not board.is_symlink():
            names += [f"{TENSORBOARD}/{n}" for n in sorted(os.listdir(board)) if n.startswith("events.out.tfevents.")]
    found = [n for n in names if os.path.lexists(run_dir / n)]
    if run_dir.is_dir():
        found += [p.name for p in run_dir.iterdir() if _is_temp_of(p.name, names) and p.name not in found]
    return found


def holds_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint to resume from."""
    return any((Path(run_dir) / n).is_file() for n in CHECKPOINTS)


def holds_results(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds results of a run (a checkpoint, a best checkpoint or a summary)."""
    return holds_checkpoint(run_dir) or any(os.path.lexists(Path(run_dir) / n) for n in RESULTS)


def remove_written(run_dir: Path, names: Iterable[str]) -> list[str]:
    """Remove ``names`` from ``run_dir`` without following links (a link is removed, not its target; a folder
    only when it is a real folder). Returns what was removed."""
    removed = []
    for name in names:
        target = Path(run_dir) / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            continue
        removed.append(name)
    manifest = Path(run_dir) / MANIFEST
    if manifest.is_file() and not manifest.is_symlink():
        manifest.unlink()
    return removed


class RunLock:
    """An exclusive, advisory lock on a run folder held for the whole run (``flock`` on ``LOCK``): a second
    run into the same folder is refused while the first is alive; the lock dies with its process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fh: IO[str] | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns None, or the holder's description when another process holds it."""
        import fcntl

        fh = open(self.path, "a+")  # noqa: SIM115 (the lock lives as long as the open file; released in release())
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                fh.close()
                raise
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            return holder
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return None

    def release(self) -> None:
        """Give the lock back (also on process exit)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
