"""`pckd sweep`: grids of runs (config globs x seeds x override grids) run locally or on Slurm, idempotently.

- :mod:`pckd.sweep.spec` reads a spec, :mod:`pckd.sweep.plan` expands it into runs with stable folder names
  (:mod:`pckd.sweep.naming`), :mod:`pckd.sweep.state` keeps each run's state file and lock,
  :mod:`pckd.sweep.runner` runs one run with retries, :mod:`pckd.sweep.local` and :mod:`pckd.sweep.slurm`
  are the executors, :mod:`pckd.sweep.command` is what the command line calls.

Nothing here imports torch at module level, and only the Slurm executor imports submitit.
"""

from pckd.sweep.command import SweepOptions, status_command, sweep_command
from pckd.sweep.plan import Plan, PlannedRun, check_plan, plan_sweep
from pckd.sweep.spec import SweepSpec, load_spec

__all__ = ["Plan", "PlannedRun", "SweepOptions", "SweepSpec", "check_plan", "load_spec", "plan_sweep",
           "status_command", "sweep_command"]
