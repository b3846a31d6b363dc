"""Issue 13's loop on a fresh machine, with only the teacher archive reachable (a loopback server): fetch the
published teachers, sweep Table I's configs with a tiny override set, and `pckd report` prints Table I with the
measured and the published columns side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from pckd.cli import main

from ..teachers.test_fetch import Server, _archive

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.train_limit=128", "data.test_limit=100", "train.epochs=1", "train.batch_size=32", "train.progress=false",
        "train.device=cpu", "train.eval_teacher=false"]


@pytest.mark.slow
def test_fetch_all_then_sweep_table1_then_report_beside_the_paper(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        small_registry: None) -> None:
    server = Server(_archive())
    try:
        monkeypatch.setenv("PCKD_TEACHERS_URL", server.url)
        monkeypatch.setenv("PCKD_HOME", str(tmp_path / "home"))
        assert main(["teachers", "fetch", "all", "--data-root", str(tmp_path / "none")]) == 0
    finally:
        server.close()
    # Table I's configs of the resnet56 -> resnet20 column (the teachers the test archive holds), as shipped:
    # their teacher.checkpoint is zoo:resnet56.
    spec = tmp_path / "table1_tiny.yaml"
    spec.write_text(f"configs: ['{ROOT}/configs/cifar100/{{kd,pckd}}/resnet56-resnet20.yaml']\n"
                    f"seeds: [0]\noutput_root: {tmp_path / 'runs'}\nretries: 0\nexecutor: local\n")
    assert main(["sweep", str(spec), f"data.root={shared_data}", *TINY]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "report")]) == 0
    text = capsys.readouterr().out
    beside = text[text.index("Beside the paper: Table I"):]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in beside.splitlines() if line.startswith("| "))}
    assert rows["Method"] == ["ResNet56→ResNet20", "paper", "Δ"]
    for method, published in (("KD", 70.66), ("PCKD", 72.21), ("Teacher", 72.34)):
        measured, paper, delta = rows[method]
        assert float(paper) == published
        if method != "Teacher":  # one tiny run each, measured beside the published value
            assert measured.endswith("(n=1)")
            assert float(delta) == pytest.approx(float(measured.split()[0]) - published, abs=0.011)
    assert rows["FitNet"] == ["–", "69.21", "–"]  # a row of the table without runs keeps its published value
