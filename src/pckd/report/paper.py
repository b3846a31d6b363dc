"""The published numbers of the PCKD paper (``published/pckd_paper.json``) and of the recent baselines' own
releases (``published/recent_baselines.json``), and the runs measured for each of their cells: measured
mean ± std (n), published value, difference.

A published cell names what would reproduce it: a method (with, for PCKD, the variant: ``full`` or ``wo_kd``)
and a teacher -> student pair, a metric, and for Table IV the transfer target. Paper rows naming no method (the
paper's LSKD, which is not pckd's ``ls``) are published only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pckd.report.collect import RunRecord
from pckd.report.probes import ProbeRecord
from pckd.report.tables import Measured

PUBLISHED_FILES = ("pckd_paper.json", "recent_baselines.json")
# Settings every published cell implies unless it names another value: a run trained with DOT is KD+DOT, never the
# KD of a table (and runs written before ``train.optimizer`` existed trained with SGD).
IMPLIED = {"train.optimizer": "sgd"}
# The PCKD recipe of Tables I/II; a pckd run without one of these terms is an ablation (Tables V-IX).
_PCKD_TERMS = ("pckd.ccc_weight", "pckd.fa_weight", "pckd.ca_weight")


@dataclass(frozen=True)
class PaperCell:
    """One published cell and what reproduces it."""

    row: str
    column: str
    method: str | None  # "teacher", "student" (ce without a teacher), a pckd method name, or None: published only
    teacher: str | None
    student: str | None
    metric: str  # top1 | top5 | probe_top1
    published: float | None  # None: NA in the paper
    variant: str | None = None  # pckd: "full" or "wo_kd"
    target: str | None = None  # Table IV: the transfer data set
    settings: tuple[tuple[str, Any], ...] = ()  # (config key, value) a run must have, e.g. train.optimizer: dot

    def settings_match(self, run: RunRecord) -> bool:
        """Whether ``run``'s config holds every value of :attr:`settings` (a key it does not record takes its
        value from ``IMPLIED``: run folders older than the key)."""
        recorded = dict(run.variant)
        for key, value in self.settings:
            got = json.loads(recorded.get(key, "null"))
            if (IMPLIED.get(key) if got is None else got) != value:
                return False
        return True


@dataclass(frozen=True)
class PaperTable:
    """One published table, in the paper's orientation (``method_axis`` says whether its rows or its columns are
    the methods)."""

    paper: str
    arxiv: str
    table: str
    title: str
    datasets: tuple[str, ...]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    method_axis: str  # "rows" | "columns"
    cells: dict[tuple[str, str], PaperCell]
    notes: dict[str, str]  # method label -> why it has no measured value
    ref: str = ""  # how the heading names the table; default "Table <table> of arXiv <arxiv>"
    source: str = ""  # where the numbers come from; default "<paper>, Table <table>, arXiv <arxiv>"

    @property
    def heading(self) -> str:
        return self.ref or f"Table {self.table} of arXiv {self.arxiv}"

    @property
    def source_text(self) -> str:
        return self.source or f"{self.paper}, Table {self.table}, arXiv {self.arxiv}"

    @property
    def method_labels(self) -> tuple[str, ...]:
        return self.rows if self.method_axis == "rows" else self.columns

    @property
    def other_labels(self) -> tuple[str, ...]:
        return self.columns if self.method_axis == "rows" else self.rows


def _table(data: dict[str, Any]) -> PaperTable:
    rows, columns = data["rows"], data["columns"]
    method_axis = "rows" if "method" in rows[0] else "columns"
    cells = {}
    for row, values in zip(rows, data["values"]):
        if len(values) != len(columns):
            raise ValueError(f"table {data['table']}, row {row['label']}: {len(values)} values, {len(columns)} columns")
        for column, value in zip(columns, values):
            info = {**data, **row, **column}
            cells[(row["label"], column["label"])] = PaperCell(
                row=row["label"], column=column["label"], method=info.get("method"), teacher=info.get("teacher"),
                student=info.get("student"), metric=info["metric"], published=value, variant=info.get("variant"),
                target=info.get("target"), settings=tuple(sorted({**IMPLIED, **(row.get("settings") or {})}.items())))
    methods = rows if method_axis == "rows" else columns
    return PaperTable(
        paper=data["paper"], arxiv=data["arxiv"], table=data["table"], title=data["title"],
        datasets=tuple(data["datasets"]), rows=tuple(r["label"] for r in rows),
        columns=tuple(c["label"] for c in columns), method_axis=method_axis, cells=cells,
        notes={m["label"]: m["note"] for m in methods if "note" in m}, ref=data.get("ref", ""),
        source=data.get("source", ""))


def load_published() -> list[PaperTable]:
    """The published tables shipped inside the package: the PCKD paper's Tables I-IV, then the recent baselines'."""
    folder = resources.files("pckd.report").joinpath("published")
    return [_table(t) for name in PUBLISHED_FILES
            for t in json.loads(folder.joinpath(name).read_text(encoding="utf-8"))["tables"]]


def pckd_variant(run: RunRecord) -> str | None:
    """``full`` (KD term on) or ``wo_kd`` (kd_weight 0) for a pckd run with the paper's recipe (all three category
    terms, preview weights on the classification losses only); None for an ablation or another method."""
    if run.method != "pckd":
        return None
    setting = {key: json.loads(value) for key, value in run.variant}
    if any(not setting.get(key) for key in _PCKD_TERMS):
        return None
    if setting.get("pckd.preview.mode", "preview") != "preview" or setting.get("pckd.preview.on_ce"):
        return None
    return "wo_kd" if not setting.get("pckd.kd_weight") else "full"


def _base_dataset(label: str) -> str:
    return label.split(" (", 1)[0]


def _run_value(cell: PaperCell, run: RunRecord, metric: str) -> float | None:
    """The number ``run`` measures for ``cell`` (None when it is not a run of that cell)."""
    if cell.method is None or cell.metric == "probe_top1":
        return None
    if cell.method == "teacher":
        return None  # teachers are read per checkpoint (see _teacher_values)
    if cell.method == "student":
        wanted = (run.method, run.teacher, run.student) == ("ce", None, cell.student)
    else:
        wanted = ((run.method, run.teacher, run.student) == (cell.method, cell.teacher, cell.student)
                  and (cell.variant is None or pckd_variant(run) == cell.variant) and cell.settings_match(run))
    if not wanted:
        return None
    return run.top1(metric) if cell.metric == "top1" else run.last_top5


def _teacher_values(cell: PaperCell, runs: list[RunRecord]) -> tuple[list[float], list[RunRecord]]:
    """The teacher accuracy recorded by the runs distilled from ``cell``'s pair, one per teacher checkpoint."""
    per_checkpoint: dict[str, float] = {}
    used = []
    for run in runs:
        if (run.teacher, run.student) == (cell.teacher, cell.student) and run.teacher_top1 is not None:
            key = run.teacher_checkpoint or str(run.path)
            if key not in per_checkpoint and cell.metric == "top1":
                per_checkpoint[key] = run.teacher_top1
                used.append(run)
    return list(per_checkpoint.values()), used


def _target_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _probe_values(cell: PaperCell, probes: list[ProbeRecord]) -> list[float]:
    """Probe top-1 of the students (or teacher) of ``cell`` on its target; a probe's row is 'method arch'."""
    values = []
    for probe in probes:
        method, _, arch = probe.row.partition(" ")
        if cell.target is None or not _target_key(probe.target).startswith(cell.target):
            continue
        if cell.method == "teacher":
            wanted = (method, arch) == ("ce", cell.teacher)
        elif cell.method == "student":
            wanted = (method, arch) == ("ce", cell.student)
        else:
            wanted = cell.method is not None and (method, arch) == (cell.method, cell.student)
        if wanted:
            values.append(probe.top1)
    return values


@dataclass
class Comparison(Measured):
    """A published cell beside what the runs measured for it."""

    cell: PaperCell
    values: list[float] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def diff(self) -> float | None:
        """Measured mean minus the published value; None when either is missing."""
        if self.mean is None or self.cell.published is None:
            return None
        return self.mean - self.cell.published



@dataclass
class TableComparison:
    """One published table with its measured cells."""

    table: PaperTable
    metric: str
    cells: dict[tuple[str, str], Comparison]
    notes: list[str]

    def comparison(self, method_label: str, other_label: str) -> Comparison:
        """The cell of a method and a pair (or metric, or target), whatever the paper's orientation."""
        key = (method_label, other_label) if self.table.method_axis == "rows" else (other_label, method_label)
        return self.cells[key]

    def measured(self, other_label: str) -> bool:
        """Whether any method has a measured value for this pair (or metric, or target)."""
        return any(self.comparison(m, other_label).n for m in self.table.method_labels)


def _main_epochs(run: RunRecord) -> int | None:
    """The planned epochs of the run's main stage: ``train.epochs`` less a two-stage method's first stage
    (``<method>.init_epochs``: RepDistiller's init epochs of AB/FT/FSP, SSKD's teacher stage), which the paper's
    240 epochs do not count."""
    if run.epochs_planned is None:
        return None
    init = dict(run.variant).get(f"{run.method}.init_epochs")
    return run.epochs_planned - (int(json.loads(init)) if init is not None else 0)


def compare_table(table: PaperTable, runs: list[RunRecord], probes: list[ProbeRecord],
                  metric: str) -> TableComparison:
    """Every cell of ``table`` with the runs (of its data sets) and probes that measure it."""
    runs = [run for run in runs if _base_dataset(run.dataset) in table.datasets]
    cells: dict[tuple[str, str], Comparison] = {}
    for key, cell in table.cells.items():
        comparison = Comparison(cell)
        if cell.metric == "probe_top1":
            comparison.values = _probe_values(cell, probes)
        elif cell.method == "teacher":
            comparison.values, comparison.runs = _teacher_values(cell, runs)
        else:
            for run in runs:
                value = _run_value(cell, run, metric)
                if value is not None:
                    comparison.values.append(value)
                    comparison.runs.append(run)
        cells[key] = comparison
    used = [run for c in cells.values() for run in c.runs]
    notes = []
    sliced = sorted({run.dataset for run in used if run.dataset != _base_dataset(run.dataset)})
    if sliced:
        notes.append(f"measured on a subset of the data ({'; '.join(sliced)}): not comparable with the paper")
    epochs = sorted({e for e in map(_main_epochs, used) if e is not None})
    if len(epochs) > 1 or (epochs and table.datasets[0] == "cifar100" and epochs != [240]):
        notes.append(f"runs planned for {', '.join(map(str, epochs))} epoch(s); the paper's CIFAR runs train 240")
    for comparison in cells.values():
        settings = {run.variant for run in comparison.runs if comparison.cell.method != "teacher"}
        if len(settings) > 1:
            notes.append(f"{comparison.cell.row}, {comparison.cell.column}: averages runs of {len(settings)} "
                         f"different settings of {comparison.cell.method}")
    if any(c.cell.metric == "top5" and c.n for c in cells.values()):
        notes.append("measured top-5: the last epoch's (runs record no best top-5)")
    return TableComparison(table, metric, cells, notes)


def compare_published(runs: list[RunRecord], probes: list[ProbeRecord], metric: str = "best") -> list[TableComparison]:
    """The published tables that at least one run or probe measures, each with its measured cells."""
    out = []
    for table in load_published():
        comparison = compare_table(table, runs, probes, metric)
        if any(c.n for c in comparison.cells.values()):
            out.append(comparison)
    return out
