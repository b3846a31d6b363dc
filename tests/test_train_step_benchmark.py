"""benchmarks/train_step.py still runs against today's API (it is not imported by anything else, so a
refactor could break it unseen): one tiny round of the project and reference steps, checked for sane output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_runs_one_tiny_round(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--pairs", "wrn_40_2-wrn_16_2",
           "--methods", "pckd", "--steps", "1", "--warmup", "0", "--batch-size", "4", "--threads", "1",
           "--ref-workers", "0", "--skip-memory", "--skip-augmentation", "--data-root", str(shared_data),
           "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    text = json.dumps(result)
    assert "pckd" in text and "reference" in text and "project" in text
    assert "| wrn_40_2-wrn_16_2 | pckd |" in done.stdout
