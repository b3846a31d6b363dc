"""The run folder: `overwrite=true` removes exactly what an earlier run wrote, a run holds the folder's lock, an
early failure never leaves a dead end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pckd.config import load_config
from pckd.engine.trainer import Trainer
from pckd.errors import UserError
from pckd.run_folder import MANIFEST, RunLock, written_by_pckd


def _cfg(run_dir: Path, *extra: str, method: str = "ce", teacher: Path | None = None):
    args = [f"method={method}", "student.arch=resnet8", "data.name=digits", "data.train_limit=32",
            "data.test_limit=16", "train.epochs=1", "train.batch_size=16", "train.device=cpu",
            "train.progress=false", "train.eval_teacher=false", f"output_dir={run_dir}", *extra]
    if teacher is not None:
        args += ["teacher.arch=resnet8", f"teacher.checkpoint={teacher}"]
    return load_config(None, args)


def test_overwrite_removes_what_the_pckd_run_wrote_and_keeps_user_files(tmp_path: Path, random_teacher: Path) -> None:
    run = tmp_path / "run"
    Trainer(_cfg(run, method="pckd", teacher=random_teacher)).fit()
    written = set(json.loads((run / MANIFEST).read_text())["files"])
    assert {"preview_records.csv", "preview_history.json", "config.yaml", "last.pt", "summary.json"} <= written
    (run / "notes.txt").write_text("my notes")
    (run / "analysis").mkdir()
    (run / "analysis" / "mine.png").write_bytes(b"png")

    Trainer(_cfg(run, "overwrite=true", method="kd", teacher=random_teacher)).fit()
    assert not (run / "preview_records.csv").exists() and not (run / "preview_history.json").exists()
    assert (run / "notes.txt").read_text() == "my notes" and (run / "analysis" / "mine.png").exists()
    assert "kd" in (run / "config.yaml").read_text()
    assert "preview_records.csv" not in json.loads((run / MANIFEST).read_text())["files"]


def test_overwrite_of_a_folder_from_before_the_manifest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "summary.json", "preview_weights.png", "preview_history.json", "last.pt"):
        (run / name).write_text("old")
    (run / ".last.pt.tmp-123").write_text("half")  # left by a kill -9
    (run / "mine.csv").write_text("keep")
    assert sorted(written_by_pckd(run, ["preview_history.json"])) == [
        ".last.pt.tmp-123", "config.yaml", "last.pt", "preview_history.json", "preview_weights.png", "summary.json"]
    Trainer(_cfg(run, "overwrite=true")).fit()
    assert not (run / "preview_weights.png").exists() and not (run / ".last.pt.tmp-123").exists()
    assert (run / "mine.csv").read_text() == "keep"


def test_overwrite_never_follows_a_link(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    Trainer(_cfg(run)).fit()
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("x")
    os.replace(run / "summary.json", elsewhere / "summary.json")
    (run / "summary.json").symlink_to(elsewhere / "summary.json")
    Trainer(_cfg(run, "overwrite=true")).fit()
    assert (elsewhere / "precious.txt").exists() and (elsewhere / "summary.json").exists()


def test_overwrite_refuses_to_delete_a_checkpoint_it_reads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(_cfg(run)).fit()
    with pytest.raises(UserError, match="would delete .*best.pt.*which this run reads"):
        Trainer(_cfg(run, "overwrite=true", method="kd", teacher=run / "best.pt"))
    assert (run / "best.pt").exists()


def test_a_second_run_into_a_held_folder_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = RunLock(run)
    assert holder.acquire() is None
    try:
        with pytest.raises(UserError, match="in use by another pckd run"):
            Trainer(_cfg(run))
    finally:
        holder.release()
    Trainer(_cfg(run)).fit()  # free again


def test_a_folder_without_checkpoint_or_result_accepts_a_plain_rerun(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: ce\n")
    (run / "metrics.jsonl").write_text('{"kind": "teacher", "top1": 1.0}\n')
    (run / "env.json").write_text("{}")
    with pytest.raises(UserError, match="holds no run to resume .*drop resume=true"):
        Trainer(_cfg(run, "resume=true"))
    summary = Trainer(_cfg(run)).fit()
    assert summary["epochs"] == 1
    kinds = [json.loads(line)["kind"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "teacher" not in kinds  # the failed run's log was replaced, not appended to


def test_training_never_imports_matplotlib(tmp_path: Path, random_teacher: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pckd.config import load_config\n"
        "from pckd.engine.trainer import Trainer\n"
        f"cfg = load_config(None, {_args(tmp_path / 'run', random_teacher)!r})\n"
        "Trainer(cfg).fit()\n"
        "assert 'matplotlib' not in sys.modules, 'training imported matplotlib'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "preview_history.json").is_file()


def _args(run_dir: Path, teacher: Path) -> list[str]:
    return ["method=pckd", "student.arch=resnet8", "teacher.arch=resnet8", f"teacher.checkpoint={teacher}",
            "data.name=digits", "data.train_limit=32", "data.test_limit=16", "train.epochs=1", "train.batch_size=16",
            "train.device=cpu", "train.progress=false", "train.eval_teacher=false", f"output_dir={run_dir}"]
