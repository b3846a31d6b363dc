"""What a sweep knows about each run: its state file, its lock, and the state read from its folder.

``<run>/sweep-state.json`` records every attempt (start, end, exit code, how it started, where: pid, host,
Slurm job) and is replaced atomically (temporary file + ``os.replace``), so a crash never leaves half of it.
``<run>/.sweep.lock`` is held (``flock``) by whoever runs the run, and inherited by the training process, so
the lock lives exactly as long as the run does, even if the sweep that started it dies.

A run's state, in the order it is decided:

- ``done``: ``summary.json`` is complete;
- ``running``: its lock is held (on this machine's view of the folder), or a Slurm job of it is queued or
  running;
- ``failed(n)``: its last attempt failed (n failures so far); it is retried while n <= ``retries``, then
  ``given up`` until ``--retry-failed``;
- ``resumable``: it left a checkpoint (stopped by a signal, preempted, killed);
- ``pending``: nothing to resume (never started, or stopped before its first checkpoint).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX: no locks (runs of one sweep still never share a folder)
    fcntl = None  # type: ignore[assignment]

from pckd.run_folder import LOCK as TRAINING_LOCK
from pckd.run_folder import SUMMARY, holds_checkpoint, holds_results

STATE_FILE = "sweep-state.json"
LOCK_FILE = ".sweep.lock"
LOG_FILE = "sweep.log"
BAD_INPUT = 2  # `pckd train`'s exit code for a bad config, file or model: retrying cannot help until it is fixed
INTERRUPTED = 130  # SIGINT: stopped on purpose, not a failure


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_state(run_dir: Path) -> dict[str, Any]:
    """The run's state record (``{"attempts": [], "failures": 0}`` when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        data = {}
    data.setdefault("attempts", [])
    data.setdefault("failures", 0)
    return data


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / STATE_FILE, state)


def is_failure(code: int | None) -> bool:
    """Whether an attempt's exit code counts as a failure: 0 (done, or stopped by SIGTERM with a checkpoint)
    and 130 (SIGINT) do not; None (the attempt's end was never recorded) does not either."""
    return code is not None and code not in (0, INTERRUPTED)


def attempt_failed(attempt: dict[str, Any]) -> bool:
    """Whether an attempt counts as a failure: its exit code says so and the stop was not asked for (a stop
    this sweep or Slurm asked for ends torchrun with exit 1 even though every rank saved its checkpoint)."""
    return is_failure(attempt.get("exit_code")) and not attempt.get("stopped_by")


def summary_complete(run_dir: Path) -> dict[str, Any] | None:
    """The run's summary when ``summary.json`` is a complete record of a finished run, else None."""
    try:
        data = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("last_top1"), (int, float)):
        return None
    return data


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run left a checkpoint to resume from (``last.pt`` or ``last.prev.pt``)."""
    return holds_checkpoint(run_dir)


def holds_unresumable_results(run_dir: Path) -> bool:
    """Results without a checkpoint (a summary or best.pt whose last.pt was removed): only overwrite=true
    starts such a folder again (the trainer clears a crash that left neither by itself)."""
    return holds_results(run_dir) and not holds_checkpoint(run_dir)


# ---- locks ---------------------------------------------------------------------------------------------
class RunLock:
    """An exclusive ``flock`` on ``<run>/.sweep.lock``; ``fd`` can be passed to the training process."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes when the last holder (this or the run's process) closes it
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock_held(path: Path) -> bool:
    if fcntl is None or not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock at once
    return False


def lock_held_by_training(run_dir: Path) -> bool:
    """Whether a `pckd train` holds the folder's training lock (started by hand, or by a sweep elsewhere)."""
    return _flock_held(Path(run_dir) / TRAINING_LOCK)


def lock_held(run_dir: Path) -> bool:
    """Whether some process runs the run: a sweep (``.sweep.lock``) or any `pckd train` into the folder (the
    trainer's own lock), so a training started by hand is left alone too."""
    return _flock_held(Path(run_dir) / LOCK_FILE) or _flock_held(Path(run_dir) / TRAINING_LOCK)


# ---- Slurm jobs ----------------------------------------------------------------------------------------
def live_slurm_jobs(job_ids: list[str]) -> set[str] | None:
    """The ids among ``job_ids`` that Slurm still has queued or running (``squeue``); None when squeue is not
    available here (then the recorded state is all there is)."""
    if not job_ids:
        return set()
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted(set(job_ids)))],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


# ---- a run's state ---------------------------------------------------------------------------------------
@dataclass
class RunStatus:
    """The state of one run, as ``pckd sweep status`` shows it."""

    state: str  # done | running | queued | failed | resumable | pending
    failures: int
    attempts: int
    given_up: bool = False
    detail: str = ""  # e.g. the Slurm job, or the last error line of a failed run

    @property
    def label(self) -> str:
        if self.state == "failed":
            return f"failed({self.failures}){', given up' if self.given_up else ''}"
        return self.state

    def launchable(self) -> bool:
        return self.state in ("pending", "resumable") or (self.state == "failed" and not self.given_up)


def last_error_line(run_dir: Path, limit: int = 65536) -> str:
    """The last ``pckd: error`` / ``pckd: ...`` / Traceback line of the run's sweep log (empty if none)."""
    try:
        with open(Path(run_dir) / LOG_FILE, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("pckd: ") and not line.startswith("pckd: warning"):
            return line
    for line in reversed(lines):  # a crash: the exception line closes the traceback
        if line and not line.startswith((" ", "==")):
            return line
    return ""


def run_status(run_dir: Path, retries: int, live_jobs: set[str] | None = None) -> RunStatus:
    """Decide the state of the run in ``run_dir`` from its files. ``live_jobs``: the Slurm jobs still queued or
    running (None: unknown, trust the state file)."""
    state = read_state(run_dir)
    failures, attempts = int(state.get("failures", 0)), len(state["attempts"])
    if summary_complete(run_dir) is not None:
        return RunStatus("done", failures, attempts)
    if lock_held(run_dir):
        return RunStatus("running", failures, attempts, detail=_where(state))
    job = state.get("slurm_job")
    if state.get("phase") in ("submitted", "running") and job and (live_jobs is None or job in live_jobs):
        queued = state.get("phase") == "submitted"
        note = f"slurm job {job}" + ("" if live_jobs is not None else ", as recorded")
        return RunStatus("queued" if queued else "running", failures, attempts, detail=note)
    last = state["attempts"][-1] if state["attempts"] else None
    if last is not None and attempt_failed(last):
        return RunStatus("failed", failures, attempts, given_up=failures > retries,
                         detail=last_error_line(run_dir) or f"exit code {last.get('exit_code')}")
    if has_checkpoint(run_dir):
        return RunStatus("resumable", failures, attempts)
    return RunStatus("pending", failures, attempts)


def _where(state: dict[str, Any]) -> str:
    last = state["attempts"][-1] if state["attempts"] else {}
    where = [f"pid {last['pid']}" if last.get("pid") else "", last.get("host", ""),
             f"slurm job {last['slurm_job']}" if last.get("slurm_job") else ""]
    return ", ".join(w for w in where if w)


class AttemptRecord:
    """Record an attempt: its start at entry, its process id once known (:meth:`started`), its end (exit code,
    failure count) at exit, even through an exception (then with exit code None: not counted as a failure).
    Set ``attempt["exit_code"]`` before leaving the block."""

    def __init__(self, run_dir: Path, mode: str, command: list[str], slurm_job: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.state = read_state(run_dir)
        self.attempt: dict[str, Any] = {
            "n": len(self.state["attempts"]) + 1, "mode": mode, "start": now(), "host": socket.gethostname(),
            "sweep_pid": os.getpid(), "command": command, "exit_code": None}
        if slurm_job:
            self.attempt["slurm_job"] = slurm_job
            self.state["slurm_job"] = slurm_job

    def __enter__(self) -> AttemptRecord:
        self.state["attempts"].append(self.attempt)
        self.state["phase"] = "running"
        write_state(self.run_dir, self.state)
        return self

    def __getitem__(self, key: str) -> Any:
        return self.attempt[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.attempt[key] = value

    def started(self, pid: int) -> None:
        """Record the training's process id (``status`` shows it; tests signal it)."""
        self.attempt["pid"] = pid
        write_state(self.run_dir, self.state)

    def __exit__(self, *exc: object) -> None:
        self.attempt["end"] = now()
        if attempt_failed(self.attempt):
            self.state["failures"] = int(self.state.get("failures", 0)) + 1
        self.state["phase"] = "exited"
        write_state(self.run_dir, self.state)


def mark_submitted(run_dir: Path, job_id: str, log_folder: str) -> None:
    """Record that a Slurm job for the run was submitted (``status`` shows it as queued)."""
    state = read_state(run_dir)
    state.update(phase="submitted", slurm_job=job_id, slurm_logs=log_folder, submitted=now())
    write_state(run_dir, state)


def reset_failures(run_dir: Path) -> None:
    """Forget past failures (``--retry-failed``); the attempts stay in the record."""
    state = read_state(run_dir)
    if state.get("failures"):
        state["failures"] = 0
        state["failures_reset"] = now()
        write_state(run_dir, state)
