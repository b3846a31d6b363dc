"""Runs -> tables in the layout of the PCKD paper's Tables I/II: one column per teacher -> student pair, one row
per method, a Teacher row on top; Markdown and CSV.

Runs sharing (data, method and its hyper-parameters, teacher arch, student arch) are repeats (seeds): their cell
is the mean, with the sample standard deviation and count when there are several. A run trained without a
teacher (``ce``: scratch students) fills every column whose student is its architecture.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from pckd.report.collect import RunRecord
from pckd.report.paper_rows import not_reproducible_notes

Column = tuple["str | None", str]  # (teacher arch or None, student arch)
TEACHER_ROW = "Teacher"
SCRATCH_ROW = "Student (ce)"


class Measured:
    """Statistics of a cell's measured ``values`` (one per run) and whether any of its ``runs`` is unfinished;
    shared by the report's own tables and the tables beside the paper."""

    values: list[float]
    runs: list[RunRecord]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over repeats (n - 1 in the denominator); None for a single value."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def incomplete(self) -> bool:
        return any(not run.complete for run in self.runs)


@dataclass
class Cell(Measured):
    """The runs (or teacher accuracies) behind one table cell."""

    values: list[float]
    runs: list[RunRecord] = field(default_factory=list)
    delta_kd: float | None = None  # mean minus the kd row's mean in the same column

    def text(self) -> str:
        """``73.45 ± 0.21 (n=3) (+1.12)``; ``*`` marks a cell holding an incomplete run."""
        mark = "*" if self.incomplete else ""
        if self.mean is None:
            return f"n/a{mark}" if self.runs else "–"
        out = f"{self.mean:.2f}"
        if self.n > 1:
            out += f" ± {self.std:.2f} (n={self.n})"
        if self.delta_kd is not None:
            out += f" ({self.delta_kd:+.2f})"
        return out + mark


@dataclass
class Table:
    """One dataset's table."""

    dataset: str
    metric: str  # best | last
    columns: list[Column]
    rows: list[str]
    cells: dict[tuple[str, Column], Cell]
    row_method: dict[str, str]
    notes: list[str] = field(default_factory=list)


def column_name(column: Column) -> str:
    teacher, student = column
    return f"{teacher} → {student}" if teacher else student


def _show(value_json: str) -> str:
    value = json.loads(value_json)
    return value if isinstance(value, str) else json.dumps(value)


def _row_labels(runs: list[RunRecord]) -> dict[int, str]:
    """Row label of each run (by id): the method, marked when trained without a teacher, plus the
    hyper-parameters that differ between runs of that method when it was run with several settings."""
    by_kind: dict[tuple[str, bool], list[RunRecord]] = {}
    for run in runs:
        by_kind.setdefault((run.method, run.teacher is not None), []).append(run)
    labels: dict[int, str] = {}
    for (method, has_teacher), group in by_kind.items():
        if has_teacher:
            base = method
        else:
            base = SCRATCH_ROW if method == "ce" else f"{method} (no teacher)"
        settings = [dict(run.variant) for run in group]
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys if len({s.get(k, "null") for s in settings}) > 1]
        for run, setting in zip(group, settings):
            shown = ", ".join(f"{k.removeprefix(method + '.')}={_show(setting.get(k, 'null'))}" for k in differing)
            labels[id(run)] = f"{base} [{shown}]" if shown else base
    return labels


def _row_order(label: str, method: str) -> tuple[int, str]:
    """Teacher, scratch student, kd, the other methods by name, the paper's own method (pckd) last."""
    if label == TEACHER_ROW:
        return 0, label
    if label.startswith(SCRATCH_ROW):
        return 1, label
    return {"kd": 2, "pckd": 4}.get(method, 3), label


def _columns(runs: list[RunRecord]) -> list[Column]:
    pairs = sorted({(r.teacher, r.student) for r in runs if r.teacher is not None})
    students = {s for _, s in pairs}
    alone = sorted({r.student for r in runs if r.teacher is None and r.student not in students})
    return pairs + [(None, s) for s in alone]


def _in_column(run: RunRecord, column: Column) -> bool:
    if run.teacher is None:
        return run.student == column[1]
    return (run.teacher, run.student) == column


def _teacher_cell(runs: list[RunRecord]) -> Cell:
    """The teachers' accuracies recorded by the runs of a column, one value per teacher checkpoint."""
    per_checkpoint: dict[str, float] = {}
    for run in runs:
        if run.teacher_top1 is not None:
            per_checkpoint.setdefault(run.teacher_checkpoint or str(run.path), run.teacher_top1)
    return Cell(values=list(per_checkpoint.values()))


def build_table(dataset: str, runs: list[RunRecord], metric: str) -> Table:
    """The table of one dataset's runs, with ``metric`` (best | last) top-1 in the cells."""
    labels = _row_labels(runs)
    columns = _columns(runs)
    row_method = {labels[id(r)]: r.method for r in runs}
    cells: dict[tuple[str, Column], Cell] = {}
    notes: list[str] = []
    for column in columns:
        in_column = [r for r in runs if _in_column(r, column)]
        if column[0] is not None:
            cells[(TEACHER_ROW, column)] = _teacher_cell(in_column)
        for run in in_column:
            cell = cells.setdefault((labels[id(run)], column), Cell(values=[]))
            cell.runs.append(run)
            top1 = run.top1(metric)
            if top1 is not None:
                cell.values.append(top1)
        kd_cells = [c for (row, col), c in cells.items() if col == column and row_method.get(row) == "kd"
                    and c.mean is not None and c.runs and c.runs[0].teacher is not None]
        for (row, col), cell in cells.items():
            if col != column or row == TEACHER_ROW or not cell.runs or cell.runs[0].teacher is None:
                continue
            if len(kd_cells) == 1 and row_method[row] != "kd" and cell.mean is not None:
                cell.delta_kd = cell.mean - kd_cells[0].mean  # type: ignore[operator]
            notes += _cell_notes(row, column, cell)
        if len(kd_cells) > 1:
            notes.append(f"{column_name(column)}: several kd rows (different settings); no difference to kd shown")
    notes += not_reproducible_notes(dataset)
    rows = sorted({row for row, _ in cells}, key=lambda row: _row_order(row, row_method.get(row, "")))
    if all(col[0] is None for col in columns):
        rows = [row for row in rows if row != TEACHER_ROW]
    return Table(dataset, metric, columns, rows, cells, row_method, notes)


def _cell_notes(row: str, column: Column, cell: Cell) -> list[str]:
    """Things a reader must know about a cell: mixed teacher checkpoints, repeated seeds."""
    notes = []
    checkpoints = sorted({str(r.teacher_checkpoint) for r in cell.runs})
    if len(checkpoints) > 1:
        notes.append(f"{row}, {column_name(column)}: averages runs with {len(checkpoints)} different teacher "
                     f"checkpoints ({', '.join(checkpoints)})")
    seeds = [r.seed for r in cell.runs if r.seed is not None]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        notes.append(f"{row}, {column_name(column)}: seed(s) {', '.join(map(str, repeated))} used by more than "
                     f"one run (copies of one run count twice)")
    return notes


def build_tables(runs: list[RunRecord], metric: str = "best") -> list[Table]:
    """One table per dataset (data.name with its slicing), in name order."""
    if metric not in ("best", "last"):
        raise ValueError(f"metric must be 'best' or 'last', not {metric!r}")
    datasets = sorted({r.dataset for r in runs})
    return [build_table(d, [r for r in runs if r.dataset == d], metric) for d in datasets]


def caption(table: Table) -> str:
    which = ("best test top-1 over the epochs (what the reference code reports)" if table.metric == "best"
             else "test top-1 after the last epoch")
    return (f"Top-1 accuracy (%) on {table.dataset}: {which}. Mean ± sample std over seeds (n runs) when "
            f"repeated; (+x): difference to the kd row of the same column; *: includes incomplete runs "
            f"(no summary.json: numbers from the last logged epoch).")


def render_markdown(table: Table) -> str:
    """The table as Markdown: a heading naming the data, the caption line, the table, its notes."""
    header = ["Method"] + [column_name(c) for c in table.columns]
    lines = [f"## {table.dataset}", "", caption(table), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [table.cells[(row, c)].text() if (row, c) in table.cells else "–" for c in table.columns]
        lines.append("| " + " | ".join([row] + cells) + " |")
    if table.notes:
        lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def write_csv(tables: list[Table], path: Path) -> None:
    """One line per cell (long format): the numbers behind the tables, with the run folders of each cell."""
    fields = ["dataset", "row", "method", "teacher", "student", "metric", "mean", "std", "n", "delta_kd",
              "incomplete", "seeds", "runs"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for table in tables:
            for row in table.rows:
                for column in table.columns:
                    cell = table.cells.get((row, column))
                    if cell is None:
                        continue
                    writer.writerow({
                        "dataset": table.dataset, "row": row, "method": table.row_method.get(row, "teacher"),
                        "teacher": column[0] or "", "student": column[1], "metric": table.metric,
                        "mean": _fmt(cell.mean), "std": _fmt(cell.std), "n": cell.n,
                        "delta_kd": _fmt(cell.delta_kd), "incomplete": int(cell.incomplete),
                        "seeds": " ".join(str(r.seed) for r in cell.runs),
                        "runs": " ".join(str(r.path) for r in cell.runs)})


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"
