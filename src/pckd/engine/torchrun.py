"""`pckd torchrun`: torchrun with pckd's exit codes and one-line endings.

``pckd torchrun --nproc_per_node=4 train CONFIG ...`` is ``torchrun --nproc_per_node=4 -m pckd train CONFIG ...``,
except for how it ends: when Ctrl-C or a scheduler's SIGTERM reaches torchrun itself, torchrun raises an
exception and exits 1 with a traceback although its ranks stopped cleanly and saved a checkpoint. Here that
ending is one line and the exit code of a stopped run (130 for SIGINT, 0 for SIGTERM); a rank that failed gives
one line naming its exit code.
"""

from __future__ import annotations

import os
import shlex
import signal

from pckd.errors import TrainingStopped, UserError

LAUNCHER_ENV = "PCKD_LAUNCHER"  # how the ranks print the resume command


def run_torchrun(torchrun_args: list[str], pckd_args: list[str]) -> int:
    """Launch ``python -m pckd PCKD_ARGS`` under torchrun with ``TORCHRUN_ARGS``; returns the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if not pckd_args:
        raise UserError("pckd torchrun: give the pckd command to run, e.g. pckd torchrun --nproc_per_node=2 "
                        "train CONFIG")
    os.environ[LAUNCHER_ENV] = "pckd torchrun " + " ".join(shlex.quote(a) for a in torchrun_args)
    try:
        run(parse_args([*torchrun_args, "-m", "pckd", *pckd_args]))
    except SignalException as exc:
        name = signal.Signals(exc.sigval).name
        raise TrainingStopped(f"torchrun received {name} and stopped its ranks (each saved its checkpoint as "
                              "said above)", exit_code=0 if exc.sigval == signal.SIGTERM else 130) from None
    except ChildFailedError as exc:
        codes = sorted({f.exitcode for f in exc.failures.values()})
        if codes == [130]:
            raise TrainingStopped("the ranks stopped on SIGINT (see above)", exit_code=130) from None
        ranks = ", ".join(f"rank {rank}: exit {f.exitcode}" for rank, f in sorted(exc.failures.items()))
        raise TrainingStopped(f"torchrun: {ranks} (see the ranks' messages above)", exit_code=1) from None
    return 0
