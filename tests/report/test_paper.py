"""The report beside the paper: the shipped published numbers against the spec's Markdown tables, and measured /
paper / Δ cells of hand-built run folders against hand-computed numbers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from pckd.cli import main
from pckd.report import write_report
from pckd.report.paper import load_published

from .test_report import RESNET, make_run

PCKD_ARXIV = "2410.14143v1"

# ---------------------------------------------------------------------------------------------------- the spec


def _spec_table(lines: list[str], heading: str) -> tuple[list[str], list[list[str]]]:
    """Header and body rows of the first Markdown table after the line starting with ``heading``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append([c.strip().replace("**", "") for c in line.strip().strip("|").split("|")])
        elif table:
            break
    return table[0], table[2:]


def _spec_number(text: str) -> float | None:
    """``76.97(2.05)`` -> 76.97 (the parentheses hold |method − KD|); ``NA`` -> None."""
    if text == "NA":
        return None
    match = re.fullmatch(r"(\d+\.\d+)(\(\d+\.\d+\))?", text)
    assert match, f"unexpected cell {text!r} in the spec"
    return float(match.group(1))


@pytest.fixture(scope="module")
def spec_lines(shared_data: Path) -> list[str]:
    path = shared_data.parent / "spec" / "methods.md"
    if not path.is_file():
        pytest.skip(f"spec not found at {path}")
    return path.read_text().splitlines()


def test_published_numbers_equal_the_spec_tables(spec_lines) -> None:
    headings = {"I": "**Table I:", "II": "**Table II:", "III": "**Table III:", "IV": "**Table IV:"}
    tables = {t.table: t for t in load_published() if t.arxiv == PCKD_ARXIV}
    assert sorted(tables) == sorted(headings)
    checked = 0
    for name, heading in headings.items():
        header, body = _spec_table(spec_lines, heading)
        shipped = tables[name]
        assert list(shipped.columns) == header[1:], name
        assert list(shipped.rows) == [row[0] for row in body], name
        for row in body:
            for column, text in zip(header[1:], row[1:]):
                assert shipped.cells[(row[0], column)].published == _spec_number(text), (name, row[0], column)
                checked += 1
    assert checked == 23 * 7 + 22 * 6 + 2 * 10 + 2 * 9


def test_shipped_tables_name_their_source_and_keep_na() -> None:
    tables = {t.table: t for t in load_published() if t.arxiv == PCKD_ARXIV}
    assert sorted(tables) == ["I", "II", "III", "IV"]
    for table in tables.values():
        assert "PCKD" in table.paper and table.heading == f"Table {table.table} of arXiv {PCKD_ARXIV}"
    # NA cells of the paper (read off the PDF's Table I / II)
    assert tables["I"].cells[("FSP", "WRN-40-2→WRN-40-1")].published is None
    assert tables["I"].cells[("LSKD", "VGG13→VGG8")].published is None
    assert tables["II"].cells[("MLD", "ResNet50→VGG8")].published is None
    # the paper's LSKD is not pckd's ls: no method maps to it
    assert tables["I"].cells[("LSKD", "ResNet32x4→ResNet8x4")].method is None
    pckd = tables["I"].cells[("PCKD", "ResNet32x4→ResNet8x4")]
    assert (pckd.method, pckd.variant, pckd.teacher, pckd.student, pckd.published) == (
        "pckd", "full", "resnet32x4", "resnet8x4", 77.14)


# ------------------------------------------------------------------------------------------ measured vs paper


def _markdown_rows(text: str, heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (by first cell) of the Markdown table after ``heading`` in the report."""
    lines = text[text.index(heading):].splitlines()
    table = []
    for line in lines[1:]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif table:
            break
    return table[0], {row[0]: row[1:] for row in table[2:]}


@pytest.fixture
def cifar_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "kd1", "kd", RESNET, "resnet8x4", 1, [70.0, 73.0], teacher_top1=79.5)
    make_run(root, "kd2", "kd", RESNET, "resnet8x4", 2, [74.0, 72.0], teacher_top1=79.5)
    make_run(root, "pckd", "pckd", RESNET, "resnet8x4", 1, [76.0, 77.5], teacher_top1=79.5)
    make_run(root, "wo_kd1", "pckd", RESNET, "resnet8x4", 1, [76.25], teacher_top1=79.5, extra=["pckd.kd_weight=0"])
    make_run(root, "wo_kd2", "pckd", RESNET, "resnet8x4", 2, [76.75], teacher_top1=79.5, extra=["pckd.kd_weight=0"])
    # an ablation (no category alignment) is none of the paper's Table I rows
    make_run(root, "ablation", "pckd", RESNET, "resnet8x4", 3, [60.0], teacher_top1=79.5, extra=["pckd.ca_weight=0"])
    make_run(root, "ls", "ls", RESNET, "resnet8x4", 1, [74.0], teacher_top1=79.5)
    make_run(root, "scratch", "ce", None, "resnet8x4", 1, [71.0, 72.0])
    make_run(root, "fsp", "fsp", ("wrn_40_2", "wrn_40_1"), "wrn_40_1", 1, [72.0], teacher_top1=75.0)
    return root


def test_report_shows_measured_paper_and_difference(cifar_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = write_report([cifar_runs], out, plots=False).read_text()
    header, rows = _markdown_rows(text, "## Beside the paper: Table I")
    # only the pairs with runs, in the paper's order, each as measured | paper | Δ
    assert header == ["Method", "WRN-40-2→WRN-40-1", "paper", "Δ", "ResNet32x4→ResNet8x4", "paper", "Δ"]
    # kd: best epochs 73 and 74 -> mean 73.5, sample std sqrt(2 * 0.5² / 1) = 0.7071; paper 73.33
    assert rows["KD"][3:] == ["73.50 ± 0.71 (n=2)", "73.33", "+0.17"]
    assert rows["Teacher"][3:] == ["79.50 (n=1)", "79.42", "+0.08"]  # one teacher checkpoint
    assert rows["Student"][3:] == ["72.00 (n=1)", "72.50", "-0.50"]  # ce without a teacher, best epoch 72
    assert rows["PCKD"][3:] == ["77.50 (n=1)", "77.14", "+0.36"]
    # kd_weight=0: 76.25 and 76.75 -> 76.5 ± 0.3536; paper 76.89
    assert rows["PCKD (w/o L_KD)"][3:] == ["76.50 ± 0.35 (n=2)", "76.89", "-0.39"]
    assert rows["LSKD †"][3:] == ["–", "74.38", "–"]  # our ls run is not the paper's LSKD
    assert rows["FitNet"][3:] == ["–", "73.50", "–"]  # no run: the published value alone
    assert rows["FSP"][:3] == ["72.00 (n=1)", "NA", "–"]  # the paper's NA stays NA
    assert rows["FSP"][3:] == ["–", "72.62", "–"]
    assert "not shown (no run): WRN-40-2→WRN-16-2, ResNet56→ResNet20" in text
    assert "## Beside the paper: Table II" not in text  # no run of a Table II pair

    with open(out / "paper.csv") as handle:
        lines = {(r["table"], r["row"], r["column"]): r for r in csv.DictReader(handle)}
    per_table = {t: sum(1 for key in lines if key[0] == t) for t in {key[0] for key in lines}}
    # every cell of Table I, measured or not, and of the baselines' tables with a resnet32x4 -> resnet8x4 KD
    # column (WTTM's: 3 rows x 13 pairs, DOT's: 2 x 3); Table II and CTKD's/DIST's tables have no measured cell
    assert per_table == {"I": 23 * 7, "WTTM-CIFAR": 3 * 13, "DOT-CIFAR": 2 * 3}
    kd = lines[("I", "KD", "ResNet32x4→ResNet8x4")]
    assert (kd["measured_mean"], kd["measured_std"], kd["n"], kd["published"], kd["diff"]) == (
        "73.5000", "0.7071", "2", "73.33", "0.1700")
    assert sorted(Path(p).name for p in kd["runs"].split()) == ["kd1", "kd2"]
    fsp = lines[("I", "FSP", "WRN-40-2→WRN-40-1")]
    assert (fsp["measured_mean"], fsp["published"], fsp["diff"]) == ("72.0000", "NA", "")
    pckd = lines[("I", "PCKD", "ResNet32x4→ResNet8x4")]
    assert Path(pckd["runs"]).name == "pckd"  # not the ablation
    assert lines[("I", "MLD", "VGG13→VGG8")]["n"] == "0"


def test_mld_runs_fill_the_papers_mld_row(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "mld", "mld", RESNET, "resnet8x4", 1, [76.5, 77.0], teacher_top1=79.5)
    text = write_report([root], tmp_path / "out", plots=False).read_text()
    _, rows = _markdown_rows(text, "## Beside the paper: Table I")
    assert rows["MLD"] == ["77.00 (n=1)", "77.08", "-0.08"]  # MLD's published ResNet32x4→ResNet8x4: 77.08


def test_last_metric_and_no_published(cifar_runs: Path, tmp_path: Path) -> None:
    text = write_report([cifar_runs], tmp_path / "last", metric="last", plots=False).read_text()
    _, rows = _markdown_rows(text, "## Beside the paper: Table I")
    assert rows["KD"][3:] == ["72.50 ± 0.71 (n=2)", "73.33", "-0.83"]  # last epochs 73 and 72
    out = tmp_path / "plain"
    text = write_report([cifar_runs], out, plots=False, published=False).read_text()
    assert "Beside the paper" not in text and not (out / "paper.csv").exists()


def test_short_runs_and_subsets_are_flagged(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "kd", "kd", RESNET, "resnet8x4", 1, [10.0, 12.0], teacher_top1=79.5, epochs=2,
             extra=["data.train_limit=500"])
    text = write_report([root], tmp_path / "out", plots=False).read_text()
    _, rows = _markdown_rows(text, "## Beside the paper: Table I")
    assert rows["KD"] == ["12.00 (n=1)", "73.33", "-61.33"]
    assert "measured on a subset of the data (cifar100 (train_limit=500))" in text
    assert "runs planned for 2 epoch(s); the paper's CIFAR runs train 240" in text


def test_imagenet_table_top1_and_top5(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    pair = ("torchvision.resnet34", "torchvision.resnet18")
    imagenet = ["data.name=imagefolder", "data.root=/data/imagenet"]
    make_run(root, "kd", "kd", pair, pair[1], 1, [70.0, 71.0], teacher_top1=73.3, extra=imagenet)
    text = write_report([root], tmp_path / "out", plots=False).read_text()
    header, rows = _markdown_rows(text, "## Beside the paper: Table III")
    assert header == ["Method", "Top-1", "paper", "Δ", "Top-5", "paper", "Δ"]
    # make_run's summary records last_top5 = 90.0
    assert rows["KD"] == ["71.00 (n=1)", "70.66", "+0.34", "90.00 (n=1)", "89.88", "+0.12"]
    assert rows["Teacher"][:3] == ["73.30 (n=1)", "73.31", "-0.01"]
    assert rows["MLD"] == ["–", "71.90", "–", "–", "90.55", "–"]  # reproducible (method mld), no run here
    assert "## Beside the paper: Table I\n" not in text


def test_probe_results_fill_table_iv(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    run = make_run(root, "pckd", "pckd", ("resnet110", "resnet20"), "resnet20", 1, [72.0], teacher_top1=74.0)
    for i, (target, top1) in enumerate([("stl10", 68.0), ("stl10", 69.0), ("tiny-imagenet-200", 35.0)]):
        probe = root / f"probe{i}"
        probe.mkdir()
        (probe / "probe.json").write_text(json.dumps({
            "best_top1": top1, "checkpoint": str(run / "last.pt"), "arch": "resnet20",
            "data": {"name": "imagefolder", "root": f"/data/{target}"}}))
    text = write_report([root], tmp_path / "out", plots=False).read_text()
    header, rows = _markdown_rows(text, "## Beside the paper: Table IV")
    assert header == ["Method", "CIFAR-100→STL-10", "paper", "Δ", "CIFAR-100→TinyImageNet", "paper", "Δ"]
    # 68 and 69 -> 68.5 ± 0.7071; paper 68.85
    assert rows["PCKD"] == ["68.50 ± 0.71 (n=2)", "68.85", "-0.35", "35.00 (n=1)", "34.88", "+0.12"]
    assert rows["KD"] == ["–", "62.96", "–", "–", "29.21", "–"]


def test_cli_no_published(cifar_runs: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(cifar_runs), "--output-dir", str(tmp_path / "a"), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "## Beside the paper: Table I" in printed and "paper.csv" in printed
    assert main(["report", str(cifar_runs), "--output-dir", str(tmp_path / "a"), "--no-plots",
                 "--no-published"]) == 0
    printed = capsys.readouterr().out
    assert "Beside the paper" not in printed and "paper.csv" not in printed
    assert not (tmp_path / "a" / "paper.csv").exists()  # the earlier report's file is gone


# ------------------------------------------------------------------------------------ the recent baselines' tables

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods"
# docs/methods/<method>.md lists each release's numbers as "<teacher> -> <student> <top-1>" (transcribed apart
# from the JSON); pair names as the zoo spells them.
_DOC_PAIR = re.compile(r"(\w+)\s+->\s+(\w+)\s+(\d+\.\d+)")


def _doc_numbers(name: str, marker: str) -> dict[tuple[str, str], float]:
    text = (DOCS / f"{name}.md").read_text()
    start = text.index(marker)
    paragraph = text[start:text.find("\n\n", start)].replace("\n", " ")
    return {(t, s): float(v) for t, s, v in _DOC_PAIR.findall(paragraph)}


@pytest.mark.parametrize("table, row, doc, marker", [
    ("CTKD-CIFAR", "KD+CTKD", "ctkd", "Published CIFAR-100 top-1 of KD+CTKD"),
    ("DIST-CIFAR", "DIST", "dist", "published CIFAR-100 numbers"),
    ("WTTM-CIFAR", "WTTM", "wttm", "Published CIFAR-100 top-1 of WTTM"),
    ("DOT-CIFAR", "KD+DOT", "dot", "Published CIFAR-100 top-1 of KD+DOT"),
])
def test_recent_baselines_numbers_equal_the_method_docs(table, row, doc, marker) -> None:
    shipped = {t.table: t for t in load_published()}[table]
    cells = {(c.teacher, c.student): c.published for (r, _), c in shipped.cells.items() if r == row}
    assert cells == _doc_numbers(doc, marker)
    assert shipped.arxiv != PCKD_ARXIV and shipped.source and "README" in shipped.heading


def test_recent_baselines_rows_take_only_runs_of_their_setting(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    make_run(root, "kd", "kd", RESNET, "resnet8x4", 1, [73.0], teacher_top1=79.5)
    make_run(root, "kd_dot1", "kd", RESNET, "resnet8x4", 1, [75.0], teacher_top1=79.5, extra=["train.optimizer=dot"])
    make_run(root, "kd_dot2", "kd", RESNET, "resnet8x4", 2, [76.0], teacher_top1=79.5, extra=["train.optimizer=dot"])
    make_run(root, "ctkd", "ctkd", ("resnet56", "resnet20"), "resnet20", 1, [71.5], teacher_top1=72.3)
    make_run(root, "ctkd_dkd", "ctkd", ("resnet56", "resnet20"), "resnet20", 1, [60.0], teacher_top1=72.3,
             extra=["ctkd.kd_weight=0", "ctkd.dkd_weight=1", "ctkd.ce_weight=1"])
    text = write_report([root], tmp_path / "out", plots=False).read_text()
    header, rows = _markdown_rows(text, "## Beside the paper: DOT (arXiv 2307.08436)")
    assert header == ["Method", "ResNet32x4→ResNet8x4", "paper", "Δ"]
    assert rows["KD"] == ["73.00 (n=1)", "73.33", "-0.33"]  # the plain SGD run only
    assert rows["KD+DOT"] == ["75.50 ± 0.71 (n=2)", "75.12", "+0.38"]  # the two DOT runs: mean 75.5, std 0.7071
    _, rows = _markdown_rows(text, "## Beside the paper: CTKD (arXiv 2211.16231)")
    assert rows["KD+CTKD"][:3] == ["71.50 (n=1)", "71.19", "+0.31"]  # the DKD+CTKD run is not KD+CTKD
    # the PCKD paper's KD cell takes the plain KD run only too: every cell implies train.optimizer sgd
    header, rows = _markdown_rows(text, "## Beside the paper: Table I of arXiv")
    assert header[4] == "ResNet32x4→ResNet8x4" and rows["KD"][3] == "73.00 (n=1)"


def test_sskd_runs_fill_the_sskd_rows_and_its_teacher_stage_is_not_counted_as_epochs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    # 60 teacher-stage epochs + the paper's 240 (configs/cifar100/sskd/e240_step), and AB's 30 + 240
    make_run(root, "sskd", "sskd", RESNET, "resnet8x4", 1, [75.0, 76.0], teacher_top1=79.5, epochs=300)
    make_run(root, "ab", "ab", RESNET, "resnet8x4", 1, [73.0], teacher_top1=79.5, epochs=270)
    text = write_report([root], tmp_path / "out", plots=False).read_text()
    _, rows = _markdown_rows(text, "## Beside the paper: Table I")
    assert rows["SSKD"] == ["76.00 (n=1)", "75.69", "+0.31"]
    assert rows["AB"] == ["73.00 (n=1)", "73.17", "-0.17"]
    assert "runs planned for" not in text  # both main stages are the paper's 240 epochs
    make_run(root, "sskd-short", "sskd", RESNET, "resnet8x4", 2, [70.0], teacher_top1=79.5, epochs=80)
    text = write_report([root], tmp_path / "out2", plots=False).read_text()
    assert "runs planned for 20, 240 epoch(s); the paper's CIFAR runs train 240" in text


def test_imagenet_sskd_run_fills_table_iii(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    pair = ("torchvision.resnet34", "torchvision.resnet18")
    make_run(root, "sskd", "sskd", pair, pair[1], 1, [71.0], teacher_top1=73.3,
             extra=["data.name=imagefolder", "data.root=/data/imagenet"], epochs=160)
    text = write_report([root], tmp_path / "out", plots=False).read_text()
    _, rows = _markdown_rows(text, "## Beside the paper: Table III")
    assert rows["SSKD"] == ["71.00 (n=1)", "71.62", "-0.62", "90.00 (n=1)", "90.67", "-0.67"]
