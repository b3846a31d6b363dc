"""`pckd report --plot sensitivity KEY` (Fig. 5): curves of top-1 against one config key, checked against
means and standard deviations computed by hand on synthetic run folders written in the trainer's formats."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from pckd.cli import main
from pckd.errors import UserError
from pckd.report import collect_runs
from pckd.report.sensitivity import sensitivity_curves

from .test_report import make_run

WRN = ("wrn_40_2", "wrn_16_2")
RES = ("resnet110", "resnet20")
# best top-1 of each run: {pair: {fa_weight: [seed 0, seed 1, seed 2]}}; 20 is the default point
FA = {WRN: {10: [75.0, 75.4, 75.2], 20: [76.0, 76.6, 76.3], 30: [75.5, 75.9, 75.1]},
      RES: {10: [71.0, 71.2, 71.6], 20: [72.0, 72.4, 72.2], 30: [71.9, 71.5, 71.4]}}


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fig. 5 style sweep: per pair, fa_weight in {10, 20 (default), 30} and ccc_weight in {0.01 (moved),
    0.05 (default)}, 3 seeds; plus one unfinished run at fa_weight=30, seed 3 of the wrn pair."""
    root = tmp_path_factory.mktemp("fig5")
    for pair, by_value in FA.items():
        for fa, tops in by_value.items():
            for seed, top in enumerate(tops):
                extra = [] if fa == 20 else [f"pckd.fa_weight={fa}"]
                make_run(root, f"{pair[1]}/fa{fa}-s{seed}", "pckd", pair, pair[1], seed, [top - 1, top],
                         teacher_top1=75.0, extra=extra)
        for seed in range(3):  # the CCC axis: another key moved, so these runs are on no fa_weight curve
            make_run(root, f"{pair[1]}/ccc0.01-s{seed}", "pckd", pair, pair[1], seed, [60.0, 61.0 + seed],
                     teacher_top1=75.0, extra=["pckd.ccc_weight=0.01"])
    make_run(root, "wrn_16_2/fa30-s3", "pckd", WRN, "wrn_16_2", 3, [70.0, 80.0], teacher_top1=75.0,
             extra=["pckd.fa_weight=30"], complete=False)
    return root


@pytest.fixture(scope="module")
def runs(sweep_root: Path) -> list:
    return collect_runs([sweep_root], on_problem=lambda m: None)


def test_curves_hold_the_hand_computed_means_and_stds(runs: list) -> None:
    curves = sensitivity_curves(runs, "pckd.fa_weight")
    assert [c.label for c in curves] == ["resnet110 → resnet20", "wrn_40_2 → wrn_16_2"]
    for curve, pair in zip(curves, (RES, WRN)):
        assert [p.value for p in curve.points] == [10.0, 20.0, 30.0]
        for point in curve.points:
            tops = FA[pair][int(point.value)] + ([80.0] if pair == WRN and point.value == 30 else [])
            mean = sum(tops) / len(tops)
            std = math.sqrt(sum((t - mean) ** 2 for t in tops) / (len(tops) - 1))
            assert point.mean == pytest.approx(mean) and point.std == pytest.approx(std)
            assert point.incomplete == (pair == WRN and point.value == 30)


def test_the_default_point_is_shared_by_every_axis(runs: list) -> None:
    curves = sensitivity_curves(runs, "pckd.ccc_weight")
    wrn = next(c for c in curves if c.label.startswith("wrn"))
    assert [p.value for p in wrn.points] == [0.01, 0.05]
    assert wrn.points[1].top1 == FA[WRN][20]  # the fa=20 runs (nothing moved) are the ccc=0.05 point
    assert wrn.points[0].top1 == [61.0, 62.0, 63.0]


def test_a_seed_counted_twice_is_noted(runs: list, tmp_path: Path) -> None:
    copy = make_run(tmp_path, "copy", "pckd", RES, "resnet20", 0, [70.0, 71.0], teacher_top1=75.0,
                    extra=["pckd.fa_weight=10"])
    curves = sensitivity_curves([*runs, *collect_runs([copy], on_problem=lambda m: None)], "pckd.fa_weight")
    note = "resnet110 → resnet20, 10: seed(s) 0 used by more than one run (copies of one run count twice)"
    assert curves[0].notes() == [note]
    assert curves[1].notes() == []


def test_last_epoch_metric(runs: list) -> None:
    curves = sensitivity_curves(runs, "pckd.fa_weight", "last")
    assert curves[0].points[0].top1 == FA[RES][10]  # make_run's last epoch is the best one here


def test_keys_without_a_curve_are_one_line(runs: list) -> None:
    with pytest.raises(UserError, match=r"no run's config\.yaml has the key 'pckd\.fa_wieght'.*keys that vary across "
                                        r"these runs: pckd\.ccc_weight, pckd\.fa_weight"):
        sensitivity_curves(runs, "pckd.fa_wieght")
    with pytest.raises(UserError, match=r"no two finished runs differ only in 'train\.lr'"):
        sensitivity_curves(runs, "train.lr")


def test_cli_writes_png_csv_and_a_report_section(sweep_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["report", str(sweep_root), "--output-dir", str(out), "--no-plots",
                 "--plot", "sensitivity", "pckd.fa_weight", "--plot", "sensitivity", "pckd.ccc_weight"]) == 0
    png = out / "sensitivity_pckd.fa_weight.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "sensitivity_pckd.ccc_weight.png").exists()
    with open(out / "sensitivity_pckd.fa_weight.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and rows[0]["curve"] == "resnet110 → resnet20" and rows[0]["value"] == "10.0"
    assert float(rows[0]["mean"]) == pytest.approx(sum(FA[RES][10]) / 3) and rows[0]["n"] == "3"
    report = (out / "report.md").read_text()
    assert "## Sensitivity to `pckd.fa_weight`" in report and "![sensitivity_pckd.fa_weight](sensitivity_pckd.fa_weight.png)" in report
    assert "| wrn_40_2 → wrn_16_2 | 30 | " in report and "| 4 |" in report  # 3 seeds + the unfinished run
    capsys.readouterr()
    assert main(["report", str(sweep_root), "--output-dir", str(out), "--plot", "scatter", "x"]) == 2
    assert "unknown plot 'scatter'; available: sensitivity" in capsys.readouterr().err
