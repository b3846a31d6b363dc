"""Sensitivity of accuracy to one hyper-parameter (the PCKD paper's Fig. 5): test top-1 against the value of a
config key, mean ± std over seeds, one curve per teacher -> student pair.

A curve is made of runs that agree on everything the report compares (data, method and its section,
teacher, student, ``train.epochs``/``train.schedule``) except the swept key; seeds are repeats. So the runs of
a sweep that varies several keys one at a time (``grid: [{}, {a: [...]}, {b: [...]}]``) give, for key ``a``,
the curve through the default point and the ``a`` values; runs that moved another key are not on it. A group
with a single value of the key is no curve and is left out.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pckd.errors import PckdWarning, UserError
from pckd.report.collect import RunRecord, collect_runs


@dataclass
class Point:
    """One value of the swept key on one curve."""

    value: Any
    top1: list[float] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.top1)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.top1) if len(self.top1) > 1 else None

    @property
    def incomplete(self) -> bool:
        return any(not r.complete for r in self.runs)


@dataclass
class Curve:
    """The points of one group of runs, in order of the swept value."""

    label: str
    dataset: str
    points: list[Point]

    def notes(self) -> list[str]:
        """What a reader must know: a seed that two runs of one point share (copies of a run count twice)."""
        out = []
        for point in self.points:
            seeds = [r.seed for r in point.runs if r.seed is not None]
            repeated = sorted({s for s in seeds if seeds.count(s) > 1})
            if repeated:
                out.append(f"{self.label}, {_show_value(point.value)}: seed(s) {', '.join(map(str, repeated))} used "
                           f"by more than one run (copies of one run count twice)")
        return out


def _config_value(run: RunRecord, key: str) -> tuple[bool, Any]:
    """(found, value) of dotted ``key`` in the run's saved config.yaml."""
    try:
        node: Any = yaml.safe_load((run.path / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False, None
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if _is_number(value) else (1, json.dumps(value, sort_keys=True))


def _varying_keys(runs: list[RunRecord]) -> list[str]:
    """Keys of the runs' variants that take more than one value (what a user might have meant)."""
    values: dict[str, set[str]] = {}
    for run in runs:
        for key, value in run.variant:
            values.setdefault(key, set()).add(value)
    return sorted(k for k, v in values.items() if len(v) > 1)


def sensitivity_curves(runs: list[RunRecord], key: str, metric: str = "best") -> list[Curve]:
    """The curves of ``key`` among ``runs`` (see the module docstring); raises UserError when no two runs
    differ only in ``key``."""
    groups: dict[tuple[Any, ...], dict[str, Point]] = {}
    found_key = False
    for run in runs:
        has, value = _config_value(run, key)
        if not has:
            continue
        found_key = True
        top1 = run.top1(metric)
        if top1 is None:
            continue
        rest = tuple((k, v) for k, v in run.variant if k != key and not k.startswith(f"{key}."))
        group = groups.setdefault((run.dataset, run.method, run.teacher, run.student, rest), {})
        point = group.setdefault(json.dumps(value, sort_keys=True), Point(value))
        point.top1.append(top1)
        point.runs.append(run)
    varying = _varying_keys(runs)
    hint = f"; keys that vary across these runs: {', '.join(varying)}" if varying else ""
    if not found_key:
        raise UserError(f"no run's config.yaml has the key '{key}'; give a dotted config key such as "
                        f"pckd.fa_weight{hint}")
    kept = {g: pts for g, pts in groups.items() if len(pts) > 1}
    if not kept:
        raise UserError(f"no two finished runs differ only in '{key}', so there is no curve to draw; sweep it "
                        f"with a grid (pckd sweep){hint}")
    return _label_curves(kept)


def _label_curves(groups: dict[tuple[Any, ...], dict[str, Point]]) -> list[Curve]:
    """Label each group by its pair; add the method, dataset or differing settings only where needed to tell
    curves apart."""
    keys = list(groups)
    methods = {g[1] for g in keys}
    datasets = {g[0] for g in keys}
    curves = []
    for group in sorted(keys, key=lambda g: (g[0], str(g[2]), g[3], g[1], g[4])):
        dataset, method, teacher, student, rest = group
        label = f"{teacher} → {student}" if teacher else f"{student} (no teacher)"
        if len(methods) > 1:
            label += f", {method}"
        if len(datasets) > 1:
            label += f", {dataset}"
        twins = [g for g in keys if g[:4] == group[:4] and g != group]
        if twins:
            mine = dict(rest)
            differing = sorted({k for g in twins for k, v in dict(g[4]).items() if mine.get(k) != v}
                               | {k for g in twins for k in mine if k not in dict(g[4])})
            shown = ", ".join(f"{k.split('.')[-1]}={json.loads(mine[k]) if k in mine else 'unset'}"
                              for k in differing)
            label += f" [{shown}]"
        points = sorted(groups[group].values(), key=lambda p: _sort_key(p.value))
        curves.append(Curve(label, dataset, points))
    return curves


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", key).strip("_") or "key"


def _show_value(value: Any) -> str:
    if _is_number(value):
        return f"{float(value):g}"
    return value if isinstance(value, str) else json.dumps(value)


def plot_sensitivity(curves: list[Curve], key: str, metric: str, path: Path) -> Path:
    """Accuracy against the swept value with ±1 std error bars over seeds, one panel per curve (pairs differ
    by several points of accuracy, which would flatten each curve on a shared axis); a log axis when the
    values are positive numbers spanning 20x or more; categories in order otherwise."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    values = [p.value for c in curves for p in c.points]
    numeric = all(_is_number(v) for v in values)
    positive = numeric and min(float(v) for v in values) > 0
    log_x = positive and max(float(v) for v in values) / min(float(v) for v in values) >= 20
    categories = sorted({json.dumps(v, sort_keys=True) for v in values}, key=lambda s: _sort_key(json.loads(s)))
    ncols = min(3, len(curves))
    nrows = -(-len(curves) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 0.6, 3.6 * nrows + 0.5), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    which = "best epoch" if metric == "best" else "last epoch"
    any_hollow = False
    for i, (ax, curve) in enumerate(zip(axes.flat, curves)):
        colour = colours[i % len(colours)]
        xs = [float(p.value) if numeric else categories.index(json.dumps(p.value, sort_keys=True))
              for p in curve.points]
        ys = [p.mean for p in curve.points]
        errs = [p.std or 0.0 for p in curve.points]
        ax.errorbar(xs, ys, yerr=errs, color=colour, marker="o", capsize=4, linewidth=1.5)
        hollow = [j for j, p in enumerate(curve.points) if p.incomplete]
        if hollow:
            any_hollow = True
            ax.plot([xs[j] for j in hollow], [ys[j] for j in hollow], linestyle="none", marker="o", markersize=7,
                    markerfacecolor="white", markeredgecolor=colour, zorder=3)
        counts = {len(p.top1) for p in curve.points}
        if len(counts) > 1:  # uneven seeds: say how many stand behind each point
            for x, y, p in zip(xs, ys, curve.points):
                ax.annotate(f"n={len(p.top1)}", (x, y), textcoords="offset points", xytext=(7, 4), ha="left",
                            fontsize="x-small", color="0.3")
        if len(counts) == 1:
            n = next(iter(counts))
            seeds = f"{n} seed{'s' * (n != 1)} per point"
        else:
            seeds = f"{min(counts)}-{max(counts)} seeds per point"
        if log_x:
            ax.set_xscale("log")
        if numeric:
            ticks = sorted({float(v) for v in values})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(categories)))
            ax.set_xticklabels([_show_value(json.loads(c)) for c in categories])
        low, high = min(y - e for y, e in zip(ys, errs)), max(y + e for y, e in zip(ys, errs))
        margin = max(0.25, 0.15 * (high - low))  # never zoom into noise
        ax.set_ylim(low - margin, high + margin)
        ax.set(title=f"{curve.label} ({seeds})", xlabel=key, ylabel=f"test top-1 (%), {which}")
        ax.margins(x=0.08)  # room for the n= labels at the ends
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    datasets = ", ".join(sorted({c.dataset for c in curves}))
    note = "points: mean ± 1 std over seeds" + ("; hollow: includes unfinished runs" if any_hollow else "")
    fig.suptitle(f"Sensitivity to {key} ({datasets})\n{note}", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_markdown(curves: list[Curve], key: str, metric: str) -> str:
    which = "best" if metric == "best" else "last"
    lines = [f"## Sensitivity to `{key}`\n", f"Test top-1 (%, {which} epoch): mean ± sample std over seeds (n).\n",
             f"| curve | {key} | top-1 | n |", "|---|---|---|---|"]
    for curve in curves:
        for point in curve.points:
            std = f" ± {point.std:.2f}" if point.std is not None else ""
            mark = "*" if point.incomplete else ""
            lines.append(f"| {curve.label} | {_show_value(point.value)} | {point.mean:.2f}{std}{mark} | "
                         f"{len(point.top1)} |")
    return "\n".join(lines) + "\n"


def write_csv(curves: list[Curve], key: str, metric: str, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["curve", "dataset", "key", "value", "metric", "mean", "std", "n", "incomplete", "runs"])
        for curve in curves:
            for p in curve.points:
                writer.writerow([curve.label, curve.dataset, key, json.dumps(p.value), metric, f"{p.mean:.4f}",
                                 "" if p.std is None else f"{p.std:.4f}", len(p.top1), int(p.incomplete),
                                 " ".join(str(r.path) for r in p.runs)])


def write_sensitivity(paths: list[Path], out_dir: Path, key: str, metric: str = "best",
                      echo: Callable[[str], None] | None = None) -> Path:
    """``sensitivity_<key>.png`` and ``.csv`` in ``out_dir`` from the runs under ``paths``, and the table as a
    section of ``report.md`` (appended when it exists); returns the PNG's path."""
    out_dir = Path(out_dir)
    runs = collect_runs([Path(p) for p in paths], on_problem=lambda message: None)  # the report warned already
    curves = sensitivity_curves(runs, key, metric)
    for curve in curves:
        for note in curve.notes():
            warnings.warn(PckdWarning(note), stacklevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"sensitivity_{_slug(key)}"
    png = plot_sensitivity(curves, key, metric, out_dir / f"{stem}.png")
    write_csv(curves, key, metric, out_dir / f"{stem}.csv")
    section = render_markdown(curves, key, metric) + f"\n![{stem}]({png.name})\n"
    with open(out_dir / "report.md", "a") as handle:
        handle.write("\n" + section)
    if echo is not None:
        echo(render_markdown(curves, key, metric))
    return png
