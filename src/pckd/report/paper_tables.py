"""The report beside the paper: each published table that the runs measure, as Markdown (one row per method of
the paper; for each pair three columns: measured, paper, Δ) and as CSV (one line per published cell)."""

from __future__ import annotations

import csv
from pathlib import Path

from pckd.report.paper import Comparison, TableComparison

NO_RUN = "–"
NA = "NA"


def measured_text(comparison: Comparison) -> str:
    """``73.45 ± 0.21 (n=3)``, ``73.45 (n=1)``, ``–`` without a run; ``*`` marks incomplete runs."""
    if comparison.mean is None:
        return NO_RUN
    mark = "*" if comparison.incomplete else ""
    if comparison.std is None:
        return f"{comparison.mean:.2f} (n=1){mark}"
    return f"{comparison.mean:.2f} ± {comparison.std:.2f} (n={comparison.n}){mark}"


def published_text(comparison: Comparison) -> str:
    return NA if comparison.cell.published is None else f"{comparison.cell.published:.2f}"


def diff_text(comparison: Comparison) -> str:
    return NO_RUN if comparison.diff is None else f"{comparison.diff:+.2f}"


def _shown(comparison: TableComparison) -> list[str]:
    """The pairs (or metrics, targets) to show: those with a measured value; all of a table's when it has few."""
    others = list(comparison.table.other_labels)
    if comparison.table.method_axis == "columns":
        return others  # Tables III and IV: two columns (top-1/top-5, two targets)
    return [o for o in others if comparison.measured(o)]


def render_paper_markdown(comparison: TableComparison) -> str:
    """One published table beside the runs: a heading naming paper and table, a caption, the table, notes."""
    table = comparison.table
    shown = _shown(comparison)
    metric = ("best test top-1 over the epochs" if comparison.metric == "best" else "test top-1 after the last epoch")
    lines = [f"## Beside the paper: {table.heading}", "",
             f"{table.title}. measured: mean ± sample std over the runs (n) of the {metric}; paper: the "
             f"published value (NA where the paper has none); Δ: measured − paper; –: no run. "
             f"Source: {table.source_text}.", ""]
    header = ["Method"]
    for other in shown:
        header += [other, "paper", "Δ"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in table.method_labels:
        label = f"{method} †" if method in table.notes else method
        cells = []
        for other in shown:
            cell = comparison.comparison(method, other)
            cells += [measured_text(cell), published_text(cell), diff_text(cell)]
        lines.append("| " + " | ".join([label] + cells) + " |")
    notes = [f"† {method}: {note}" for method, note in table.notes.items()]
    hidden = [o for o in table.other_labels if o not in shown]
    if hidden:
        notes.append(f"not shown (no run): {', '.join(hidden)}; their published values are in paper.csv")
    notes += comparison.notes
    if any(c.incomplete for c in comparison.cells.values()):
        notes.append("*: includes incomplete runs (no summary.json: numbers from the last logged epoch)")
    lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["paper", "arxiv", "table", "row", "column", "method", "variant", "teacher", "student", "target",
              "metric", "measured_mean", "measured_std", "n", "published", "diff", "incomplete", "runs"]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_paper_csv(comparisons: list[TableComparison], path: Path) -> None:
    """Every published cell of ``comparisons`` (measured or not), one line each; published NA is ``NA``."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for comparison in comparisons:
            table = comparison.table
            for (row, column), cell in comparison.cells.items():
                info = cell.cell
                writer.writerow({
                    "paper": table.paper, "arxiv": table.arxiv, "table": table.table, "row": row, "column": column,
                    "method": info.method or "", "variant": info.variant or "", "teacher": info.teacher or "",
                    "student": info.student or "", "target": info.target or "",
                    "metric": info.metric if info.metric != "top1" else f"top1 ({comparison.metric})",
                    "measured_mean": _fmt(cell.mean), "measured_std": _fmt(cell.std), "n": cell.n,
                    "published": NA if info.published is None else f"{info.published:.2f}",
                    "diff": _fmt(cell.diff), "incomplete": int(cell.incomplete),
                    "runs": " ".join(str(run.path) for run in cell.runs)})
