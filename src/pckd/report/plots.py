"""PNG curves of a table's runs: test top-1 against the epoch, and every logged loss term against the step.

One figure of each kind per table column (teacher -> student pair), one line per run: one colour per row
(method), one line style per seed. matplotlib is imported inside the functions (Agg backend, no display).
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


_SEED_STYLES = ("-", "--", ":", "-.")


def _seed_label(row: str, run: RunRecord, several: bool) -> str:
    """Legend text of one run: the row, its seed when the row has several, and whether it is unfinished."""
    label = f"{row}, seed {run.seed}" if several and run.seed is not None else row
    return label if run.complete else f"{label} (unfinished)"


def _teacher_top1(rows: list[tuple[str, list[RunRecord]]]) -> float | None:
    """The teacher's test top-1 of the column (the same file for every run of a column), if any run logged it."""
    values = [r.teacher_top1 for _, runs in rows for r in runs if r.teacher_top1 is not None]
    return values[0] if values else None


def plot_accuracy(table: Table, column: Column, path: Path) -> Path | None:
    """Test top-1 vs epoch of every run in ``column`` (one colour per row, one line style per seed) with the
    teacher's top-1 as a horizontal line; None when no run has finished an epoch."""
    rows = [(row, [r for r in runs if r.epoch_curve]) for row, runs in _column_runs(table, column)]
    rows = [(row, runs) for row, runs in rows if runs]
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (row, runs) in enumerate(rows):
        for j, run in enumerate(runs):
            epochs, top1 = zip(*run.epoch_curve)
            ax.plot(epochs, top1, color=colours[i % len(colours)], linestyle=_SEED_STYLES[j % len(_SEED_STYLES)],
                    alpha=0.9 if run.complete else 0.5, marker="." if len(epochs) < 30 else None,
                    label=_seed_label(row, run, len(runs) > 1))
    teacher = _teacher_top1(rows)
    if teacher is not None:
        ax.axhline(teacher, color="black", linewidth=1, linestyle=(0, (4, 2)), label=f"teacher ({teacher:.2f}%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"test accuracy: {column_name(column)} on {table.dataset}")
    ax.grid(alpha=0.3)
    # Outside the axes, so the legend never covers a curve.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _term_title(term: str) -> str:
    return "total loss" if term == "loss" else f"{term} (weighted)"


def plot_losses(table: Table, column: Column, path: Path) -> Path | None:
    """One panel per loss term, each already multiplied by its weight as it enters the total, plus the total,
    against the global step; log scale where a panel's values are all positive. None when no run of the column
    logged a step."""
    rows = _column_runs(table, column)
    terms = sorted({t for _, runs in rows for r in runs for t in r.loss_curves}, key=lambda t: (t != "loss", t))
    if not terms:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    ncols = min(3, len(terms))
    nrows = -(-len(terms) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles: dict[str, object] = {}
    for ax, term in zip(axes.flat, terms):
        positive = True
        for i, (row, runs) in enumerate(rows):
            with_term = [r for r in runs if term in r.loss_curves]
            for j, run in enumerate(with_term):
                steps, values = zip(*run.loss_curves[term])
                positive = positive and min(values) > 0
                (line,) = ax.plot(steps, values, color=colours[i % len(colours)], linewidth=1,
                                  linestyle=_SEED_STYLES[j % len(_SEED_STYLES)], alpha=0.9 if run.complete else 0.5)
                handles.setdefault(_seed_label(row, run, len(with_term) > 1), line)
        if positive:
            ax.set_yscale("log")  # totals and small terms both readable
            low, high = ax.get_ylim()
            crowded = high / max(low, 1e-300) > 10  # over a decade: label only 1, 2 and 5 times a power of ten
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 20, not 2 x 10^1
            ax.yaxis.set_minor_formatter(FuncFormatter(
                lambda v, _, crowded=crowded: f"{v:g}" if not crowded or f"{v:e}"[0] in "125" else ""))
        ax.set(title=_term_title(term), xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(terms):]:
        ax.set_visible(False)
    fig.suptitle(f"training losses: {column_name(column)} on {table.dataset}; each term as added to the total")
    fig.legend(list(handles.values()), list(handles), fontsize="small", loc="lower center",
               ncol=min(4, len(handles)), bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(handles) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_table(table: Table, out_dir: Path, on_problem: Callable[[str], None] | None = None) -> list[Path]:
    """Both figures for every column of ``table`` into ``out_dir``; the paths written. A figure matplotlib
    cannot draw (values of absurd size in a tampered metrics.jsonl) is left out and reported to ``on_problem``."""
    written = []
    for column in table.columns:
        stem = _slug(f"{table.dataset}_{column_name(column)}")
        for kind, plot in (("top1", plot_accuracy), ("losses", plot_losses)):
            target = Path(out_dir) / f"{kind}_{stem}.png"
            try:
                path = plot(table, column, target)
            except (ValueError, OverflowError, MemoryError) as exc:  # e.g. ticks over a range of 1e308
                _pyplot().close("all")
                if on_problem is None:
                    raise
                on_problem(f"no figure {target.name}: its values cannot be drawn ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:120]}); check the runs' metrics.jsonl")
                continue
            if path is not None:
                written.append(path)
    return written
