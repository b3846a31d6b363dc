"""benchmarks/gpu_suite.py --dry-run: every section runs end to end on the CPU with tiny sizes, so the script is
known to work before a GPU machine is lent for minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"ce", "kd", "pckd", "ckd", "dkd", "crd", "reviewkd"}


def test_the_gpu_suite_dry_run_completes_every_section(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--out", str(out), "--dry-run",
                           "--cpu", "--data", str(shared_data)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    sections = results["sections"]
    assert all(sections[name]["ok"] for name in ("correctness", "throughput", "smoke")), sections
    checks = {c["check"]: c["ok"] for c in sections["correctness"]["result"]}
    assert checks["deterministic resume is bit-identical"] is True
    assert checks["bf16 autocast vs fp32 losses"] is True
    rows = sections["throughput"]["result"]
    assert not [r for r in rows if "error" in r]
    assert {r["method"] for r in rows if r.get("impl") == "project"} == METHODS
    assert {r["method"] for r in rows if r.get("impl") == "reference"} == {"ce", "kd", "pckd"}
    assert all(r["img_per_s"] > 0 for r in rows)
    assert set(sections["smoke"]["result"]) == {"teacher resnet14 (ce)", "student resnet8 (ce)",
                                                "student resnet8 (kd)", "student resnet8 (pckd)"}
    table = (out / "results.md").read_text()
    assert "## Correctness" in table and "## Throughput" in table and "## Learning smoke test" in table
