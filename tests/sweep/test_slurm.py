"""The Slurm path without a cluster: the sbatch script submitit would submit (sbatch and srun replaced by
stand-ins on PATH) carries the spec's resources, and submitit's local executor runs the same job function,
whose preemption signal stops the training through its checkpoint path and requeues a job that resumes."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from pckd.errors import UserError
from pckd.sweep import (
    SweepOptions,
    load_spec,
    plan_sweep,
    status_command,
    sweep_command,
)
from pckd.sweep.slurm import SweepJob, make_executor
from pckd.sweep.state import LOG_FILE, STATE_FILE

from .conftest import FAKE_TRAINER, read_json, wait_for, write_spec

submitit = pytest.importorskip("submitit")

SPEC = """\
configs: [configs/tiny.yaml]
seeds: [0, 1, 2]
output_root: out
executor: slurm
slurm: {partition: gpu, gpus: 1, cpus: 4, mem_gb: 16, time: "01:30:00", array_parallelism: 2, account: proj,
        qos: high, constraint: a100, setup: ["module load cuda/12"], additional: {exclude: node7},
        signal_delay_s: 100}
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """srun (so submitit believes it is on a cluster) and an sbatch that keeps the script it is given and
    answers like Slurm; returns the file the script is copied to."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    record = tmp_path / "submitted.sh"
    _executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    _executable(bin_dir / "sbatch", f'#!/bin/sh\ncp "$1" {record}\necho "Submitted batch job 4242"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_sbatch_script_carries_the_spec_resources(workdir: Path, fake_slurm: Path) -> None:
    spec = write_spec(workdir, SPEC)
    lines: list[str] = []
    assert sweep_command(spec, SweepOptions(), echo=lines.append) == 0
    script = fake_slurm.read_text()
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=16GB", "--time=90",
                 "--array=0-2%2", "--signal=USR2@100", "--account=proj", "--qos=high", "--constraint=a100",
                 "--exclude=node7", "--nodes=1", "--ntasks-per-node=1", "--job-name=spec"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert "\nmodule load cuda/12\n" in script
    folder = workdir / "out" / ".submitit"
    assert f"--output={folder}/%A_%a/%A_%a_0_log.out" in script  # one log folder per job of the array
    assert "submitted 3 runs as job array 4242" in "\n".join(lines)
    runs = plan_sweep(load_spec(spec)).runs
    for index, run in enumerate(runs):  # each array element knows its run (submitit's pickle) and is recorded
        state = read_json(run.run_dir / STATE_FILE)
        assert (state["phase"], state["slurm_job"]) == ("submitted", f"4242_{index}")
        job = submitit.SlurmJob(folder=folder / "%j", job_id=f"4242_{index}")
        delayed = submitit.helpers.DelayedSubmission.load(job.paths.submitted_pickle)
        assert isinstance(delayed.function, SweepJob) and delayed.function.run.label == run.label
        assert delayed.function.threads == 4 and delayed.function.gpus == 1
    lines.clear()
    status_command(spec, SweepOptions(), echo=lines.append)
    assert sum(line.startswith("queued") and "slurm job 4242_" in line for line in lines) == 3
    lines.clear()  # submitting again leaves queued runs alone
    assert sweep_command(spec, SweepOptions(), echo=lines.append) == 0
    assert "3 queued; starting 0" in lines


def test_sbatch_refusal_is_one_line(workdir: Path, fake_slurm: Path) -> None:
    _executable(Path(os.environ["PATH"].split(os.pathsep)[0]) / "sbatch",
                "#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    with pytest.raises(UserError, match=r"^sbatch refused the job array \(sbatch: error: invalid partition "
                                        r"specified: gpu\); check the spec's slurm section"):
        sweep_command(write_spec(workdir, SPEC), SweepOptions(), echo=lambda line: None)


def test_no_cluster_is_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not (Path(p) / "srun").exists()))
    with pytest.raises(UserError, match=r'^the slurm executor cannot start: Could not detect "srun"'):
        sweep_command(write_spec(workdir, SPEC), SweepOptions(), echo=lambda line: None)


def test_preempted_job_checkpoints_requeues_and_resumes(workdir: Path) -> None:
    spec = load_spec(write_spec(workdir, SPEC.replace("seeds: [0, 1, 2]", "seeds: [0]")))
    run = plan_sweep(spec).runs[0]
    fake = workdir / "fake_trainer.py"
    fake.write_text(FAKE_TRAINER)
    executor = make_executor(workdir / "out" / ".submitit" / "%j", spec.slurm, "t", cluster="local")
    executor.update_parameters(timeout_min=10, gpus_per_node=0)
    job = executor.submit(SweepJob(run, retries=1, threads=1, gpus=1, grace_s=30,
                                   python=[sys.executable, str(fake)]))
    state_file = run.run_dir / STATE_FILE
    wait_for(lambda: (run.run_dir / "metrics.jsonl").exists(), timeout=60, what="the training to start")
    attempt = wait_for(lambda: state_file.exists() and json.loads(state_file.read_text())["attempts"][-1].get("pid")
                       and json.loads(state_file.read_text())["attempts"][-1], what="the attempt record")
    os.kill(attempt["sweep_pid"], signal.SIGUSR2)  # what Slurm sends before a time limit or a preemption
    result = job.result()
    assert result == {"run": run.label, "state": "done", "exit_code": 0, "attempts": 1}  # the requeued job's view
    state = read_json(state_file)
    assert [(a["mode"], a["exit_code"]) for a in state["attempts"]] == [("fresh", 0), ("resume", 0)]
    assert state["failures"] == 0 and state["attempts"][0]["slurm_job"] == state["attempts"][1]["slurm_job"]
    log = (run.run_dir / LOG_FILE).read_text()
    assert "SIGTERM: checkpoint saved" in log and "resuming from epoch 1 step 7" in log
    assert "resume=true" in log.splitlines()[-2]  # the requeued attempt's command
    submitit_log = Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
    assert "Caught signal SIGUSR2" in submitit_log and "Requeued job" in submitit_log
