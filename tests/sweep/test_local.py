"""The local executor on tiny real runs: a run stopped mid-run resumes on the next invocation (its metrics go
on from the saved step, they do not start again), a killed run is retried from its checkpoint at once, finished
runs are skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.sweep import (
    SweepOptions,
    load_spec,
    plan_sweep,
    status_command,
    sweep_command,
)
from pckd.sweep.local import describe_slots, make_slots, visible_gpus
from pckd.sweep.spec import LocalOptions
from pckd.sweep.state import LOG_FILE, STATE_FILE, run_status

from .conftest import FAKE_TRAINER, read_json, wait_for, write_spec

SPEC = """\
configs: [configs/tiny.yaml]
seeds: [0, 1]
overrides: {data.train_limit: 640}
output_root: out
retries: 1
local: {parallel: 2, threads: 1}
"""


def _training_pid(run_dir: Path) -> int | None:
    try:
        attempts = json.loads((run_dir / STATE_FILE).read_text())["attempts"]
    except (OSError, ValueError, KeyError):
        return None
    return attempts[-1].get("pid") if attempts and attempts[-1].get("exit_code") is None else None


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.mark.slow
def test_stopped_run_resumes_killed_run_is_retried_done_runs_are_skipped(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC)
    stopped, killed = plan_sweep(load_spec(spec)).runs
    first: list[str] = []
    codes: list[int] = []
    # The first invocation runs in a thread of this process (no signal handlers there; the trainings are
    # processes of their own either way), so the test pays for importing torch once.
    sweep = threading.Thread(target=lambda: codes.append(sweep_command(spec, SweepOptions(), echo=first.append)))
    sweep.start()
    try:
        # seed 0: SIGTERM once it has logged a step (mid-epoch 1): it checkpoints and exits 0
        wait_for(lambda: (stopped.run_dir / "metrics.jsonl").exists()
                 and '"kind": "step"' in (stopped.run_dir / "metrics.jsonl").read_text(), what="a step of seed 0")
        os.kill(wait_for(lambda: _training_pid(stopped.run_dir), what="pid of seed 0"), signal.SIGTERM)
        # seed 1: SIGKILL once epoch 1 is checkpointed (during epoch 2): a failure, retried from last.pt
        wait_for(lambda: (killed.run_dir / "last.pt").exists(), what="epoch 1 checkpoint of seed 1")
        os.kill(wait_for(lambda: _training_pid(killed.run_dir), what="pid of seed 1"), signal.SIGKILL)
    finally:
        sweep.join(timeout=300)
    out = "\n".join(first)
    assert codes == [1], out  # one run is not done yet
    saved = load_checkpoint_file(stopped.run_dir / "last.pt")
    assert saved["epoch"] == 1 and 0 < saved["step"] < 40, (saved["epoch"], saved["step"])  # mid-epoch
    steps_before = [(r["epoch"], r["step"]) for r in _records(stopped.run_dir, "step")]

    lines: list[str] = []
    status_command(spec, SweepOptions(), echo=lines.append)
    table = {line.split()[1]: line.split()[0] for line in lines if line.startswith(("resumable", "done"))}
    assert table == {stopped.label: "resumable", killed.label: "done"}

    lines.clear()  # the second invocation, in this process: only seed 0 starts, and it resumes
    assert sweep_command(spec, SweepOptions(), echo=lines.append) == 0
    assert f"start   {stopped.label} (resume, attempt 2) on CPU (1 thread)" in lines
    assert not any(killed.label in line for line in lines if line.startswith("start"))

    log = (stopped.run_dir / LOG_FILE).read_text()
    assert f"from last.pt: epoch 1, step {saved['step']}" in log
    steps = [(r["epoch"], r["step"]) for r in _records(stopped.run_dir, "step")]
    assert steps[: len(steps_before)] == steps_before  # the first attempt's records are kept ...
    assert steps == sorted(set(steps))  # ... and the resumed attempt goes on from there: no step logged twice
    assert steps[len(steps_before)][0] == 1 and steps[len(steps_before)][1] > saved["step"]
    assert [r["epoch"] for r in _records(stopped.run_dir, "epoch")] == [1, 2]
    assert read_json(stopped.run_dir / "summary.json")["epochs"] == 2
    state = read_json(stopped.run_dir / STATE_FILE)
    assert [(a["mode"], a["exit_code"]) for a in state["attempts"]] == [("fresh", 0), ("resume", 0)]
    assert state["failures"] == 0

    state = read_json(killed.run_dir / STATE_FILE)
    assert [(a["mode"], a["exit_code"]) for a in state["attempts"]] == [("fresh", -9), ("resume", 0)]
    assert state["failures"] == 1
    assert "from last.pt: epoch 2, step 0" in (killed.run_dir / LOG_FILE).read_text()  # goes on after epoch 1
    assert [r["epoch"] for r in _records(killed.run_dir, "epoch")] == [1, 2]

    lines.clear()  # a third invocation has nothing to do
    assert sweep_command(spec, SweepOptions(), echo=lines.append) == 0
    assert lines[-2:] == ["2 done; starting 0", "nothing to start"]


DRIVER = """\
import sys
from pckd.sweep import load_spec, plan_sweep
from pckd.sweep.local import Slot, run_local
plan = plan_sweep(load_spec("spec.yaml"))
fake = sys.argv[1]
outcomes, stopped = run_local(plan.runs, plan.spec.local, 1, print, slots=[Slot(None, 1), Slot(None, 1)],
                              command=lambda run, mode: [sys.executable, fake, *run.train_args(mode)])
print("RESULT", stopped, sorted(o.state for o in outcomes), flush=True)
"""


def test_ctrl_c_stops_the_trainings_through_their_checkpoint_path(workdir: Path) -> None:
    """SIGINT to the sweep: each running training gets SIGTERM (it checkpoints and exits 0), no new run starts,
    and the stopped runs are resumable, not failed. (A stand-in trainer: no torch, so this is quick.)"""
    spec = write_spec(workdir, "configs: [configs/tiny.yaml]\nseeds: [0, 1, 2]\noutput_root: out\n")
    (workdir / "fake_trainer.py").write_text(FAKE_TRAINER)
    (workdir / "driver.py").write_text(DRIVER)
    runs = plan_sweep(load_spec(spec)).runs
    sweep = subprocess.Popen([sys.executable, "driver.py", "fake_trainer.py"], cwd=workdir, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: all((r.run_dir / "metrics.jsonl").exists() for r in runs[:2]), timeout=60,
                 what="two trainings to start")
        sweep.send_signal(signal.SIGINT)
        out, _ = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out
    assert "RESULT SIGINT ['skipped', 'stopped', 'stopped']" in out
    assert "pckd: SIGINT: asking the running trainings to checkpoint and stop" in out
    for run in runs[:2]:
        assert (run.run_dir / "last.pt").exists()
        assert run_status(run.run_dir, 1).label == "resumable"
    assert not runs[2].run_dir.exists()  # never started


def test_slots_one_per_gpu_or_cpu_processes_sharing_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    slots = make_slots(LocalOptions(), cores=16)
    assert [(s.gpu, s.threads) for s in slots] == [("2", 8), ("5", 8)]
    env = slots[1].env()
    assert (env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == ("5", "8", "8")
    assert [s.gpu for s in make_slots(LocalOptions(parallel=3), cores=16)] == ["2", "5", "2"]  # in turn
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == [] and make_slots(LocalOptions(), cores=16)[0].threads == 16  # one CPU run
    cpu = make_slots(LocalOptions(parallel=3), cores=8)
    assert [(s.gpu, s.threads) for s in cpu] == [(None, 2)] * 3 and cpu[0].env()["CUDA_VISIBLE_DEVICES"] == ""
    assert make_slots(LocalOptions(parallel=2, threads=1), cores=8)[0].threads == 1
    assert describe_slots(cpu) == "3 runs at a time on the CPU, 2 CPU threads each"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
