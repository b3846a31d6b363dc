"""A run's state from its folder (done / running / queued / failed(n) / resumable / pending), the state file,
the lock, and the retry budget of execute_run (with stand-in commands: no training)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from pckd.sweep import load_spec, plan_sweep
from pckd.sweep.runner import StopRequest, choose_mode, execute_run
from pckd.sweep.state import (
    LOG_FILE,
    STATE_FILE,
    AttemptRecord,
    RunLock,
    live_slurm_jobs,
    mark_submitted,
    read_state,
    reset_failures,
    run_status,
)

from .conftest import exit_command, write_spec

SUMMARY = {"method": "ce", "student": "resnet8", "best_top1": 50.0, "last_top1": 49.0, "epochs": 2}


def _record(run_dir: Path, code: int | None) -> None:
    with AttemptRecord(run_dir, "fresh", ["pckd", "train"]) as attempt:
        attempt["exit_code"] = code


def test_states_follow_the_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert run_status(run, retries=1).label == "pending"
    (run / "metrics.jsonl").write_text("{}\n")  # crashed before its first checkpoint: the trainer clears it
    assert run_status(run, 1).label == "pending" and choose_mode(run) == "fresh"
    (run / "best.pt").write_bytes(b"x")  # results without a checkpoint: only overwrite=true starts again
    assert run_status(run, 1).label == "pending" and choose_mode(run) == "restart"
    (run / "last.prev.pt").write_bytes(b"x")
    assert run_status(run, 1).label == "resumable" and choose_mode(run) == "resume"
    _record(run, 3)
    (run / LOG_FILE).write_text("epoch 1/2 ...\npckd: error: something named the key\n")
    status = run_status(run, 1)
    assert (status.label, status.detail, status.launchable()) == ("failed(1)", "pckd: error: something named the key", True)
    _record(run, -9)
    assert run_status(run, 1).label == "failed(2), given up" and not run_status(run, 1).launchable()
    reset_failures(run)
    assert run_status(run, 1).label == "failed(0)" and run_status(run, 1).launchable()
    _record(run, 0)  # stopped by SIGTERM with a checkpoint: not a failure
    assert run_status(run, 1).label == "resumable"
    _record(run, 130)
    assert run_status(run, 1).label == "resumable"
    with RunLock(run) as lock:
        assert lock.acquire() and run_status(run, 1).label == "running"
        assert not RunLock(run).acquire()  # a second holder is refused
    assert run_status(run, 1).label == "resumable"  # released
    (run / "summary.json").write_text('{"last_top1": 4')  # cut mid-write: not done
    assert run_status(run, 1).label == "resumable"
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    assert run_status(run, 1).label == "done"
    state = read_state(run)
    assert [a["exit_code"] for a in state["attempts"]] == [3, -9, 0, 130] and state["failures"] == 0
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]  # atomic writes leave no temp file


def test_submitted_jobs_are_queued_while_slurm_has_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    mark_submitted(run, "77_3", "logs/77_3")
    assert run_status(run, 1, live_jobs=None).detail == "slurm job 77_3, as recorded"
    assert run_status(run, 1, live_jobs={"77_3"}).label == "queued"
    assert run_status(run, 1, live_jobs={"77_4"}).label == "pending"  # Slurm no longer has it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\necho 77_3\necho 12\n")
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert live_slurm_jobs(["77_3", "77_4"]) == {"77_3", "12"}


def _one_run(workdir: Path) -> object:
    return plan_sweep(load_spec(write_spec(workdir, "configs: [configs/tiny.yaml]\noutput_root: out\n"))).runs[0]


def test_failures_are_retried_up_to_the_limit_then_given_up(workdir: Path) -> None:
    run = _one_run(workdir)
    outcome = execute_run(run, dict(os.environ), retries=2, stop=StopRequest(), command=exit_command(3))
    assert (outcome.state, outcome.exit_code, outcome.attempts) == ("failed", 3, 3)  # 1 try + 2 retries
    state = json.loads((run.run_dir / STATE_FILE).read_text())
    assert state["failures"] == 3 and [a["exit_code"] for a in state["attempts"]] == [3, 3, 3]
    assert run_status(run.run_dir, 2).label == "failed(3), given up"
    assert (run.run_dir / LOG_FILE).read_text().splitlines().count("mode fresh") == 3  # each attempt logged
    again = execute_run(run, dict(os.environ), retries=2, stop=StopRequest(), command=exit_command(0))
    assert again.state == "given_up" and again.attempts == 0  # a later invocation does not try again
    reset_failures(run.run_dir)
    assert execute_run(run, dict(os.environ), 2, StopRequest(), command=exit_command(0)).state == "stopped"


def test_bad_input_is_not_retried_in_the_same_invocation(workdir: Path) -> None:
    run = _one_run(workdir)
    outcome = execute_run(run, dict(os.environ), retries=5, stop=StopRequest(), command=exit_command(2))
    assert (outcome.state, outcome.attempts) == ("failed", 1)
    assert run_status(run.run_dir, 5).label == "failed(1)"  # the next invocation tries again


def test_a_run_locked_elsewhere_is_left_alone(workdir: Path) -> None:
    run = _one_run(workdir)
    with RunLock(run.run_dir) as lock:
        assert lock.acquire()
        outcome = execute_run(run, dict(os.environ), 1, StopRequest(), command=exit_command(0))
    assert outcome.state == "busy" and not (run.run_dir / STATE_FILE).exists()


def test_a_training_started_by_hand_is_left_alone(workdir: Path) -> None:
    from pckd.run_folder import RunLock as TrainingLock

    run = _one_run(workdir)
    run.run_dir.mkdir(parents=True)
    with TrainingLock(run.run_dir) as lock:
        assert lock.acquire() is None
        assert run_status(run.run_dir, 1).label == "running"
        outcome = execute_run(run, dict(os.environ), 1, StopRequest(), command=exit_command(0))
    assert outcome.state == "busy" and not (run.run_dir / STATE_FILE).exists()
    assert run_status(run.run_dir, 1).label == "pending"


def test_the_training_holds_the_lock_while_it_lives(workdir: Path) -> None:
    """The lock is inherited by the training process, so it outlives a sweep that dies first."""
    run = _one_run(workdir)
    probe = workdir / "probe.txt"
    script = (f"from pckd.sweep.state import lock_held; import pathlib; "
              f"pathlib.Path({str(probe)!r}).write_text(str(lock_held(pathlib.Path({str(run.run_dir)!r}))))")
    execute_run(run, dict(os.environ), 0, StopRequest(), command=lambda r, m: [sys.executable, "-c", script])
    assert probe.read_text() == "True"
