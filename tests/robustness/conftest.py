"""Helpers for the robustness tests: tiny digits runs, in-process and as real `pckd` subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# A run small enough for a test, long enough (90 steps per epoch) for a signal to land mid-epoch.
TINY_RUN = """\
method: ce
student: {arch: resnet8}
data: {name: digits, test_limit: 60}
train: {epochs: 2, batch_size: 16, eval_batch_size: 60, lr: 0.05, schedule: cosine, device: cpu,
        progress: false, log_interval: 2, eval_teacher: false}
"""


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RUN)
    return path


def subprocess_env() -> dict[str, str]:
    """The environment of `pckd` subprocesses: one thread each, so results are reproducible run to run."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def pckd_command(*args: str) -> list[str]:
    """``pckd ARGS`` run with this interpreter (the same installation the tests import)."""
    return [sys.executable, "-m", "pckd", *args]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every robustness test runs with one intra-op thread (see tests/conftest.py)."""
    yield
