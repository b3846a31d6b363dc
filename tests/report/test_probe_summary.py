"""`pckd report` summarises the probe results it finds (Table IV): a row per probed student, a column per target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pckd.errors import PckdWarning
from pckd.report import write_report
from pckd.report.probes import collect_probes, render_probe_table


def _probe(root: Path, run: str, method: str, target: dict, top1: float, seed_dir: str = "probe") -> Path:
    run_dir = root / run
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(f"method: {method}\nstudent:\n  arch: resnet8x4\n")
    out = run_dir / seed_dir
    out.mkdir()
    (out / "probe.json").write_text(json.dumps({"checkpoint": str(run_dir / "best.pt"), "arch": "resnet8x4",
                                                "data": target, "best_top1": top1}))
    return out / "probe.json"


def test_probes_become_a_table_with_means_over_repeats(tmp_path: Path) -> None:
    stl = {"name": "imagefolder", "root": "/data/stl10"}
    tiny = {"name": "imagefolder", "root": "/data/tiny-imagenet-200"}
    _probe(tmp_path, "kd", "kd", stl, 70.0)
    _probe(tmp_path, "kd", "kd", stl, 72.0, seed_dir="probe-2")
    _probe(tmp_path, "pckd", "pckd", stl, 74.5)
    _probe(tmp_path, "pckd", "pckd", tiny, 40.25, seed_dir="probe-tiny")
    problems: list[str] = []
    probes = collect_probes([tmp_path], problems.append)
    assert problems == [] and len(probes) == 4
    table = render_probe_table(probes)
    assert "| Student | stl10 | tiny-imagenet-200 |" in table
    assert "| kd resnet8x4 | 71.00 ± 1.41 (n=2) | – |" in table  # stdev of 70, 72 is sqrt(2)
    assert "| pckd resnet8x4 | 74.50 | 40.25 |" in table


def test_report_of_probes_alone_and_a_broken_probe_file(tmp_path: Path) -> None:
    _probe(tmp_path, "kd", "kd", {"name": "cifar10"}, 61.0)
    broken = tmp_path / "other" / "probe.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    with pytest.warns(PckdWarning, match="not a probe result"):  # warned on the console as well
        report = write_report([tmp_path], tmp_path / "out", plots=False)
    text = report.read_text()
    assert "| kd resnet8x4 | 61.00 |" in text
    assert f"{broken}: not a probe result" in text  # listed under Problems, not a crash
