"""Helpers for the sweep tests: tiny digits configs, spec files, and commands that stand in for `pckd train`."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.robustness import conftest as _robustness

TINY_RUN = _robustness.TINY_RUN  # the module, not its names: its autouse fixtures stay in its folder


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the current directory of the test) holding configs/tiny.yaml."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(TINY_RUN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_spec(folder: Path, body: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def wait_for(condition: Callable[[], Any], timeout: float = 120.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def exit_command(code: int) -> Callable[..., list[str]]:
    """A command builder for execute_run/run_local: a Python process that exits with ``code`` at once."""
    def command(run: Any, mode: str) -> list[str]:
        return [sys.executable, "-c", f"import sys; print('mode {mode}'); sys.exit({code})"]

    return command


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# A stand-in for `python -m pckd train ...` that behaves like the trainer's SIGTERM path, without torch: it
# "trains" until SIGTERM, then writes last.pt and exits 0; started with resume=true it finishes at once.
FAKE_TRAINER = """\
import json, pathlib, signal, sys, time
args = sys.argv[1:]
out = pathlib.Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
out.mkdir(parents=True, exist_ok=True)
if "resume=true" in args:
    print("resuming from", (out / "last.pt").read_text(), flush=True)
    (out / "summary.json").write_text(json.dumps({"last_top1": 1.0, "best_top1": 1.0, "epochs": 1}))
    sys.exit(0)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
(out / "metrics.jsonl").write_text('{"kind": "step", "epoch": 1, "step": 1}\\n')
while not stop:
    time.sleep(0.01)
(out / "last.pt").write_text("epoch 1 step 7")
print("SIGTERM: checkpoint saved", flush=True)
"""
