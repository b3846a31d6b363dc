"""The run folder: `overwrite=true` removes exactly what an earlier run wrote, a run holds the folder's lock, an
early failure never leaves a dead end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

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


def test_a_second_pckd_process_into_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    """Two real processes: while the first trains, a second into the same folder (overwrite=true, or
    resume=true) is refused with one line naming the folder and the holder; the first's files are untouched."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["method=ce", "student.arch=resnet8", "data.name=digits", "data.train_limit=32", "data.test_limit=16",
            "train.batch_size=16", "train.device=cpu", "train.progress=false", "train.eval_teacher=false",
            f"output_dir={run}"]
    config = tmp_path / "tiny.yaml"
    config.write_text("method: ce\n")
    first = subprocess.Popen([sys.executable, "-m", "pckd", "train", str(config), *args, "train.epochs=100000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not ((run / ".pckd.lock").is_file() and (run / "last.pt").is_file()
                   and (run / ".pckd.lock").read_text().strip() == f"pid {first.pid}"):
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first run never took the folder"
            time.sleep(0.2)
        for extra in ("overwrite=true", "resume=true"):
            second = subprocess.run([sys.executable, "-m", "pckd", "train", str(config), *args, extra,
                                     "train.epochs=100000"], capture_output=True, text=True, timeout=240, env=env)
            assert second.returncode == 2, second.stderr
            assert second.stderr.splitlines() == [
                f"pckd: error: output_dir '{run}' is in use by another pckd run (pid {first.pid}); wait for it to "
                f"finish or choose another output_dir"], second.stderr
            assert first.poll() is None and (run / "config.yaml").is_file() and (run / "last.pt").is_file()
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert "SIGTERM: stopped" in err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert state["format"] == "pckd" and state["epoch"] >= 1


def test_results_without_last_pt_or_metrics_are_never_silently_overwritten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(_cfg(run)).fit()
    for name in ("last.pt", "last.prev.pt", "metrics.jsonl", MANIFEST):
        (run / name).unlink(missing_ok=True)
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "best.pt", "config.yaml", "env.json", "summary.json", "tensorboard"]
    before = (run / "best.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run; add resume=true .* overwrite=true"):
        Trainer(_cfg(run))
    assert (run / "best.pt").read_bytes() == before and (run / "summary.json").is_file()


def test_overwrite_keeps_a_users_own_tensorboard_folder_and_never_follows_its_link(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "my-notes.txt").write_text("mine")
    Trainer(_cfg(run)).fit()
    events = [p.name for p in (run / "tensorboard").iterdir() if p.name.startswith("events")]
    assert len(events) == 1
    Trainer(_cfg(run, "overwrite=true")).fit()
    left = sorted(p.name for p in (run / "tensorboard").iterdir())
    assert "my-notes.txt" in left and events[0] not in left  # the old run's events went, the user's file stayed

    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("x")
    import shutil

    shutil.rmtree(run / "tensorboard")
    (run / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    Trainer(_cfg(run, "overwrite=true")).fit()  # writes no events through the link, deletes nothing behind it
    assert sorted(p.name for p in elsewhere.iterdir()) == ["precious.txt"]
    Trainer(_cfg(run, "overwrite=true")).fit()
    assert (elsewhere / "precious.txt").read_text() == "x"
