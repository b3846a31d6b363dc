"""`pckd report`: turn run directories into the paper's tables (Markdown, CSV) and training curves (PNG)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from pckd.errors import PckdWarning, UserError
from pckd.report.collect import RunRecord, collect_runs
from pckd.report.tables import Table, build_tables, render_markdown, write_csv

PAPER_CSV = "paper.csv"

__all__ = ["RunRecord", "Table", "build_tables", "collect_runs", "render_markdown", "write_csv", "write_report"]


def _preview_figures(runs: list[RunRecord], out_dir: Path, on_problem: Callable[[str], None]) -> list[Path]:
    """Fig. 6 (preview weights per epoch) of every run that recorded a preview history."""
    from pckd.report.preview_plot import (
        HISTORY_JSON,
        plot_preview_history,
        read_history,
    )

    figures = []
    for run in runs:
        if not (run.path / HISTORY_JSON).is_file():
            continue
        try:
            history = read_history(run.path)
        except UserError as exc:
            on_problem(str(exc))
            continue
        name = "_".join(run.path.parts[-2:]).replace(" ", "_")
        title = f"preview weights: {run.method} {run.teacher or ''} -> {run.student} ({run.path.name})"
        figures.append(plot_preview_history(history, out_dir / f"preview_weights-{name}.png", title))
    return figures


def write_report(paths: list[Path], out_dir: Path, metric: str = "best", plots: bool = True,
                 echo: Callable[[str], None] | None = None, published: bool = True) -> Path:
    """Collect the runs under ``paths`` and write ``report.md``, ``report.csv`` and (with matplotlib) the PNG
    curves into ``out_dir``; returns the path of ``report.md``. With ``published``, each table of the PCKD paper
    that the runs measure is shown beside them (measured, paper, difference) and written to ``paper.csv``.
    ``echo`` (e.g. ``print``) also gets the tables' Markdown. Problems with run files become warning lines (and
    a section of the report), never exceptions."""
    out_dir = Path(out_dir)
    problems: list[str] = []

    def on_problem(message: str) -> None:
        problems.append(message)
        warnings.warn(PckdWarning(message), stacklevel=2)

    from pckd.report.probes import collect_probes, render_probe_table

    probes = collect_probes([Path(p) for p in paths], on_problem)
    try:
        runs = collect_runs([Path(p) for p in paths], on_problem)
    except UserError:
        if not probes:
            raise
        runs = []  # probe results alone still make a report
    tables = build_tables(runs, metric)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--output-dir '{out_dir}' is a file; choose a folder, e.g. --output-dir report")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output-dir '{out_dir}' cannot be created ({exc.strerror}); choose another folder") from None
    write_csv(tables, out_dir / "report.csv")
    figures: list[Path] = []
    if plots:
        try:
            from pckd.report.plots import plot_table

            for table in tables:
                figures += plot_table(table, out_dir, on_problem)
            figures += _preview_figures(runs, out_dir, on_problem)
        except ImportError as exc:  # matplotlib is a dependency, but a broken install must not lose the tables
            on_problem(f"no plots: matplotlib could not be imported ({exc})")
    incomplete = sum(not r.complete for r in runs)
    parts = [f"# Report: {len(runs)} run(s), {incomplete} incomplete\n"]
    parts += [render_markdown(table) for table in tables]
    if probes:
        parts.append(render_probe_table(probes))
    (out_dir / PAPER_CSV).unlink(missing_ok=True)  # never a paper.csv left from an earlier report
    if published:
        from pckd.report.paper import compare_published
        from pckd.report.paper_tables import render_paper_markdown, write_paper_csv

        comparisons = compare_published(runs, probes, metric)
        if comparisons:
            write_paper_csv(comparisons, out_dir / PAPER_CSV)
            parts += [render_paper_markdown(c) for c in comparisons]
    if echo is not None:
        echo("\n".join(parts[1:]))
    if figures:
        parts.append("## Curves\n\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figures) + "\n")
    if problems:
        parts.append("## Problems\n\n" + "\n".join(f"- {p}" for p in problems) + "\n")
    report = out_dir / "report.md"
    report.write_text("\n".join(parts))
    return report
