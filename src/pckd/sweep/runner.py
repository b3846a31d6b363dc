"""Run one planned run to its end: take its lock, start `pckd train` (fresh, resumed or restarted), record
the attempt, and retry a failure while the spec's retry budget lasts. The local executor and the Slurm job
both call :func:`execute_run`, so a run behaves the same wherever it runs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pckd.sweep.plan import PlannedRun
from pckd.sweep.state import (
    BAD_INPUT,
    LOG_FILE,
    AttemptRecord,
    RunLock,
    has_checkpoint,
    holds_unresumable_results,
    is_failure,
    lock_held_by_training,
    now,
    read_state,
    summary_complete,
)

Command = Callable[[PlannedRun, str], list[str]]


def default_command(run: PlannedRun, mode: str) -> list[str]:
    return run.command(mode)


class StopRequest:
    """Shared by the runs of one executor: once requested, running trainings get SIGTERM (they checkpoint and
    exit 0), and no new attempt starts; ``kill`` ends them at once."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)
        if self.requested is not None:  # a stop that came while this process was being started
            _signal(proc, signal.SIGTERM)

    def discard(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def running(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return list(self._procs)

    def request(self, reason: str) -> None:
        """Ask every running training to checkpoint and stop (safe to call from a signal handler)."""
        self.requested = reason
        for proc in self.running():
            _signal(proc, signal.SIGTERM)

    def kill(self) -> None:
        for proc in self.running():
            _signal(proc, signal.SIGKILL)

    def wait_exited(self, timeout: float) -> bool:
        """Wait until every registered training has exited, without reaping it (so this is safe inside a
        signal handler that interrupted the ``wait`` of the thread running it); True if all exited in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(_exited(proc) for proc in self.running()):
                return True
            time.sleep(0.05)
        return all(_exited(proc) for proc in self.running())


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        if proc.returncode is None:
            os.killpg(proc.pid, sig)  # the training's own process group: torchrun workers included
    except (ProcessLookupError, PermissionError):
        pass


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


@dataclass
class Outcome:
    """How :func:`execute_run` left a run."""

    run: PlannedRun
    state: str  # done | stopped | failed | given_up | busy (another process holds it) | skipped (stop requested)
    exit_code: int | None = None
    attempts: int = 0  # attempts made by this call
    detail: str = ""


def choose_mode(run_dir: Path) -> str:
    """``resume`` when a checkpoint exists; ``restart`` (overwrite=true) when the folder holds results without
    one (nothing to resume from, and the trainer keeps results unless told); else ``fresh`` (the trainer itself
    clears what a run that crashed before its first checkpoint left)."""
    if has_checkpoint(run_dir):
        return "resume"
    return "restart" if holds_unresumable_results(run_dir) else "fresh"


def _log_header(log: Path, attempt: int, mode: str, command: list[str], where: str) -> None:
    with open(log, "a") as handle:
        handle.write(f"== attempt {attempt} ({mode}) {now()} {where}\n== {shlex.join(command)}\n")


def _acquire(lock: RunLock, tries: int = 10) -> bool:
    """Take the run's lock; a `status` probing it holds it for an instant, so try a few times."""
    for _ in range(tries):
        if lock.acquire():
            return True
        time.sleep(0.05)
    return False


def execute_run(run: PlannedRun, env: dict[str, str], retries: int, stop: StopRequest,
                command: Command = default_command, slurm_job: str | None = None,
                on_start: Callable[[PlannedRun, str, int], None] | None = None) -> Outcome:
    """Run ``run`` until it is done, stopped, or out of retries. Each attempt is one `pckd train` process in
    its own process group, started in ``run.cwd`` with ``env``, its output appended to ``<run>/sweep.log``.
    A failure (exit code other than 0 and 130) is retried at once while the run's failures stay within
    ``retries``, except a bad-input failure (exit 2): retrying cannot help until the input is fixed, so it
    waits for the next invocation."""
    run_dir = run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    if not _acquire(lock) or lock_held_by_training(run_dir):
        lock.release()
        return Outcome(run, "busy", detail="another process is running it")
    made = 0
    try:
        while True:
            if summary_complete(run_dir) is not None:
                return Outcome(run, "done", 0, made)
            if stop.requested is not None:
                return Outcome(run, "skipped" if made == 0 else "stopped", attempts=made)
            failures = int(read_state(run_dir).get("failures", 0))
            if failures > retries:
                return Outcome(run, "given_up", attempts=made, detail=f"{failures} failures")
            mode = choose_mode(run_dir)
            argv = command(run, mode)
            where = f"slurm job {slurm_job}" if slurm_job else ""
            with AttemptRecord(run_dir, mode, argv, slurm_job) as attempt:
                _log_header(run_dir / LOG_FILE, attempt["n"], mode, argv, where)
                made += 1
                with open(run_dir / LOG_FILE, "ab") as log:
                    proc = subprocess.Popen(argv, cwd=run.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            pass_fds=(lock.fd,) if lock.fd is not None else ())
                attempt.started(proc.pid)
                stop.add(proc)
                if on_start is not None:
                    on_start(run, mode, attempt["n"])
                try:
                    proc.wait()
                finally:
                    if proc.returncode is None:  # interrupted by an exception: do not leave it unattended
                        _wait_after_interrupt(proc)
                    code: int | None = proc.returncode
                    stop.discard(proc)
                    attempt["exit_code"] = code
                    if stop.requested is not None:  # asked to stop (Ctrl-C, preemption): not the run's failure
                        attempt["stopped_by"] = stop.requested
            if summary_complete(run_dir) is not None:
                return Outcome(run, "done", code, made)
            if stop.requested is not None or not is_failure(code):
                return Outcome(run, "stopped", code, made, detail="checkpointed" if has_checkpoint(run_dir) else "")
            failures += 1
            if code == BAD_INPUT or failures > retries:
                return Outcome(run, "failed", code, made)
    finally:
        lock.release()


def _wait_after_interrupt(proc: subprocess.Popen[bytes]) -> int:
    """The exit code of a training whose wait was cut short (the job is being requeued or stopped): give it
    the time to write its checkpoint, then end it."""
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        return proc.wait()
