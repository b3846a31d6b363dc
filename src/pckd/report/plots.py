"""PNG curves of a table's runs: test top-1 against the epoch, and every logged loss term against the step.

One figure of each kind per table column (teacher -> student pair), one line per run, coloured by row (method);
seeds of one row share the colour. matplotlib is imported inside the functions (Agg backend, no display).
"""

from __future__ import annotations

import re
from pathlib import Path

from pckd.report.collect import RunRecord
from pckd.report.tables import TEACHER_ROW, Column, Table, column_name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text.replace("→", "to")).strip("_") or "runs"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never open a window or need a display
    import matplotlib.pyplot as plt

    return plt


def _column_runs(table: Table, column: Column) -> list[tuple[str, list[RunRecord]]]:
    """(row label, runs) of one column, in the table's row order."""
    out = []
    for row in table.rows:
        cell = table.cells.get((row, column))
        if row != TEACHER_ROW and cell is not None and cell.runs:
            out.append((row, cell.runs))
    return out


def plot_accuracy(table: Table, column: Column, path: Path) -> Path | None:
    """Test top-1 vs epoch of every run in ``column``; None when no run has finished an epoch."""
    rows = [(row, runs) for row, runs in _column_runs(table, column) if any(r.epoch_curve for r in runs)]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (row, runs) in enumerate(rows):
        for j, run in enumerate(r for r in runs if r.epoch_curve):
            epochs, top1 = zip(*run.epoch_curve)
            ax.plot(epochs, top1, color=colours[i % len(colours)], alpha=0.85, marker="." if len(epochs) < 30 else None,
                    linestyle="--" if not run.complete else "-", label=row if j == 0 else None)
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"{column_name(column)} ({table.dataset})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_losses(table: Table, column: Column, path: Path) -> Path | None:
    """One panel per logged loss term (train/<term>, plus the total "loss") vs the global step; None when no
    run of the column logged a step."""
    rows = _column_runs(table, column)
    terms = sorted({t for _, runs in rows for r in runs for t in r.loss_curves}, key=lambda t: (t == "loss", t))
    if not terms:
        return None
    plt = _pyplot()
    ncols = min(3, len(terms))
    nrows = -(-len(terms) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.2 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, term in zip(axes.flat, terms):
        for i, (row, runs) in enumerate(rows):
            for j, run in enumerate(r for r in runs if term in r.loss_curves):
                steps, values = zip(*run.loss_curves[term])
                ax.plot(steps, values, color=colours[i % len(colours)], alpha=0.85, linewidth=1,
                        label=row if j == 0 else None)
        ax.set(title=term, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(terms):]:
        ax.set_visible(False)
    fig.suptitle(f"training losses: {column_name(column)} ({table.dataset})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_table(table: Table, out_dir: Path) -> list[Path]:
    """Both figures for every column of ``table`` into ``out_dir``; the paths written."""
    written = []
    for column in table.columns:
        stem = _slug(f"{table.dataset}_{column_name(column)}")
        for kind, plot in (("top1", plot_accuracy), ("losses", plot_losses)):
            path = plot(table, column, Path(out_dir) / f"{kind}_{stem}.png")
            if path is not None:
                written.append(path)
    return written
