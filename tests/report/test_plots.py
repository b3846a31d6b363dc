"""What the report's figures show: loss terms only (not the methods' statistics), one line style per seed, the
teacher as a line, and a legend that covers no curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pckd.report.collect import _loss_curves, read_run
from pckd.report.plots import _seed_label, plot_accuracy, plot_losses
from pckd.report.tables import build_table


def _step(epoch: int, step: int, **values: float) -> dict:
    return {"kind": "step", "epoch": epoch, "step": step, "loss_terms": ["ce", "kd"],
            **{f"train/{k}": v for k, v in values.items()}}


def test_statistics_logged_beside_the_losses_are_not_plotted_as_losses() -> None:
    records = [_step(1, 2, ce=2.0, kd=1.0, loss=3.0, threshold=0.4, hard_fraction=0.1, top1=20.0),
               _step(1, 4, ce=1.5, kd=0.5, loss=2.0, threshold=0.5, hard_fraction=0.2, top1=30.0),
               _step(2, 2, ce=1.0, kd=0.25, loss=1.25, threshold=0.6, hard_fraction=0.3, top1=40.0)]
    curves = _loss_curves(records)
    assert sorted(curves) == ["ce", "kd", "loss"]
    assert curves["loss"] == [(2, 3.0), (4, 2.0), (6, 1.25)]  # global step = (epoch - 1) * steps per epoch + step


def test_runs_logged_before_loss_terms_were_recorded_keep_every_value() -> None:
    records = [{"kind": "step", "epoch": 1, "step": 1, "train/ce": 1.0, "train/z_s": 5.0, "train/top1": 3.0}]
    assert sorted(_loss_curves(records)) == ["ce", "z_s"]


def _fake_run(root: Path, name: str, seed: int, curve: list[float], teacher_top1: float) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"method: kd\nstudent:\n  arch: resnet8\nteacher:\n  arch: resnet20\n  checkpoint: t.pt\n"
        f"data:\n  name: digits\ntrain:\n  seed: {seed}\n  epochs: {len(curve)}\n")
    lines = [{"kind": "teacher", "top1": teacher_top1}]
    for epoch, top1 in enumerate(curve, start=1):
        lines.append(_step(epoch, 1, ce=1.0 / epoch, kd=0.1 / epoch, loss=1.1 / epoch, threshold=0.5))
        lines.append({"kind": "epoch", "epoch": epoch, "test/top1": top1, "test/top5": 90.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "summary.json").write_text(json.dumps({"best_top1": max(curve), "final_top1": curve[-1],
                                                  "final_top5": 90.0, "epochs": len(curve),
                                                  "teacher": "resnet20", "teacher_top1": teacher_top1}))
    return run


def test_figures_label_seeds_and_draw_the_teacher(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    runs = [read_run(_fake_run(tmp_path, f"kd{s}", s, [10.0 + s, 20.0 + s, 30.0], 55.0)) for s in (0, 1)]
    assert all(r is not None for r in runs)
    assert [_seed_label("kd", r, True) for r in runs] == ["kd, seed 0", "kd, seed 1"]  # type: ignore[arg-type]
    table = build_table(runs[0].dataset, [r for r in runs if r is not None], metric="best")  # type: ignore[union-attr]
    column = table.columns[0]
    captured: dict = {}
    original = plt.Figure.savefig

    def keep(fig, *args, **kwargs):  # inspect the figure as it is written
        captured[len(captured)] = fig
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = keep  # type: ignore[method-assign]
    try:
        assert plot_accuracy(table, column, tmp_path / "top1.png") is not None
        assert plot_losses(table, column, tmp_path / "losses.png") is not None
    finally:
        plt.Figure.savefig = original  # type: ignore[method-assign]
    top1_ax = captured[0].axes[0]
    labels = [line.get_label() for line in top1_ax.get_lines()]
    assert labels == ["kd, seed 0", "kd, seed 1", "teacher (55.00%)"]
    styles = {line.get_label(): line.get_linestyle() for line in top1_ax.get_lines()}
    assert styles["kd, seed 0"] != styles["kd, seed 1"]
    legend = top1_ax.get_legend()
    assert legend.get_bbox_to_anchor().x0 >= top1_ax.get_window_extent().x1  # outside the axes: covers no curve
    loss_titles = [ax.get_title() for ax in captured[1].axes if ax.get_visible()]
    assert loss_titles == ["total loss", "ce (weighted)", "kd (weighted)"]
    assert all(ax.get_yscale() == "log" for ax in captured[1].axes if ax.get_visible())
