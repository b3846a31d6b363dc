"""`pckd sweep SPEC [--dry-run]` and `pckd sweep status SPEC`: what the command line calls."""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pckd.errors import PckdWarning
from pckd.sweep.plan import Plan, PlannedRun, check_plan, plan_sweep
from pckd.sweep.runner import choose_mode
from pckd.sweep.spec import load_spec, with_command_line
from pckd.sweep.state import (
    RunStatus,
    live_slurm_jobs,
    read_state,
    reset_failures,
    run_status,
    summary_complete,
)

Echo = Callable[[str], None]
STATE_ORDER = ("done", "running", "queued", "resumable", "failed", "pending")


@dataclass
class SweepOptions:
    """The command line's choices on top of the spec."""

    overrides: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    output_root: str | None = None
    executor: str | None = None
    parallel: int | None = None


def load_plan(spec_path: str | Path, options: SweepOptions) -> Plan:
    spec = with_command_line(load_spec(spec_path), options.overrides, options.seeds, options.output_root,
                             options.executor, options.parallel)
    return plan_sweep(spec)


def statuses(plan: Plan) -> dict[str, RunStatus]:
    """Each run's state (by label); asks Slurm once about the jobs the state files name."""
    jobs = [job for run in plan.runs if (job := read_state(run.run_dir).get("slurm_job"))]
    live = live_slurm_jobs(jobs) if jobs else set()
    return {run.label: run_status(run.run_dir, plan.spec.retries, live) for run in plan.runs}


def _counts(found: dict[str, RunStatus]) -> str:
    counts: dict[str, int] = {}
    for status in found.values():
        key = "failed" if status.state == "failed" and not status.given_up else status.state
        key = "given up" if status.state == "failed" and status.given_up else key
        counts[key] = counts.get(key, 0) + 1
    order = [*STATE_ORDER, "given up"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _header(plan: Plan, echo: Echo) -> None:
    spec = plan.spec
    seeds = len(spec.seeds)
    echo(f"sweep {spec.name} ({spec.path}): {len(plan.runs)} runs = {len(plan.configs)} config"
         f"{'s' * (len(plan.configs) != 1)} x {len(plan.grid_points)} grid point"
         f"{'s' * (len(plan.grid_points) != 1)} x {seeds} seed{'s' * (seeds != 1)}")
    if spec.description:
        echo(f"  {spec.description.strip()}")
    where = _rel(plan.output_root)
    if spec.executor == "local":
        from pckd.sweep.local import describe_slots, make_slots

        how = f"local, {describe_slots(make_slots(spec.local))}"
    else:
        from pckd.sweep.slurm import describe_resources

        how = f"slurm, {describe_resources(spec.slurm)}"
    echo(f"output root {where}; executor {how}; retries {spec.retries}")


def _display_command(run: PlannedRun, mode: str, gpus: int) -> str:
    argv = run.command(mode, gpus)
    return shlex.join(["python", *argv[1:]])


def print_plan(plan: Plan, found: dict[str, RunStatus], echo: Echo) -> None:
    """The dry run: every run with its state, folder and the command the sweep would run."""
    _header(plan, echo)
    echo(f"python = {sys.executable}; commands start in {plan.cwd}")
    gpus = plan.spec.slurm.gpus if plan.spec.executor == "slurm" else 1
    for run in plan.runs:
        status = found[run.label]
        echo(f"[{status.label}] {_rel(run.run_dir)}")
        if status.launchable():
            echo(f"    {_display_command(run, choose_mode(run.run_dir), gpus)}")
        elif status.state == "failed":
            echo("    (not run again: failed more than retries allows; --retry-failed runs it again)")
        elif status.state in ("running", "queued"):
            echo(f"    (left alone: {status.state}{', ' + status.detail if status.detail else ''})")
    echo(f"{_counts(found)}; {sum(s.launchable() for s in found.values())} would start")


def _warn(message: str) -> None:
    warnings.warn(PckdWarning(message), stacklevel=2)


def sweep_command(spec_path: str | Path, options: SweepOptions, dry_run: bool = False, retry_failed: bool = False,
                  echo: Echo = print, cluster: str = "slurm") -> int:
    """Run (or with ``dry_run`` print) the sweep; returns the exit code: 0 when every run is done, running or
    queued (with the slurm executor: submitted), 1 when some failed or stopped unfinished, 130 after Ctrl-C."""
    plan = load_plan(spec_path, options)
    check_plan(plan, warn=_warn)
    found = statuses(plan)
    if retry_failed:
        for run in plan.runs:
            if found[run.label].state == "failed":
                reset_failures(run.run_dir)
        found = statuses(plan)
    if dry_run:
        print_plan(plan, found, echo)
        return 0
    _header(plan, echo)
    todo = [run for run in plan.runs if found[run.label].launchable()]
    echo(f"{_counts(found)}; starting {len(todo)}")
    if not todo:
        failed = any(s.state == "failed" for s in found.values())
        busy = sum(s.state in ("running", "queued") for s in found.values())
        echo("nothing to start" + (f" ({busy} running or queued)" if busy else "")
             + (f"; failed runs: see pckd sweep status {spec_path}" if failed else ""))
        return 1 if failed else 0
    spec = plan.spec
    if spec.executor == "slurm":
        from pckd.sweep.slurm import submit_slurm

        submit_slurm(todo, spec.slurm, spec.retries, plan.output_root, spec.name, echo, cluster=cluster)
        echo(f"follow with: pckd sweep status {spec_path}")
        return 0
    from pckd.sweep.local import run_local

    _, stopped_by = run_local(todo, spec.local, spec.retries, echo)
    final = statuses(plan)
    echo(f"sweep {spec.name}: {_counts(final)}")
    if stopped_by is not None:
        echo(f"stopped by {stopped_by}; run the same command again to continue")
        return 130 if stopped_by == "SIGINT" else 0
    if any(s.state not in ("done", "running", "queued") for s in final.values()):
        echo(f"not every run is done; see: pckd sweep status {spec_path}")
        return 1
    return 0


def _metrics_tail(run_dir: Path, limit: int = 65536) -> dict[str, object] | None:
    """The last epoch record of the run's metrics.jsonl (read from the end of the file)."""
    try:
        with open(run_dir / "metrics.jsonl", "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"kind": "epoch"' in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                return record
    return None


def _progress(run: PlannedRun) -> tuple[str, str]:
    """(epochs, best top-1) of a run for the status table."""
    summary = summary_complete(run.run_dir)
    if summary is not None:
        best = summary.get("best_top1")
        return str(summary.get("epochs", "")), f"{best:.2f}" if isinstance(best, (int, float)) else ""
    record = _metrics_tail(run.run_dir)
    if record is None:
        return "", ""
    best = record.get("best/top1")
    return str(record.get("epoch", "")), f"{best:.2f}" if isinstance(best, (int, float)) else ""


def status_command(spec_path: str | Path, options: SweepOptions, echo: Echo = print) -> int:
    """Print a table of the runs' states (done / running / queued / resumable / failed(n) / pending)."""
    plan = load_plan(spec_path, options)
    found = statuses(plan)
    _header(plan, echo)
    rows = [("state", "run", "epochs", "best top-1", "attempts", "note")]
    for run in plan.runs:
        status = found[run.label]
        epochs, best = _progress(run)
        rows.append((status.label, run.label, epochs, best, str(status.attempts or ""), status.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        echo(("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5]).rstrip())
    echo(f"{_counts(found)} (of {len(plan.runs)}; folders under {_rel(plan.output_root)})")
    _mention_other_runs(plan, echo)
    return 0


def _mention_other_runs(plan: Plan, echo: Echo) -> None:
    """Say when the output root holds run folders this plan does not name (other overrides or seeds)."""
    root = plan.output_root
    if not root.is_dir():
        return
    planned = {run.run_dir.resolve() for run in plan.runs}
    others = 0
    for state_file in root.rglob("sweep-state.json"):
        if state_file.parent.resolve() not in planned:
            others += 1
    if others:
        echo(f"{others} other run folder(s) under {_rel(root)} are not in this plan (other overrides, seeds or "
             f"specs); pass the same overrides and --seeds to see them")
