"""The Slurm executor, through submitit: one job-array element per run, with the spec's resources.

Each job runs :class:`SweepJob`, which calls the same :func:`~pckd.sweep.runner.execute_run` as the local
executor (lock, state file, retries, log in the run folder). Preemption and time limits: Slurm sends the
job's warning signal (``--signal=USR2@<signal_delay_s>``, set by submitit); submitit then calls
:meth:`SweepJob.checkpoint`, which sends SIGTERM to the training (it finishes its step, writes ``last.pt`` and
exits 0), waits for it, and hands submitit the same job to requeue; the requeued job finds ``last.pt`` and
continues with ``resume=true``. A training that gets SIGTERM from Slurm directly checkpoints the same way.

submitit is an optional dependency (``pip install 'pckd[slurm]'``); nothing else in pckd imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pckd.errors import UserError
from pckd.sweep.plan import PlannedRun
from pckd.sweep.runner import Outcome, StopRequest, execute_run
from pckd.sweep.spec import SlurmOptions
from pckd.sweep.state import mark_submitted

SUBMITIT_FOLDER = ".submitit"  # under the output root: submitit's pickles and each job's stdout/stderr


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm executor needs submitit; install it with pip install 'pckd[slurm]' "
                        "(or pip install submitit), or run with --executor local") from None
    return submitit


class SweepJob:
    """The callable a Slurm job runs: one planned run to its end (checkpointable, so preemption requeues it).

    It subclasses nothing from submitit at import time (submitit stays optional); submitit only needs
    ``__call__`` and ``checkpoint``.
    """

    def __init__(self, run: PlannedRun, retries: int, threads: int, gpus: int, grace_s: float,
                 python: list[str] | None = None) -> None:
        self.run = run
        self.python = python  # the interpreter command of the trainings (default: the one running the job)
        self.retries = retries
        self.threads = threads
        self.gpus = gpus
        self.grace_s = grace_s  # how long checkpoint() waits for the training to save and exit
        self._stop: StopRequest | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_stop"] = None  # processes do not travel with a requeued job
        return state

    def _job_id(self) -> str | None:
        try:
            import submitit

            return str(submitit.JobEnvironment().job_id)
        except (ImportError, RuntimeError, KeyError):  # not inside a submitit job (called directly)
            return None

    def __call__(self) -> dict[str, Any]:
        os.chdir(self.run.cwd)  # the configs' relative paths (data, teachers, bases) start from there
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        self._stop = StopRequest()
        outcome: Outcome = execute_run(self.run, env, self.retries, self._stop,
                                       command=lambda run, mode: run.command(mode, self.gpus, self.python),
                                       slurm_job=self._job_id())
        return {"run": self.run.label, "state": outcome.state, "exit_code": outcome.exit_code,
                "attempts": outcome.attempts}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or time-out (in the job's signal handler): stop the training
        through its SIGTERM path, wait until it has written its checkpoint, and ask for a requeue of this same
        job (None when there is nothing left to run)."""
        from submitit.helpers import DelayedSubmission

        if self._stop is not None:
            self._stop.request("SIGTERM")
            self._stop.wait_exited(self.grace_s)
        from pckd.sweep.state import summary_complete

        if summary_complete(self.run.run_dir) is not None:
            return None
        return DelayedSubmission(SweepJob(self.run, self.retries, self.threads, self.gpus, self.grace_s,
                                          self.python))


def executor_parameters(options: SlurmOptions, name: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one run per job (one node, one task)."""
    params: dict[str, Any] = {
        "name": name, "timeout_min": options.time, "mem_gb": options.mem_gb, "cpus_per_task": options.cpus,
        "gpus_per_node": options.gpus, "nodes": 1, "tasks_per_node": 1,
        "slurm_array_parallelism": options.array_parallelism, "slurm_signal_delay_s": options.signal_delay_s,
    }
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(options, key)
        if value is not None:
            params[f"slurm_{key}"] = value
    if options.setup:
        params["slurm_setup"] = list(options.setup)
    if options.additional:
        params["slurm_additional_parameters"] = dict(options.additional)
    return params


def describe_resources(options: SlurmOptions) -> str:
    hours, minutes = divmod(options.time, 60)
    partition = f"partition {options.partition}" if options.partition else "the default partition"
    gpus = f"{options.gpus} GPU{'s' * (options.gpus != 1)}" + (" (pckd torchrun)" if options.gpus > 1 else "")
    return (f"{partition}, {gpus}, {options.cpus} CPUs, {options.mem_gb:g} GB, {hours:02d}:{minutes:02d}:00 per "
            f"run; at most {options.array_parallelism} at a time; requeued on preemption (and up to "
            f"{options.max_timeouts} times on time-out)")


def make_executor(folder: Path, options: SlurmOptions, name: str, cluster: str = "slurm") -> Any:
    """A submitit executor for ``cluster`` (``slurm``; ``local`` or ``debug`` run the same jobs on this
    machine, which is how the Slurm path is tested without a cluster)."""
    submitit = _submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                         slurm_max_num_timeout=options.max_timeouts,
                                         local_max_num_timeout=options.max_timeouts)
    except RuntimeError as exc:  # e.g. "Could not detect srun": not on a Slurm cluster
        raise UserError(f"the slurm executor cannot start: {exc}; run pckd sweep on a Slurm login node, or "
                        f"use --executor local") from None
    executor.update_parameters(**executor_parameters(options, name))
    return executor


def submit_slurm(runs: list[PlannedRun], options: SlurmOptions, retries: int, output_root: Path, name: str,
                 echo: Callable[[str], None], cluster: str = "slurm") -> list[Any]:
    """Submit ``runs`` as one job array; records each run's job id in its state file; returns the jobs."""
    folder = Path(output_root) / SUBMITIT_FOLDER / "%j"
    executor = make_executor(folder, options, name, cluster)
    grace = max(10.0, options.signal_delay_s - 30.0)  # leave submitit time to requeue after the save
    jobs: list[Any] = []
    try:
        with executor.batch():
            for run in runs:
                run.run_dir.mkdir(parents=True, exist_ok=True)
                jobs.append(executor.submit(SweepJob(run, retries, options.cpus, options.gpus, grace)))
    except Exception as exc:  # submitit reports a refused sbatch as FailedJobError (its stderr as the message)
        submitit = _submitit()
        errors = (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError)
        if not isinstance(exc, errors):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError(f"sbatch refused the job array ({lines[-1] if lines else type(exc).__name__}); "
                        f"check the spec's slurm section (partition, account, resources)") from None
    for run, job in zip(runs, jobs):
        mark_submitted(run.run_dir, str(job.job_id), str(job.paths.folder))
    if jobs:
        array = str(jobs[0].job_id).split("_")[0]
        echo(f"submitted {len(jobs)} run{'s' * (len(jobs) > 1)} as job array {array}; logs of each job under "
             f"{Path(output_root) / SUBMITIT_FOLDER}/<job id>/, training logs in each run folder (sweep.log)")
    return jobs
