"""SIGTERM/SIGINT: finish the step, save a resumable checkpoint, say how to resume; resuming is exact."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pckd.config import load_config
from pckd.engine.checkpoint_io import load_checkpoint_file
from pckd.engine.signals import StopRequest
from pckd.engine.trainer import Trainer, TrainingStopped
from pckd.models import create_model
from tests.engine.conftest import signal_at_call

from .conftest import pckd_command, subprocess_env


def _wait_for_step_line(metrics: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Block until the run has logged its first training step (so a signal lands mid-epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before logging a step (rc {proc.returncode})")
        if metrics.exists() and '"kind": "step"' in metrics.read_text():
            return
        time.sleep(0.01)
    raise AssertionError("no step line in metrics.jsonl")


def _assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    moments_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    moments_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(moments_a) == len(moments_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b))


def _start_and_signal(config: Path, run_dir: Path, sig: signal.Signals) -> tuple[int, str, str]:
    proc = subprocess.Popen(pckd_command("train", str(config), f"output_dir={run_dir}"), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step_line(run_dir / "metrics.jsonl", proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def test_sigterm_mid_epoch_then_printed_resume_command_equals_uninterrupted(
    tiny_config: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    reference = tmp_path / "reference"  # the uninterrupted run, running alongside the interrupted one
    full = subprocess.Popen(pckd_command("train", str(tiny_config), f"output_dir={reference}"), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(lambda: full.poll() is None and full.kill())
    stopped = tmp_path / "stopped"
    code, out, err = _start_and_signal(tiny_config, stopped, signal.SIGTERM)
    assert code == 0, err
    assert "SIGTERM received: finishing the current step" in out
    match = re.search(r"Resume with: (pckd train .+ resume=true)$", err, re.MULTILINE)
    assert match, err
    command = match.group(1)
    assert command == f"pckd train {stopped / 'config.yaml'} resume=true"

    saved = load_checkpoint_file(stopped / "last.pt")
    assert saved["epoch"] == 1 and 0 < saved["step"] < 90, (saved["epoch"], saved["step"])  # mid-epoch
    assert f"stopped at epoch 1 step {saved['step']};" in err
    assert not list(stopped.glob(".*.tmp-*"))

    argv = shlex.split(command)
    assert argv[0] == "pckd"
    resumed = subprocess.run(pckd_command(*argv[1:]), env=subprocess_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from last.pt: epoch 1, step {saved['step']}" in resumed.stdout

    _, full_err = full.communicate(timeout=300)
    assert full.returncode == 0, full_err
    a, b = load_checkpoint_file(reference / "last.pt"), load_checkpoint_file(stopped / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 0
    _assert_same_weights(a, b)
    epochs = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2]  # the interrupted epoch is logged once


def test_single_sigint_saves_and_exits_130(tiny_config: Path, tmp_path: Path) -> None:
    code, _, err = _start_and_signal(tiny_config, tmp_path / "run", signal.SIGINT)
    assert code == 130, err
    assert "SIGINT: stopped at epoch 1 step" in err and "resume=true" in err
    assert load_checkpoint_file(tmp_path / "run" / "last.pt")["step"] > 0


@pytest.mark.slow
def test_torchrun_ranks_stop_together_at_a_log_interval(tiny_config: Path, tmp_path: Path) -> None:
    """SIGTERM to rank 1 alone: both ranks stop at the same log-interval boundary and rank 0 saves."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    run_dir = tmp_path / "ddp"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pckd", "train",
         str(tiny_config), f"output_dir={run_dir}", "train.log_interval=5", "train.device=cpu"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_step_line(run_dir / "metrics.jsonl", launcher, timeout=120)
        workers = sorted(int(pid) for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                                            text=True).stdout.split())
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGTERM)  # only one rank hears it
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 0, err
    saved = load_checkpoint_file(run_dir / "last.pt")
    assert saved["epoch"] == 1 and saved["step"] > 0 and saved["step"] % 5 == 0, saved["step"]
    expected = (f"pckd: SIGTERM: stopped at epoch 1 step {saved['step']}; checkpoint saved in "
                f"{run_dir / 'last.pt'}. Resume with: torchrun --nproc_per_node=2 -m pckd train "
                f"{run_dir / 'config.yaml'} resume=true\n")
    # One line says so (rank 0's), whole, with the command as it must be typed under torchrun.
    assert err.count(expected) == 1, err
    assert err.count("pckd: SIGTERM: stopped") == 1, err


def test_second_sigint_aborts_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest runs in the background
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested == "SIGINT"  # first Ctrl-C: only a request
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert "Ctrl-C again to abort now" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


# ---- exact mid-epoch resume of methods with state, in-process ----------------------------------------------
def _method_config(run_dir: Path, method: str, teacher: Path | None, extra: list[str] = ()) -> Any:
    overrides = [f"method={method}", "student.arch=resnet8", "data.name=digits", "data.train_limit=96",
                 "data.test_limit=40", "train.epochs=2", "train.batch_size=16", "train.eval_batch_size=40",
                 "train.device=cpu", "train.progress=false", "train.log_interval=4", "train.eval_teacher=false",
                 f"output_dir={run_dir}", *extra]
    if teacher is not None:
        overrides += ["teacher.arch=resnet8", f"teacher.checkpoint={teacher}"]
    return load_config(None, overrides)



@pytest.mark.parametrize("method", ["pckd", "intra_class", "crd", "reviewkd"])
def test_mid_epoch_resume_restores_method_state_exactly(method: str, tmp_path: Path) -> None:
    """Method state survives a mid-epoch stop: PCKD's preview history, the intra-class queue, CRD's memory banks,
    normalisation constant and RNG-drawn negatives, ReviewKD's fusion heads (with BatchNorm) and warm-up."""
    teacher = None
    if method != "intra_class":
        torch.manual_seed(1)
        teacher = tmp_path / "teacher.pt"
        torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher)
    extra = ["crd.nce_k=32"] if method == "crd" else []  # 32 of the 96 samples: real draws, small gathers
    Trainer(_method_config(tmp_path / "full", method, teacher, extra)).fit()

    interrupted = Trainer(_method_config(tmp_path / "part", method, teacher, extra))
    signal_at_call(interrupted, call=9)  # epoch 2 (6 steps per epoch), step 3 done
    with pytest.raises(TrainingStopped) as info:
        interrupted.fit()
    assert info.value.exit_code == 0 and "stopped at epoch 2 step 3" in str(info.value)
    saved = load_checkpoint_file(tmp_path / "part" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (2, 3)

    Trainer(_method_config(tmp_path / "part", method, teacher, [*extra, "resume=true"])).fit()
    a, b = load_checkpoint_file(tmp_path / "full" / "last.pt"), load_checkpoint_file(tmp_path / "part" / "last.pt")
    _assert_same_weights(a, b)
    for key, value in a["heads"].items():
        assert torch.equal(value, b["heads"][key]), key
    if method == "crd":
        assert bool((a["heads"]["z"] > 0).all())  # the normalisation constants were estimated and kept
    if method == "pckd":
        assert a["method_state"]["preview_history"] == b["method_state"]["preview_history"]
        history = json.loads((tmp_path / "part" / "preview_history.json").read_text())
        assert history == json.loads((tmp_path / "full" / "preview_history.json").read_text())
    elif method == "intra_class":
        for key, value in a["method_state"]["queue"].items():
            assert torch.equal(value, b["method_state"]["queue"][key]), key


# ---- the whole process group, repeated signals, start-up ------------------------------------------------------
def _image_folder_run(config: Path, run_dir: Path, shared_data: Path) -> subprocess.Popen:
    """A run reading JPEGs through two DataLoader workers, in its own process group (as under Slurm)."""
    return subprocess.Popen(
        pckd_command("train", str(config), f"output_dir={run_dir}", "data.name=imagefolder",
                     f"data.root={shared_data / 'cifar10-jpeg-mini'}", "data.image_size=32", "data.num_workers=2",
                     "train.epochs=1", "data.test_limit=40", "train.eval_batch_size=40"),
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("repeats", [1, 150])
def test_sigterm_to_the_process_group_with_dataloader_workers_saves_and_exits_0(
    repeats: int, tiny_config: Path, tmp_path: Path, shared_data: Path
) -> None:
    """`kill -- -PGID` (what Slurm does) reaches the workers too; repeated every 10 ms until the run exits it
    must still end with the checkpoint and exit 0, never death by signal."""
    run_dir = tmp_path / "run"
    proc = _image_folder_run(tiny_config, run_dir, shared_data)
    try:
        _wait_for_step_line(run_dir / "metrics.jsonl", proc)
        for _ in range(repeats):
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.01)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    saved = load_checkpoint_file(run_dir / "last.pt")
    assert saved["epoch"] == 1 and saved["step"] > 0
    assert err.count("pckd: SIGTERM: stopped at epoch 1 step") == 1 and "Traceback" not in err, err
    assert not list(run_dir.glob(".*.tmp-*"))


def test_sigint_after_sigterm_aborts_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # repeated: still one request, said once
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # "Ctrl-C again to abort now" holds after a SIGTERM too
    assert capsys.readouterr().out.count("SIGTERM received") == 1


def test_sigterm_after_the_stop_is_ignored_until_exit() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        with StopRequest(ignore_sigterm_after_stop=True):
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        signal.raise_signal(signal.SIGTERM)  # would end this process with the default action
        with StopRequest(ignore_sigterm_after_stop=True):
            pass
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # no stop: what was there is restored
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("phase", ["build", "teacher evaluation"])
def test_sigterm_during_start_up_saves_where_training_begins_and_resumes_exactly(
    phase: str, tiny_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SIGTERM while the data and models are built, or while the teacher is evaluated, is not lost: the run
    stops before its first step with exit 0, a checkpoint and the resume command; the resumed run equals an
    uninterrupted one."""
    from pckd.cli import main
    from pckd.engine import trainer as trainer_module

    torch.manual_seed(1)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, teacher)
    args = ["train", str(tiny_config), "method=kd", "student.arch=resnet8", "teacher.arch=resnet8", f"teacher.checkpoint={teacher}",
            "data.name=digits", "data.train_limit=32", "data.test_limit=16", "train.epochs=1", "train.batch_size=16",
            "train.device=cpu", "train.progress=false", "train.eval_teacher=true"]
    assert main([*args, f"output_dir={tmp_path / 'full'}"]) == 0

    if phase == "build":
        real_build = trainer_module.build

        def build(cfg: Any) -> Any:
            signal.raise_signal(signal.SIGTERM)
            return real_build(cfg)

        monkeypatch.setattr(trainer_module, "build", build)
    else:
        real_evaluate = Trainer._evaluate

        def evaluate(self: Trainer, model: torch.nn.Module) -> dict[str, float]:
            if model is self.distiller.teacher:
                signal.raise_signal(signal.SIGTERM)
            return real_evaluate(self, model)

        monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    before = signal.getsignal(signal.SIGTERM)
    run_dir = tmp_path / "part"
    capsys.readouterr()
    try:
        assert main([*args, f"output_dir={run_dir}"]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert (f"pckd: SIGTERM: stopped before the first step; checkpoint saved in {run_dir / 'last.pt'}. Resume with: "
            f"pckd train {run_dir / 'config.yaml'} resume=true") in err, err
    assert (load_checkpoint_file(run_dir / "last.pt")["epoch"], load_checkpoint_file(run_dir / "last.pt")["step"]) \
        == (0, 0)
    monkeypatch.undo()
    assert main(["train", str(run_dir / "config.yaml"), "resume=true"]) == 0
    a, b = load_checkpoint_file(tmp_path / "full" / "last.pt"), load_checkpoint_file(run_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    _assert_same_weights(a, b)
    assert a["teacher_eval"] == b["teacher_eval"] and a["teacher_eval"]["top1"] >= 0
