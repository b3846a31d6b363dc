"""The one training loop for every method.

It knows nothing about any method: it asks the Distiller for named losses, sums and back-propagates them,
accumulates metrics on the device (read once per log interval), evaluates each epoch, and writes atomic
checkpoints holding everything an exact resume needs.
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
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
from pckd.engine.checkpoint_io import BEST, LAST, PREVIOUS, atomic_save, load_resume_checkpoint
from pckd.engine.evaluate import evaluate
from pckd.engine.metrics import StepMeter
from pckd.engine.run_logger import RunLogger, peak_memory_mb
from pckd.engine.signals import StopRequest
from pckd.errors import UserError

_RUN_FILES = ("config.yaml", LAST, PREVIOUS, BEST, "metrics.jsonl", "summary.json", "env.json", "tensorboard")


class TrainingStopped(Exception):
    """Training ended early on purpose (signal) or by a guard (non-finite loss). ``exit_code`` says how."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


def prepare_run_dir(cfg: Any) -> Path:
    """Create/check ``output_dir``: refuse to mix two runs unless resume or overwrite says what to do."""
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
    if dist.is_main_process():
        if cfg.overwrite and holds_run:
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
        self.run_dir = prepare_run_dir(cfg)
        self.built = built or build(cfg)
        self.device = self.built.device
        self.distiller = self.built.distiller
        self.data = self.built.data
        self.augment = ChannelsLastAugment(self.data.augment) if cfg.train.channels_last else self.data.augment
        self.model = self.distiller
        if dist.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.distiller, device_ids=ids,
                                                                   find_unused_parameters=True)
        if cfg.train.compile:
            self.distiller.student.compile()
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
        if not dist.is_main_process():
            return
        state = self._checkpoint(epoch, step, last_eval)
        atomic_save(state, self.run_dir / LAST, keep_previous=self.run_dir / PREVIOUS)
        if best:
            atomic_save(state, self.run_dir / BEST)

    def resume(self) -> None:
        state, path = load_resume_checkpoint(self.run_dir)
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
        print(f"resuming {self.run_dir} from {path.name}: epoch {self.start_epoch}, step {self.start_step}", flush=True)

    def resume_command(self) -> str:
        return f"pckd train {self.run_dir / 'config.yaml'} resume=true"

    # ---- main loop ---------------------------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (or only up to ``stop_after_epoch``, as if stopped there);
        returns the summary (also written to summary.json)."""
        cfg = self.cfg
        if dist.is_main_process():
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
            self.logger.write_json("env.json", _environment(cfg))
        if cfg.resume:
            self.resume()
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
            if cfg.train.on_nonfinite == "skip_step" and not torch.isfinite(total).item():  # opt-in host sync
                skipped += 1
            else:
                total.backward()
                opt.step()
            values = {**out.losses, "loss": total, **out.stats}
            epoch_meter.update(values, out.logits, batch.labels)
            window.update(values, out.logits, batch.labels)
            window_images += batch.size * dist.world_size()
            bar.update(1)
            if (step + 1) % cfg.train.log_interval == 0 or step + 1 == n_steps:
                means, bad = window.read()
                self._check_finite(bad, epoch, step)
                elapsed = time.perf_counter() - window_t0
                rate = window_images / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['top1']:.1f}", img_s=f"{rate:.0f}")
                self.logger.log({"kind": "step", "epoch": epoch, "step": step + 1, "lr": lr, "img_per_s": rate,
                                 **{f"train/{k}": v for k, v in means.items()}},
                                step=(epoch - 1) * n_steps + step + 1)
                window.reset()
                window_t0, window_images = time.perf_counter(), 0
            if stop.requested is not None and step + 1 < n_steps:
                self._stop_for_signal(stop.requested, epoch, step + 1)
        bar.close()
        train_means, bad = epoch_meter.read()
        self._check_finite(bad, epoch, n_steps - 1)
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
        if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs or improved:
            self.save(epoch, 0, test, best=improved)
        if stop.requested is not None and epoch < cfg.train.epochs:
            self._stop_for_signal(stop.requested, epoch, 0, saved=True)
        return test

    def _check_finite(self, bad: dict[str, int], epoch: int, step: int) -> None:
        if not bad or self.cfg.train.on_nonfinite == "skip_step":
            return
        terms = ", ".join(f"'{k}'" for k in bad if k != "loss") or "'loss'"
        last = self.run_dir / LAST
        good = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingStopped(
            f"non-finite loss term {terms} in epoch {epoch} by step {step + 1}; {good}. Lower train.lr, or set "
            f"train.on_nonfinite=skip_step to skip such steps", exit_code=3)

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
