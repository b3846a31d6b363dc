"""The local executor: N runs at a time on this machine, one per visible GPU, or CPU processes with the cores
split between them. Ctrl-C (or SIGTERM) asks every running training to checkpoint and stop; a second Ctrl-C
ends them at once.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import FrameType
from typing import Any

from pckd.sweep.plan import PlannedRun
from pckd.sweep.runner import (
    Command,
    Outcome,
    StopRequest,
    default_command,
    execute_run,
)
from pckd.sweep.spec import LocalOptions

Echo = Callable[[str], None]


def visible_gpus() -> list[str]:
    """The GPUs this process may use: the entries of CUDA_VISIBLE_DEVICES when it is set (empty: none), else
    every CUDA device torch sees."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [v.strip() for v in value.split(",") if v.strip() and not v.strip().startswith("-")]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError):  # no torch or no usable CUDA runtime: CPU only
        return []


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Slot:
    """Where one of the parallel runs goes: a GPU (or the CPU) and its share of threads."""

    gpu: str | None
    threads: int

    @property
    def name(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else f"CPU ({self.threads} thread{'s' * (self.threads > 1)})"

    def env(self) -> dict[str, str]:
        """The environment of a training in this slot."""
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        env["CUDA_VISIBLE_DEVICES"] = self.gpu if self.gpu is not None else ""
        return env


def make_slots(options: LocalOptions, gpus: list[str] | None = None, cores: int | None = None) -> list[Slot]:
    """One slot per parallel run. With GPUs: ``parallel`` defaults to their number and slots take them in
    turn (more runs than GPUs share them); without: ``parallel`` defaults to 1. Threads per run default to
    the cores split evenly between the runs."""
    gpus = visible_gpus() if gpus is None else gpus
    cores = available_cores() if cores is None else cores
    parallel = options.parallel or max(1, len(gpus))
    threads = options.threads or max(1, cores // parallel)
    return [Slot(gpus[i % len(gpus)] if gpus else None, threads) for i in range(parallel)]


def describe_slots(slots: list[Slot]) -> str:
    gpus = sorted({s.gpu for s in slots if s.gpu is not None})
    where = f"on GPU {', '.join(gpus)}" if gpus else "on the CPU"
    return (f"{len(slots)} run{'s' * (len(slots) > 1)} at a time {where}, {slots[0].threads} CPU "
            f"thread{'s' * (slots[0].threads > 1)} each")


def run_local(runs: list[PlannedRun], options: LocalOptions, retries: int, echo: Echo,
              command: Command = default_command, slots: list[Slot] | None = None,
              on_outcome: Callable[[Outcome], None] | None = None) -> tuple[list[Outcome], str | None]:
    """Run ``runs`` (in order, ``len(slots)`` at a time); returns their outcomes and the name of the signal
    that stopped the sweep (None when it ran to the end)."""
    from tqdm import tqdm

    slots = slots or make_slots(options)
    free: queue.Queue[Slot] = queue.Queue()
    for slot in slots:
        free.put(slot)
    stop = StopRequest()
    import sys

    bar = tqdm(total=len(runs), unit="run", desc="runs", dynamic_ncols=True, leave=False,
               disable=not sys.stderr.isatty())  # in a log file the per-run lines tell the progress

    def say(line: str) -> None:
        with tqdm.external_write_mode():  # keep the bar intact around the line
            echo(line)

    def task(run: PlannedRun) -> Outcome:
        if stop.requested is not None:
            return Outcome(run, "skipped")
        slot = free.get()
        try:
            def started(r: PlannedRun, mode: str, attempt: int) -> None:
                again = f", attempt {attempt}" if attempt > 1 else ""
                say(f"start   {r.label} ({mode}{again}) on {slot.name}")

            return execute_run(run, slot.env(), retries, stop, command, on_start=started)
        finally:
            free.put(slot)

    previous = _install_handlers(stop, say)
    outcomes: list[Outcome] = []
    try:
        with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="sweep-run") as pool:
            pending: set[Future[Outcome]] = {pool.submit(task, run) for run in runs}
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    outcome = future.result()
                    outcomes.append(outcome)
                    bar.update(1)
                    if on_outcome is not None:
                        on_outcome(outcome)
                    line = describe_outcome(outcome)
                    if line:
                        say(f"[{len(outcomes)}/{len(runs)}] {line}")
    finally:
        _restore_handlers(previous)
        bar.close()
    order = {id(run): i for i, run in enumerate(runs)}
    outcomes.sort(key=lambda o: order.get(id(o.run), 0))
    return outcomes, stop.requested


def describe_outcome(outcome: Outcome) -> str:
    """One line for a finished attempt series (empty for runs that never started)."""
    from pckd.sweep.state import LOG_FILE, last_error_line, summary_complete

    run = outcome.run
    if outcome.state == "done":
        summary = summary_complete(run.run_dir) or {}
        best, last = summary.get("best_top1"), summary.get("last_top1")
        numbers = f"  best top-1 {best:.2f}%  last {last:.2f}%" if isinstance(best, float) and isinstance(last, float) else ""
        return f"done    {run.label}{numbers}"
    if outcome.state == "stopped":
        return f"stopped {run.label} ({'resumable' if outcome.detail == 'checkpointed' else 'no checkpoint yet'})"
    if outcome.state == "failed":
        error = last_error_line(run.run_dir)
        return f"failed  {run.label} (exit {outcome.exit_code}){': ' + error if error else ''}; log: {run.folder / LOG_FILE}"
    if outcome.state == "given_up":
        return f"skip    {run.label}: failed too often ({outcome.detail}); --retry-failed tries again"
    if outcome.state == "busy":
        return f"skip    {run.label}: another process is running it"
    return ""


def _install_handlers(stop: StopRequest, say: Echo) -> dict[int, Any] | None:
    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set from the main thread

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.requested is None:
            say(f"pckd: {name}: asking the running trainings to checkpoint and stop"
                + (" (Ctrl-C again to end them at once)" if signum == signal.SIGINT else ""))
            stop.request(name)
        else:
            say(f"pckd: {name} again: ending the running trainings now")
            stop.kill()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict[int, Any] | None) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)
