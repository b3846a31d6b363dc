"""`pckd torchrun`: Ctrl-C reaching torchrun and its ranks ends in one line and exit 130, with a checkpoint and the
resume command as it must be typed (plain torchrun exits 1 with a traceback there)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

from pckd.engine.checkpoint_io import load_checkpoint_file

from .conftest import pckd_command, subprocess_env
from .test_sigterm import _wait_for_step_line


def test_ctrl_c_to_the_process_group_exits_130_in_one_line(tiny_config: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    proc = subprocess.Popen(pckd_command("torchrun", "--nproc_per_node=2", "train", str(tiny_config),
                                         f"output_dir={run_dir}", "train.device=cpu"),
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for_step_line(run_dir / "metrics.jsonl", proc, timeout=180)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SignalException" not in err, err
    assert err.count("pckd: SIGINT: stopped") == 1
    assert err.rstrip().splitlines()[-1].startswith("pckd: torchrun received SIGINT and stopped its ranks")
    assert load_checkpoint_file(run_dir / "last.pt")["epoch"] == 1
    line = next(ln for ln in err.splitlines() if "Resume with:" in ln)
    command = shlex.split(line.split("Resume with: ", 1)[1])
    assert command == ["pckd", "torchrun", "--nproc_per_node=2", "train", str(run_dir / "config.yaml"), "resume=true"]
