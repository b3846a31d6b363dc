"""Issue 10, item 7: a full disk during any write of a run file stops with one exit-1 line naming the file and
leaves no temporary file; after freeing space the named next step (rerun, or resume) completes the run, with a
best.pt that matches its summary. Temporary files of a process killed mid-write are removed at the next start."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pckd.cli import main
from pckd.engine.run_logger import RunLogger
from pckd.engine.trainer import Trainer

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see which file an fd is")

TINY = ["student.arch=resnet8", "data.name=digits", "data.train_limit=32", "data.test_limit=16",
        "train.batch_size=16", "train.device=cpu", "train.progress=false", "train.eval_teacher=false"]


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text("method: ce\n")
    return path


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture()
def full_disk_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``full_disk_for(name, after=k)``: the (k+1)-th and later fsyncs of a temporary file of ``name`` fail with
    ENOSPC (what a full disk or quota does to buffered data), every other write goes through."""
    real_fsync = os.fsync

    def arm(name: str, after: int = 0) -> None:
        seen = {"n": 0}

        def fsync(fd: int) -> None:
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}.tmp"):
                seen["n"] += 1
                if seen["n"] > after:
                    raise _enospc()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    yield arm
    monkeypatch.setattr(os, "fsync", real_fsync)


def _run(tmp_path: Path, run: Path, *extra: str) -> int:
    return main(["train", str(_config(tmp_path)), f"output_dir={run}", *TINY, *extra])


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("pckd: error:")]


def _temps(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp" in p.name)


# (file, method, epochs, what the message says to do next)
WRITES = {
    "config.yaml": ("ce", 1, "run the same command again"),
    "env.json": ("ce", 1, "run the same command again"),
    ".pckd-manifest.json": ("ce", 1, "run the same command again"),
    "preview_records.csv": ("pckd", 1, "run the same command again"),
    "preview_history.json": ("pckd", 1, "run the same command again"),
    "summary.json": ("ce", 1, "resume with: pckd train"),
}


@pytest.mark.parametrize("name", list(WRITES))
def test_disk_full_while_writing_a_run_file(name: str, tmp_path: Path, full_disk_for: Any, random_teacher: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    method, epochs, next_step = WRITES[name]
    run = tmp_path / "run"
    extra = [f"method={method}", f"train.epochs={epochs}"]
    if method == "pckd":
        extra += ["teacher.arch=resnet8", f"teacher.checkpoint={random_teacher}"]
    full_disk_for(name)
    code = _run(tmp_path, run, *extra)
    errors = _errors(capsys)
    assert code == 1
    assert len(errors) == 1, errors
    assert f"could not write '{run / name}' (No space left on device); no temporary file was left" in errors[0]
    assert next_step in errors[0], errors[0]
    assert _temps(run) == []

    full_disk_for("no-such-file")  # space freed
    again = ["resume=true"] if "resume" in next_step else []
    code = _run(tmp_path, run, *extra, *again)
    assert code == 0, capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["epochs"] == epochs
    assert (run / name).is_file() and _temps(run) == []


def test_disk_full_while_appending_to_metrics_jsonl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    real_init = RunLogger.__init__

    def init_on_a_full_disk(self: RunLogger, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        if self.enabled:  # /dev/full: the kernel answers every write with ENOSPC
            self._metrics.close()
            self._metrics = open("/dev/full", "a", buffering=1)  # noqa: SIM115

    monkeypatch.setattr(RunLogger, "__init__", init_on_a_full_disk)
    run = tmp_path / "run"
    code = _run(tmp_path, run, "train.epochs=1")
    errors = _errors(capsys)
    assert code == 1 and len(errors) == 1, errors
    assert f"could not write '{run / 'metrics.jsonl'}' (No space left on device)" in errors[0]
    assert _temps(run) == [] and not (run / "last.pt").exists()
    monkeypatch.undo()
    code = _run(tmp_path, run, "train.epochs=1")
    assert code == 0


def test_best_pt_is_written_after_disk_full_and_resume(tmp_path: Path, full_disk_for: Any,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Epoch 2 is the best epoch, and writing its best.pt hits a full disk. After the resume best.pt must hold
    epoch 2, as summary.json says (it used to hold epoch 1: last.pt already claimed epoch 2 as the best)."""
    top1 = iter([10.0, 20.0])

    def evaluate(self: Trainer, model: torch.nn.Module) -> dict[str, float]:
        return {"top1": next(top1), "top5": 50.0, "loss": 1.0}

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    run = tmp_path / "run"
    full_disk_for("best.pt", after=1)  # epoch 1's best.pt is written, epoch 2's is not
    code = _run(tmp_path, run, "train.epochs=3")
    err = capsys.readouterr().err
    assert code == 1 and f"could not write checkpoint '{run / 'best.pt'}' (No space left on device)" in err, err
    assert _temps(run) == []

    full_disk_for("no-such-file")
    top1 = iter([20.0, 15.0])  # the resumed run: epoch 2 again, then a worse epoch 3
    code = _run(tmp_path, run, "train.epochs=3", "resume=true")
    assert code == 0, capsys.readouterr().err
    summary = json.loads((run / "summary.json").read_text())
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert (summary["best_epoch"], summary["best_top1"]) == (2, 20.0)
    assert best["epoch"] == 2 and best["best_top1"] == 20.0


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_a_killed_process_are_removed_at_the_next_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", str(_config(tmp_path)), f"output_dir={run}", *TINY, "train.epochs=1"]) == 0
    dead = _dead_pid()
    stale = [f".last.pt.tmp-{dead}", f".last.prev.pt.tmp-{dead}", f".env.json.tmp-{dead}", ".summary.json.tmp",
             f"..pckd-manifest.json.tmp-{dead}", f".preview_records.csv.tmp-{dead}"]
    kept = [".last.pt.tmp-1",  # pid 1 is alive: not stale
            f".notes.txt.tmp-{dead}", "mine.tmp"]  # not pckd's
    for name in stale + kept:
        (run / name).write_bytes(b"half a file")
    assert main(["train", str(run / "config.yaml"), "train.epochs=2", "resume=true"]) == 0
    left = _temps(run)
    assert left == sorted(kept), left


def test_disk_full_in_a_real_pckd_process(tmp_path: Path) -> None:
    """The same failure in a separate `pckd` process: its real exit status and stderr (one line, no traceback)."""
    run = tmp_path / "run"
    code = (
        "import errno, os, sys\n"
        "from pathlib import Path\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        "    if Path(os.readlink(f'/proc/self/fd/{fd}')).name.startswith('.env.json.tmp'):\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    real(fd)\n"
        "os.fsync = fsync\n"
        "from pckd.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "train", str(_config(tmp_path)), f"output_dir={run}", *TINY,
                           "train.epochs=1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"pckd: error: could not write '{run / 'env.json'}' (No space left on device); no temporary file was left. "
        "Free space, then run the same command again (no checkpoint was written yet)"], done.stderr
    assert _temps(run) == [] and not (run / "env.json").exists()
