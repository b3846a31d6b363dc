"""`pckd report`: synthetic run directories written in the trainer's exact formats (config.yaml from the resolved
config, metrics.jsonl and summary.json through RunLogger), checked against hand-computed cells; one real run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from pckd.config import load_config, to_yaml
from pckd.engine.run_logger import RunLogger
from pckd.errors import PckdWarning, UserError
from pckd.report import build_tables, collect_runs, render_markdown, write_report

RESNET = ("resnet32x4", "resnet8x4")
WRN = ("wrn_40_2", "wrn_16_2")


def make_run(root: Path, name: str, method: str, pair: tuple[str, str] | None, student: str, seed: int,
             tops: list[float], teacher_top1: float | None = None, complete: bool = True, epochs: int | None = None,
             extra: list[str] | None = None) -> Path:
    """A run directory as the trainer leaves it: config.yaml, metrics.jsonl (teacher, step and epoch records),
    and, when ``complete``, summary.json with the trainer's keys. ``tops``: test top-1 of each logged epoch."""
    run_dir = root / name
    epochs = epochs or 240  # planned; `tops` may stop earlier (an unfinished run)
    overrides = [f"method={method}", f"student.arch={student}", "data.name=cifar100", f"train.seed={seed}",
                 f"train.epochs={epochs}", f"output_dir={run_dir}"] + (extra or [])
    if pair is not None:
        overrides += [f"teacher.arch={pair[0]}", f"teacher.checkpoint=/teachers/{pair[0]}/best.pt"]
    cfg = load_config(None, overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    logger = RunLogger(run_dir, tensorboard=False)
    if pair is not None:
        logger.log({"kind": "teacher", "top1": teacher_top1, "top5": 95.0, "loss": 0.9, "n": 10000})
    terms = {"ce": 2.0, method: 1.0} if method != "ce" else {"ce": 2.0}
    for epoch, top1 in enumerate(tops, start=1):
        for step in (50, 100):  # two log intervals per epoch of 100 steps
            losses = {f"train/{k}": v / (epoch + step / 100) for k, v in terms.items()}
            logger.log({"kind": "step", "epoch": epoch, "step": step, "lr": 0.05, "img_per_s": 1000.0, **losses,
                        "train/loss": sum(losses.values()), "train/top1": 50.0, "train/top5": 80.0}, step=step)
        logger.log({"kind": "epoch", "epoch": epoch, "lr": 0.05, "epoch_time_s": 1.0, "img_per_s": 1000.0,
                    "peak_memory_mb": 100.0, "skipped_steps": 0, "train/ce": 1.0, "train/loss": 1.0,
                    "train/top1": 50.0, "train/top5": 80.0, "test/top1": top1, "test/top5": 90.0,
                    "test/loss": 1.0, "best/top1": max(tops[:epoch])}, step=epoch)
    if complete:
        best = max(tops)
        logger.write_json("summary.json", {
            "method": method, "student": student, "teacher": pair[0] if pair else None,
            "teacher_top1": teacher_top1, "epochs": epochs, "best_top1": best, "best_epoch": tops.index(best) + 1,
            "last_top1": tops[-1], "last_top5": 90.0, "wall_time_s": 10.0, "student_parameters": 1000,
            "extra_parameters": 0, "run_dir": str(run_dir)})
    logger.close()
    return run_dir


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """kd x3 seeds and pckd x2 on resnet32x4->resnet8x4, a scratch resnet8x4, kd and an unfinished pckd on
    wrn_40_2->wrn_16_2, a dkd run whose summary.json is corrupt and whose metrics.jsonl has a cut last line,
    and a folder with only an unreadable metrics.jsonl."""
    root = tmp_path_factory.mktemp("runs")
    for seed, tops in enumerate([[70.0, 73.0, 72.5], [71.0, 74.0, 73.8], [72.0, 75.5, 75.0]]):
        make_run(root / "kd", f"r-{seed}", "kd", RESNET, "resnet8x4", seed, tops, teacher_top1=79.42)
    for seed, tops in enumerate([[74.0, 76.0, 75.9], [75.0, 77.0, 76.6]]):
        make_run(root / "pckd", f"r-{seed}", "pckd", RESNET, "resnet8x4", seed, tops, teacher_top1=79.42)
    make_run(root / "ce", "resnet8x4", "ce", None, "resnet8x4", 0, [70.0, 72.5, 72.0])
    make_run(root / "kd", "w-0", "kd", WRN, "wrn_16_2", 0, [70.0, 74.9, 74.5], teacher_top1=75.61)
    make_run(root / "pckd", "w-0", "pckd", WRN, "wrn_16_2", 0, [60.0, 66.0, 64.0], teacher_top1=75.61,
             complete=False)
    dkd = make_run(root / "dkd", "r-0", "dkd", RESNET, "resnet8x4", 0, [71.0, 74.5], teacher_top1=79.42)
    (dkd / "summary.json").write_text('{"method": "dkd", "best_top1": 7')  # cut mid-write
    with open(dkd / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "epoch", "epoch": 3, "test/t')
    (root / "broken").mkdir()
    (root / "broken" / "metrics.jsonl").write_text("not json\n")
    return root


def _collect(root: Path) -> tuple[list, list[str]]:
    problems: list[str] = []
    return collect_runs([root], problems.append), problems


def _cells(table) -> dict[tuple[str, tuple], str]:
    return {(row, col): cell.text() for (row, col), cell in table.cells.items()}


def test_collect_reads_each_run_and_reports_corrupt_files(runs_root):
    runs, problems = _collect(runs_root)
    assert len(runs) == 9  # the folder with nothing readable is skipped
    by_path = {r.path.relative_to(runs_root.resolve()).as_posix(): r for r in runs}
    kd = by_path["kd/r-1"]
    assert (kd.method, kd.teacher, kd.student, kd.seed, kd.dataset) == ("kd", "resnet32x4", "resnet8x4", 1, "cifar100")
    assert (kd.best_top1, kd.last_top1, kd.teacher_top1, kd.complete) == (74.0, 73.8, 79.42, True)
    assert kd.epoch_curve == [(1, 71.0), (2, 74.0), (3, 73.8)]
    # Two logs per 100-step epoch: global steps 50, 100, 150, ...; kd's term is named after the method.
    assert [s for s, _ in kd.loss_curves["kd"]] == [50, 100, 150, 200, 250, 300]
    assert kd.loss_curves["ce"][0] == (50, pytest.approx(2.0 / 1.5))
    assert set(kd.loss_curves) == {"ce", "kd", "loss"}
    pckd = by_path["pckd/w-0"]  # unfinished: numbers of the last logged epoch, teacher from its record
    assert (pckd.complete, pckd.best_top1, pckd.last_top1, pckd.epochs_done, pckd.epochs_planned) == \
        (False, 66.0, 64.0, 3, 240)
    assert (pckd.teacher, pckd.teacher_top1) == ("wrn_40_2", 75.61)
    dkd = by_path["dkd/r-0"]
    assert (dkd.complete, dkd.best_top1, dkd.last_top1) == (False, 74.5, 74.5)
    assert by_path["ce/resnet8x4"].teacher is None
    text = "\n".join(problems)
    assert str(runs_root.resolve() / "dkd" / "r-0" / "summary.json") in text
    assert f"{runs_root.resolve() / 'dkd' / 'r-0' / 'metrics.jsonl'}: skipped 1 unreadable line(s) (line" in text
    assert str(runs_root.resolve() / "broken") in text and "run skipped" in text


def test_table_cells_match_hand_computed_values(runs_root):
    runs, _ = _collect(runs_root)
    (table,) = build_tables(runs, "best")
    assert table.columns == [RESNET, WRN]
    assert table.rows == ["Teacher", "Student (ce)", "kd", "dkd", "pckd"]
    cells = _cells(table)
    # kd best: 73.0, 74.0, 75.5 -> mean 74.1667; deviations -1.1667, -0.1667, 1.3333 -> sample var 3.16667/2.
    assert cells[("kd", RESNET)] == "74.17 ± 1.26 (n=3)"
    assert table.cells[("kd", RESNET)].std == pytest.approx(math.sqrt(3.1666667 / 2), abs=1e-6)
    # pckd best: 76.0, 77.0 -> 76.5 ± 0.7071; minus kd's 74.1667 = +2.3333.
    assert cells[("pckd", RESNET)] == "76.50 ± 0.71 (n=2) (+2.33)"
    assert table.cells[("pckd", RESNET)].delta_kd == pytest.approx(76.5 - 74.1666667, abs=1e-6)
    assert cells[("dkd", RESNET)] == "74.50 (+0.33)*"  # corrupt summary: incomplete, from its epoch records
    assert cells[("Teacher", RESNET)] == "79.42"  # one teacher checkpoint: counted once
    assert cells[("Student (ce)", RESNET)] == "72.50"
    assert cells[("kd", WRN)] == "74.90"
    assert cells[("pckd", WRN)] == "66.00 (-8.90)*"
    assert cells[("Teacher", WRN)] == "75.61"
    assert ("Student (ce)", WRN) not in table.cells  # no scratch wrn_16_2 run
    markdown = render_markdown(table)
    assert "| Method | resnet32x4 → resnet8x4 | wrn_40_2 → wrn_16_2 |" in markdown
    assert "| Student (ce) | 72.50 | – |" in markdown
    assert "best test top-1 over the epochs" in markdown


def test_last_metric_and_csv(runs_root, tmp_path):
    runs, _ = _collect(runs_root)
    (table,) = build_tables(runs, "last")
    cells = _cells(table)
    # kd last: 72.5, 73.8, 75.0 -> 73.7667; deviations -1.2667, 0.0333, 1.2333 -> sample var 3.12667/2.
    assert cells[("kd", RESNET)] == "73.77 ± 1.25 (n=3)"
    assert cells[("pckd", RESNET)] == "76.25 ± 0.49 (n=2) (+2.48)"  # 75.9, 76.6
    assert cells[("pckd", WRN)] == "64.00 (-10.50)*"
    assert "after the last epoch" in render_markdown(table)
    with pytest.warns(PckdWarning):
        report = write_report([runs_root], tmp_path / "out", metric="last", plots=False)
    with open(report.with_suffix(".csv"), newline="") as handle:
        rows = {(r["row"], r["teacher"], r["student"]): r for r in csv.DictReader(handle)}
    kd = rows[("kd", "resnet32x4", "resnet8x4")]
    assert (kd["mean"], kd["std"], kd["n"], kd["seeds"], kd["delta_kd"]) == ("73.7667", "1.2503", "3", "0 1 2", "")
    assert rows[("pckd", "wrn_40_2", "wrn_16_2")]["incomplete"] == "1"
    assert rows[("Teacher", "resnet32x4", "resnet8x4")]["mean"] == "79.4200"
    text = report.read_text()
    assert "## Problems" in text and "summary.json: unreadable" in text
    assert not list((tmp_path / "out").glob("*.png"))


def test_runs_with_other_hyper_parameters_get_their_own_row(tmp_path):
    make_run(tmp_path, "t4", "kd", RESNET, "resnet8x4", 0, [70.0], teacher_top1=79.0)
    make_run(tmp_path, "t4b", "kd", RESNET, "resnet8x4", 0, [72.0], teacher_top1=79.0)
    make_run(tmp_path, "t2", "kd", RESNET, "resnet8x4", 1, [60.0], teacher_top1=79.0, extra=["kd.temperature=2"])
    problems: list[str] = []
    (table,) = build_tables(collect_runs([tmp_path], problems.append), "best")
    cells = _cells(table)
    assert cells[("kd [temperature=4.0]", RESNET)] == "71.00 ± 1.41 (n=2)"
    assert cells[("kd [temperature=2.0]", RESNET)] == "60.00"
    assert any("seed(s) 0 used by more than one run" in note for note in table.notes)
    assert any("several kd rows" in note for note in table.notes)


def test_missing_path_and_empty_folder_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        collect_runs([tmp_path / "nope"])
    with pytest.raises(UserError, match="no run directory"):
        collect_runs([tmp_path])


def test_real_digits_run_is_reported_with_plots(tmp_path):
    from pckd.engine.trainer import train

    run_dir = tmp_path / "runs" / "ce-resnet8"
    cfg = load_config(None, [
        "method=ce", "student.arch=resnet8", "data.name=digits", "data.train_limit=64", "data.test_limit=40",
        "train.epochs=1", "train.batch_size=16", "train.device=cpu", "train.progress=false",
        f"output_dir={run_dir}"])
    summary = train(cfg)
    echoed: list[str] = []
    report = write_report([tmp_path / "runs"], tmp_path / "report", metric="best", echo=echoed.append)
    expected = f"| Student (ce) | {summary['best_top1']:.2f} |"
    assert expected in report.read_text() and expected in echoed[0]
    assert "| Method | resnet8 |" in echoed[0]
    assert "## digits (train_limit=64, test_limit=40)" in echoed[0]
    pytest.importorskip("matplotlib")
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["losses_digits_train_limit_64_test_limit_40_resnet8.png",
                    "top1_digits_train_limit_64_test_limit_40_resnet8.png"]
    assert all((tmp_path / "report" / name).stat().st_size > 1000 for name in pngs)
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1


def test_cli_report_missing_path_is_one_line_exit_2(tmp_path, capsys) -> None:
    from pckd.cli import main

    assert main(["report", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pckd: error: ") and "nowhere" in err[0]


def test_paper_lskd_rows_are_listed_as_not_reproducible_and_ls_keeps_its_own_row(tmp_path):
    make_run(tmp_path, "ls", "ls", RESNET, "resnet8x4", 0, [70.0, 71.5], teacher_top1=79.0)
    problems: list[str] = []
    (table,) = build_tables(collect_runs([tmp_path], problems.append), "best")
    assert table.rows == ["Teacher", "ls"] and table.row_method["ls"] == "ls"
    text = render_markdown(table)
    (line,) = [n for n in text.splitlines() if "LSKD" in n]
    for fragment in ("not reproducible", "no public code or equations", "Li, Cheng and Han", "TCSVT 2024",
                     "Tables I and II", "`ls`"):
        assert fragment in line, fragment


def test_no_lskd_note_under_other_datasets(tmp_path):
    make_run(tmp_path, "kd", "kd", RESNET, "resnet8x4", 0, [70.0], teacher_top1=79.0, extra=["data.name=cifar10"])
    (table,) = build_tables(collect_runs([tmp_path], lambda m: None), "best")
    assert table.dataset == "cifar10" and not any("LSKD" in n for n in table.notes)
