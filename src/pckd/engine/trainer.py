"""The one training loop for every method.

It knows nothing about any method: it asks the Distiller for named losses, sums and back-propagates them,
accumulates metrics on the device (read once per log interval), evaluates each epoch, and writes atomic
checkpoints holding everything an exact resume needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pckd import __version__
from pckd.config import to_yaml
from pckd.engine import distributed as dist
from pckd.engine.build import Built, build
from pckd.engine.checkpoint_io import BEST, LAST, PREVIOUS, atomic_save, load_checkpoint_file, load_resume_checkpoint
from pckd.engine.evaluate import evaluate
from pckd.engine.metrics import StepMeter
from pckd.engine.run_logger import RunLogger, peak_memory_mb
from pckd.engine.signals import StopRequest
from pckd.errors import UserError

_RUN_FILES = ("config.yaml", LAST, PREVIOUS, BEST, "metrics.jsonl", "summary.json", "env.json", "tensorboard")


_SIGNAL_CODES = {"SIGINT": 1, "SIGTERM": 2}  # agreed over ranks with a MAX all_reduce: SIGTERM wins
_SIGNAL_NAMES = {code: name for name, code in _SIGNAL_CODES.items()}


class TrainingStopped(Exception):
    """Training ended early on purpose (signal) or by a guard (non-finite loss). ``exit_code`` says how."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def compile_student(student: torch.nn.Module) -> None:
    """``torch.compile`` the student where methods call it: ``forward_features`` (PCKD and every method that
    needs features; zoo models' ``forward`` goes through it too) and ``forward``. ``Module.compile()`` alone
    would only cover ``forward``, which PCKD never calls."""
    if hasattr(student, "forward_features"):
        student.forward_features = torch.compile(student.forward_features)
    student.compile()


class ChannelsLastAugment:
    """Wraps an augmenter so every view it returns is in channels_last layout."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            return out.contiguous(memory_format=torch.channels_last) if isinstance(out, torch.Tensor) and out.dim() == 4 else out

        return wrapped


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (what a ``mkdir -p`` would start from)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_run_dir(cfg: Any) -> Path:
    """Check ``output_dir`` without writing anything: refuse to mix two runs unless resume or overwrite says
    what to do, and refuse a folder that cannot be created or written. Returns the run folder."""
    run_dir = Path(cfg.output_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir '{run_dir}' is a file; choose a folder with output_dir=...")
    holds_run = run_dir.is_dir() and any((run_dir / name).exists() for name in (LAST, PREVIOUS, "metrics.jsonl"))
    if holds_run and not (cfg.resume or cfg.overwrite):
        raise UserError(
            f"output_dir '{run_dir}' already holds a run; add resume=true to continue it, overwrite=true to replace it, "
            f"or choose another output_dir"
        )
    if cfg.resume and not holds_run:
        raise UserError(f"resume=true but output_dir '{run_dir}' holds no run to resume; drop resume=true")
    base = _nearest_existing(run_dir)
    if not base.is_dir():
        raise UserError(f"output_dir '{run_dir}' cannot be created: '{base}' is a file; choose another with output_dir=...")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"output_dir '{run_dir}' is not writable (no write permission on '{base}'); "
                        f"choose another with output_dir=...")
    return run_dir


def create_run_dir(cfg: Any, run_dir: Path) -> None:
    """Make ``run_dir`` (rank 0), clearing the old run first under ``overwrite=true``. Called only once every
    input has been validated, so a refused config never leaves a half-created or emptied run folder."""
    if not dist.is_main_process():
        return
    if cfg.overwrite and run_dir.is_dir():
        for name in _RUN_FILES:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output_dir '{run_dir}' is not writable ({exc.strerror}); choose another with output_dir=...") from None


def prepare_run_dir(cfg: Any) -> Path:
    """Check and create ``output_dir`` in one go (see :func:`check_run_dir` and :func:`create_run_dir`)."""
    run_dir = check_run_dir(cfg)
    create_run_dir(cfg, run_dir)
    return run_dir


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _environment(cfg: Any) -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"pckd": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.version.cuda, "git_revision": rev,
            "seed": cfg.train.seed, "world_size": dist.world_size(), "command": " ".join(sys.argv)}


class Trainer:
    """Runs one configured training job in ``run_dir``."""

    def __init__(self, cfg: Any, built: Built | None = None) -> None:
        self.cfg = cfg
        self.run_dir = check_run_dir(cfg)  # read-only checks first: nothing is written before validation passes
        self.built = built or build(cfg)
        create_run_dir(cfg, self.run_dir)
        self.device = self.built.device
        self.distiller = self.built.distiller
        self.data = self.built.data
        self.augment = ChannelsLastAugment(self.data.augment) if cfg.train.channels_last else self.data.augment
        self.model = self.distiller
        if dist.is_distributed():
            if cfg.train.sync_bn:  # BN over the global batch, as one process would compute it
                dist.convert_batchnorm(self.distiller, self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.distiller, device_ids=ids,
                                                                   find_unused_parameters=True)
        if cfg.train.compile:
            compile_student(self.distiller.student)
        self.logger = RunLogger(self.run_dir, enabled=dist.is_main_process())
        self.start_epoch, self.start_step = 1, 0
        self.best_top1, self.best_epoch = -1.0, 0
        self.teacher_eval: dict[str, float] | None = None
        self.wall_time = 0.0

    # ---- helpers -----------------------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _checkpoint(self, epoch: int, step: int, last_eval: dict[str, float] | None) -> dict[str, Any]:
        student_keys = {f"student.{k}" for k in self.distiller.student.state_dict()}
        full = self.distiller.state_dict()
        return {
            "format": "pckd", "version": 1,
            "arch": self.cfg.student.arch, "num_classes": self.data.num_classes, "method": self.cfg.method,
            "model": self.distiller.student.state_dict(),  # loadable as a teacher by any RepDistiller-style code
            "heads": {k: v for k, v in full.items() if k not in student_keys},
            "optimizer": self.built.optimizer.state_dict(),
            "scheduler": self.built.schedule.state_dict(),
            "epoch": epoch, "step": step,  # step > 0: saved mid-epoch, `step` batches of `epoch` done
            "rng": _rng_state(),
            "method_state": self.distiller.method_state(),
            "best_top1": self.best_top1, "best_epoch": self.best_epoch, "last_eval": last_eval or {},
            "teacher_eval": self.teacher_eval or {}, "wall_time": self.wall_time,
            "config": to_yaml(self.cfg),
        }

    def save(self, epoch: int, step: int, last_eval: dict[str, float] | None, best: bool = False) -> None:
        """Rank 0 writes the checkpoint; under torchrun every rank calls this and waits until the file is
        complete (so a rank that stops or resumes next sees the finished file), and all stop if it failed."""
        failure: TrainingStopped | None = None
        if dist.is_main_process():
            failure = self._write_checkpoint(epoch, step, last_eval, best)
        if dist.max_over_ranks([int(failure is not None)], self.device)[0]:  # collective: the barrier
            raise failure or TrainingStopped("rank 0 could not write its checkpoint (see its message)", exit_code=1)

    def _write_checkpoint(self, epoch: int, step: int, last_eval: dict[str, float] | None,
                          best: bool) -> TrainingStopped | None:
        state = self._checkpoint(epoch, step, last_eval)
        target = self.run_dir / LAST
        try:
            atomic_save(state, target, keep_previous=self.run_dir / PREVIOUS)
            if best:
                target = self.run_dir / BEST
                atomic_save(state, target)
        except OSError as exc:  # disk full, quota, vanished folder: the files already there stay as they were
            kept = [str(self.run_dir / n) for n in (LAST, PREVIOUS) if (self.run_dir / n).exists()]
            return TrainingStopped(
                f"could not write checkpoint '{target}' ({exc.strerror or exc}); existing checkpoints are untouched "
                f"({', '.join(kept) or 'none yet'}). Free space, then resume with: {self.resume_command()}",
                exit_code=1)
        return None

    def _load_resume_state(self) -> tuple[dict[str, Any], Path]:
        """Rank 0 picks the checkpoint (``last.pt``, or its fallback) and every rank loads that same file, so
        output_dir must be on a filesystem every node sees. Errors are raised on all ranks alike."""
        if not dist.is_distributed():
            return load_resume_checkpoint(self.run_dir)
        choice: tuple[str, str]
        state: dict[str, Any] | None = None
        if dist.is_main_process():
            try:
                state, path = load_resume_checkpoint(self.run_dir)
                choice = ("path", str(path))
            except UserError as exc:
                choice = ("error", str(exc))
        kind, value = dist.broadcast_object(choice if dist.is_main_process() else None)
        if kind == "error":
            raise UserError(value)
        if state is None:
            if not Path(value).is_file():
                raise UserError(f"rank {dist.rank()} cannot read '{value}' written by rank 0; put output_dir on a "
                                "filesystem shared by every node")
            state = load_checkpoint_file(Path(value))
        return state, Path(value)

    def resume(self) -> None:
        state, path = self._load_resume_state()
        if state["method"] != self.cfg.method or state["arch"] != self.cfg.student.arch:
            raise UserError(
                f"'{path}' is a {state['method']} run of {state['arch']} but the config asks for "
                f"{self.cfg.method} with {self.cfg.student.arch}; resume with the run's own config.yaml"
            )
        student_sd = {f"student.{k}": v for k, v in state["model"].items()}
        self.distiller.load_state_dict({**student_sd, **state["heads"]})
        self.built.optimizer.load_state_dict(state["optimizer"])
        self.built.schedule.load_state_dict(state["scheduler"])
        self.distiller.load_method_state(state["method_state"])
        _set_rng_state(state["rng"])
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        self.teacher_eval = state["teacher_eval"] or None
        self.wall_time = state["wall_time"]
        if state["step"]:
            self.start_epoch, self.start_step = state["epoch"], state["step"]
        else:
            self.start_epoch, self.start_step = state["epoch"] + 1, 0
        if dist.is_main_process():
            print(f"resuming {self.run_dir} from {path.name}: epoch {self.start_epoch}, step {self.start_step}",
                  flush=True)

    def resume_command(self) -> str:
        """The shell command that continues this run (from the current working directory)."""
        return f"pckd train {shlex.quote(str(self.run_dir / 'config.yaml'))} resume=true"

    # ---- main loop ---------------------------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (or only up to ``stop_after_epoch``, as if stopped there);
        returns the summary (also written to summary.json)."""
        cfg = self.cfg
        if cfg.resume:
            self.resume()  # before writing anything: an unreadable run must stay as it was
        if dist.is_main_process():
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
            self.logger.write_json("env.json", _environment(cfg))
        if self.distiller.teacher is not None and cfg.train.eval_teacher and self.teacher_eval is None:
            self.teacher_eval = evaluate(self.distiller.teacher, self.data.test, self.augment, self._autocast,
                                         cfg.train.channels_last)
            self.logger.log({"kind": "teacher", **self.teacher_eval})
            if dist.is_main_process():
                print(f"teacher {cfg.teacher.arch}: test top-1 {self.teacher_eval['top1']:.2f}% "
                      f"top-5 {self.teacher_eval['top5']:.2f}%", flush=True)
        last_eval: dict[str, float] | None = None
        with StopRequest() as stop:
            for epoch in range(self.start_epoch, min(cfg.train.epochs, stop_after_epoch or cfg.train.epochs) + 1):
                last_eval = self._run_epoch(epoch, stop)
        return self._finish(last_eval)

    def _run_epoch(self, epoch: int, stop: StopRequest) -> dict[str, float]:
        cfg, opt = self.cfg, self.built.optimizer
        loader = self.data.train
        loader.set_epoch(epoch)
        start_step = self.start_step if epoch == self.start_epoch else 0
        self.distiller.train()
        if start_step == 0:  # a mid-epoch resume continues an epoch whose start hook already ran (state restored)
            self.distiller.on_epoch_start(epoch)
        epoch_meter, window = StepMeter(self.device), StepMeter(self.device)
        lr = self.built.schedule.set_epoch(epoch)
        n_steps = len(loader)
        bar = tqdm(total=n_steps, initial=start_step, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False,
                   disable=not (cfg.train.progress and dist.is_main_process()), dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)  # logs stay short when not a terminal
        t0, window_t0, window_images = time.perf_counter(), time.perf_counter(), 0
        skipped = 0
        for step, batch in enumerate(loader.iter_from(start_step), start=start_step):
            with self._autocast():
                out = self.model(batch, epoch)
            total = out.total
            opt.zero_grad(set_to_none=True)
            if cfg.train.on_nonfinite == "skip_step" and not self._all_finite(total):  # opt-in host sync
                skipped += 1
            else:
                total.backward()
                opt.step()
            values = {**out.losses, "loss": total, **out.stats}
            epoch_meter.update(values, out.logits, batch.labels, step=step)
            window.update(values, out.logits, batch.labels, step=step)
            window_images += batch.size * dist.world_size()
            bar.update(1)
            at_log = (step + 1) % cfg.train.log_interval == 0 or step + 1 == n_steps
            if at_log:
                means, bad = window.read()
                # Under torchrun all ranks decide together here (one small all_reduce per log interval).
                signal_code, any_bad = dist.max_over_ranks([_SIGNAL_CODES.get(stop.requested, 0), int(bool(bad))],
                                                           self.device)
                self._check_finite(bad, window, epoch, n_steps, elsewhere=bool(any_bad))
                if signal_code:
                    stop.requested = _SIGNAL_NAMES[signal_code]
                elapsed = time.perf_counter() - window_t0
                rate = window_images / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['top1']:.1f}", img_s=f"{rate:.0f}")
                self.logger.log({"kind": "step", "epoch": epoch, "step": step + 1, "lr": lr, "img_per_s": rate,
                                 **{f"train/{k}": v for k, v in means.items()}},
                                step=(epoch - 1) * n_steps + step + 1)
                window.reset()
                window_t0, window_images = time.perf_counter(), 0
            # One process checks the flag after every step; ranks only stop at an agreed log-interval boundary.
            if stop.requested is not None and step + 1 < n_steps and (at_log or not dist.is_distributed()):
                if not at_log:  # never save weights a non-finite step has already spoiled
                    _, bad = window.read()
                    self._check_finite(bad, window, epoch, n_steps)
                self._stop_for_signal(stop.requested, epoch, step + 1)
        bar.close()
        train_means, bad = epoch_meter.read()
        self._check_finite(bad, epoch_meter, epoch, n_steps)
        epoch_time = time.perf_counter() - t0
        self.wall_time += epoch_time
        test = evaluate(self.distiller.student, self.data.test, self.augment, self._autocast, cfg.train.channels_last)
        improved = test["top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = test["top1"], epoch
        self.distiller.on_epoch_end(epoch, self.logger)
        images = (n_steps - start_step) * cfg.train.batch_size
        record = {"kind": "epoch", "epoch": epoch, "lr": lr, "epoch_time_s": epoch_time,
                  "img_per_s": images / max(epoch_time, 1e-9), "peak_memory_mb": peak_memory_mb(self.device),
                  "skipped_steps": skipped, **{f"train/{k}": v for k, v in train_means.items()},
                  "test/top1": test["top1"], "test/top5": test["top5"], "test/loss": test["loss"],
                  "best/top1": self.best_top1}
        self.logger.log(record, step=epoch)
        if dist.is_main_process():
            tqdm.write(f"epoch {epoch}/{cfg.train.epochs}  loss {train_means.get('loss', float('nan')):.4f}  "
                       f"train top-1 {train_means.get('top1', 0):.2f}%  test top-1 {test['top1']:.2f}%  "
                       f"(best {self.best_top1:.2f}% @ {self.best_epoch})  {record['img_per_s']:.0f} img/s")
        signal_code = dist.max_over_ranks([_SIGNAL_CODES.get(stop.requested, 0)], self.device)[0]
        stopping = bool(signal_code) and epoch < cfg.train.epochs
        if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs or improved or stopping:
            self.save(epoch, 0, test, best=improved)
        if stopping:
            self._stop_for_signal(_SIGNAL_NAMES[signal_code], epoch, 0, saved=True)
        return test

    def _all_finite(self, total: torch.Tensor) -> bool:
        """Whether this step's loss is finite on every rank (all ranks must skip the same steps, or DDP's
        gradient all_reduce would hang)."""
        bad = int(not torch.isfinite(total).item())
        return not dist.max_over_ranks([bad], self.device)[0]

    def _check_finite(self, bad: dict[str, int], meter: StepMeter, epoch: int, n_steps: int,
                      elsewhere: bool = False) -> None:
        """Stop (exit code 3) if ``meter`` saw a non-finite value, naming the term(s), the exact first bad
        step and the last good checkpoint. ``elsewhere``: another rank saw one (all ranks stop together)."""
        if not (bad or elsewhere) or self.cfg.train.on_nonfinite == "skip_step":
            return
        last = self.run_dir / LAST
        good = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
        first = meter.first_nonfinite() if bad else {}
        losses = {k: v for k, v in first.items() if k != "loss"} or first
        if losses:
            step = min(losses.values())
            terms = ", ".join(f"'{k}'" for k, v in losses.items() if v == step)
            where = f"loss term {terms} in epoch {epoch} at step {step + 1} of {n_steps}"
        else:
            where = f"loss on another rank in epoch {epoch}"
        raise TrainingStopped(
            f"non-finite {where}; {good}. Lower train.lr, or set train.on_nonfinite=skip_step to skip such steps",
            exit_code=3)

    def _stop_for_signal(self, signame: str, epoch: int, step: int, saved: bool = False) -> None:
        if not saved:
            self.save(epoch, step, None)
        self.logger.close()
        code = 0 if signame == "SIGTERM" else 130
        raise TrainingStopped(
            f"{signame}: stopped at epoch {epoch} step {step}; checkpoint saved in {self.run_dir / LAST}. "
            f"Resume with: {self.resume_command()}", exit_code=code)

    def _finish(self, last_eval: dict[str, float] | None) -> dict[str, Any]:
        if last_eval is None:  # resumed a finished run
            last_eval = evaluate(self.distiller.student, self.data.test, self.augment, self._autocast,
                                 self.cfg.train.channels_last)
        summary = {
            "method": self.cfg.method, "student": self.cfg.student.arch,
            "teacher": self.cfg.teacher.arch if self.distiller.teacher is not None else None,
            "teacher_top1": (self.teacher_eval or {}).get("top1"),
            "epochs": self.cfg.train.epochs,
            "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "last_top1": last_eval["top1"], "last_top5": last_eval["top5"],
            "wall_time_s": round(self.wall_time, 2),
            "student_parameters": sum(p.numel() for p in self.distiller.student.parameters()),
            "extra_parameters": self.distiller.extra_parameters(),
            "run_dir": str(self.run_dir),
        }
        self.logger.write_json("summary.json", summary)
        self.logger.close()
        return summary


def train(cfg: Any) -> dict[str, Any]:
    """Train from a resolved config; returns the run summary."""
    return Trainer(cfg).fit()


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "summary.json").read_text())
