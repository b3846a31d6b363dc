"""The linear-probe summary of ``pckd report`` (the paper's Table IV): one row per probed student, one column
per target data set, the best probe top-1 (mean ± std over the seeds of a row)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pckd.config.yaml_source import parse_text
from pckd.errors import UserError
from pckd.run_folder import CONFIG


@dataclass(frozen=True)
class ProbeRecord:
    """One ``probe.json``: which student (row), on which target data (column), and its best top-1."""

    path: Path
    row: str
    target: str
    top1: float


def _target_name(data: dict[str, Any]) -> str:
    name = str(data.get("name", "?"))
    if name == "imagefolder" and data.get("root"):
        return Path(str(data["root"])).name or name
    return name


def _row_name(checkpoint: Path, arch: str) -> str:
    """``method: arch`` from the run folder holding the probed checkpoint, else the checkpoint's file name."""
    config = checkpoint.parent / CONFIG
    method = None
    if config.is_file():
        try:
            tree = parse_text(config.read_text(errors="replace"), str(config))
            method = tree.get("method") if isinstance(tree, dict) else None
        except UserError:
            method = None  # an unreadable config only costs the row its method name
    return f"{method} {arch}" if method else f"{checkpoint.name} ({arch})"


def read_probe(path: Path) -> ProbeRecord:
    """Read one ``probe.json``; ValueError (with the reason) when it is not one."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("best_top1"), (int, float)):
        raise ValueError("no best_top1")
    checkpoint = Path(str(data.get("checkpoint", path)))
    return ProbeRecord(path, _row_name(checkpoint, str(data.get("arch", "?"))),
                       _target_name(data.get("data") or {}), float(data["best_top1"]))


def collect_probes(paths: list[Path], on_problem: Callable[[str], None]) -> list[ProbeRecord]:
    """Every ``probe.json`` at or below ``paths``; unreadable ones are reported and skipped."""
    found = sorted({p for root in paths for p in ([root] if root.name == "probe.json" else root.rglob("probe.json"))})
    probes = []
    for path in found:
        try:
            probes.append(read_probe(path))
        except (OSError, ValueError) as exc:
            on_problem(f"{path}: not a probe result ({exc}); skipped")
    return probes


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def render_probe_table(probes: list[ProbeRecord]) -> str:
    """Markdown of the probe summary ('' when there is no probe)."""
    if not probes:
        return ""
    rows = sorted({p.row for p in probes})
    targets = sorted({p.target for p in probes})
    lines = ["## Linear probes (transfer, Table IV)\n",
             "Best test top-1 (%) of a linear classifier on the frozen penultimate features (`pckd probe`); mean ± "
             "sample std when a row was probed several times.\n",
             "| Student | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for row in rows:
        cells = [_cell([p.top1 for p in probes if p.row == row and p.target == t]) if any(
            p.row == row and p.target == t for p in probes) else "–" for t in targets]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
