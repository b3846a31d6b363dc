"""The one training loop for every method.

It knows nothing about any method: it asks the Distiller for named losses, sums and back-propagates them,
accumulates metrics on the device (read once per log interval), evaluates each epoch, and writes atomic
checkpoints holding everything an exact resume needs. An epoch runs in named phases: :meth:`Trainer._step`
(forward, backward, optimizer), :meth:`Trainer._log_window` (read the window's metrics and agree with the other
ranks) and :meth:`Trainer._end_epoch` (evaluate, record, checkpoint). Ranks agree in one place,
:meth:`Trainer._agree`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import pckd.distributed as dist
from pckd.config import to_yaml
from pckd.config.schema import OnNonFinite, Precision, Schedule
from pckd.crash import note_run_dir
from pckd.data.batch import Batch
from pckd.engine.acceleration import ChannelsLastAugment, compile_student
from pckd.engine.build import Built, build, lr_factor
from pckd.engine.checkpoint_io import (
    atomic_save,
    load_checkpoint_file,
    load_resume_checkpoint,
)
from pckd.engine.evaluate import evaluate
from pckd.engine.metrics import StepMeter
from pckd.engine.resume_check import check_resume, config_changes
from pckd.engine.run_dir import check_run_dir, create_run_dir
from pckd.engine.run_logger import RunLogger, peak_memory_mb
from pckd.engine.run_state import environment, rng_state, set_rng_state
from pckd.engine.signals import StopRequest
from pckd.errors import PckdWarning, TrainingStopped, UserError, WriteFailed
from pckd.methods.base import StepOutput
from pckd.run_folder import BEST, CONFIG, ENV, LAST, MANIFEST, PREVIOUS, SUMMARY, holds_checkpoint

_SIGNAL_CODES = {"SIGINT": 1, "SIGTERM": 2}  # agreed over ranks with a MAX all_reduce: SIGTERM wins
_SIGNAL_NAMES = {code: name for name, code in _SIGNAL_CODES.items()}

__all__ = ["Trainer", "TrainingStopped", "read_summary", "train"]


@dataclass
class EpochProgress:
    """The running state of one epoch: meters, the current log window, counters and timers."""

    epoch: int
    start_step: int
    n_steps: int
    lr: float
    meter: StepMeter
    window: StepMeter
    skipped: int = 0
    window_steps: int = 0  # steps in the current log window, and how many of them were skipped
    window_skipped: int = 0
    window_images: int = 0
    loss_terms: tuple[str, ...] = ()  # the method's weighted loss terms (the rest of the logged values are stats)
    t0: float = field(default_factory=time.perf_counter)
    window_t0: float = field(default_factory=time.perf_counter)


class Trainer:
    """Runs one configured training job in ``run_dir``.

    ``stop``: the stop request already listening for SIGTERM/SIGINT (the launcher's, entered before the data
    and models are built, so a signal during start-up is not lost); by default the trainer makes its own,
    active while :meth:`fit` runs.
    """

    def __init__(self, cfg: Any, built: Built | None = None, stop: StopRequest | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or StopRequest()
        self.run_dir = check_run_dir(cfg)  # read-only checks first: nothing is written before validation passes
        self.built = built or build(cfg)
        self.lock = create_run_dir(cfg, self.run_dir)
        if dist.is_main_process():
            note_run_dir(self.run_dir)  # an unexpected crash from here on leaves its traceback in RUN/crash.log
        self.device = self.built.device
        self.distiller = self.built.distiller
        self.data = self.built.data
        self.augment = ChannelsLastAugment(self.data.augment) if cfg.train.channels_last else self.data.augment
        self.model: torch.nn.Module = self.distiller
        if dist.is_distributed():
            if cfg.train.sync_bn:  # BN over the global batch, as one process would compute it
                dist.convert_batchnorm(self.distiller, self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.distiller, device_ids=ids, find_unused_parameters=self.distiller.has_unused_parameters)
        if cfg.train.compile:
            compile_student(self.distiller.student)
        self.extension: dict[str, tuple[Any, Any]] = {}  # settings a resume changed on purpose (train.epochs)
        try:
            self.logger = RunLogger(self.run_dir, enabled=dist.is_main_process())
        except WriteFailed as exc:
            if self.lock is not None:
                self.lock.release()
            raise WriteFailed(f"{exc}. Free space, then {self._next_step()}") from None
        self.start_epoch, self.start_step = 1, 0
        self.best_top1, self.best_epoch = -1.0, 0
        self.teacher_eval: dict[str, float] | None = None
        self.wall_time = 0.0
        # float16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == Precision.fp16 else None

    # ---- helpers -----------------------------------------------------------------------------------------
    def _autocast(self) -> AbstractContextManager[Any]:
        if self.cfg.train.precision == Precision.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        if self.cfg.train.precision == Precision.fp16:
            return torch.autocast(device_type=self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return evaluate(model, self.data.test, self.augment, self._autocast, self.cfg.train.channels_last)

    def _agree(self, stop: StopRequest, bad: bool = False) -> tuple[str | None, bool]:
        """The one cross-rank agreement: (the signal any rank received, SIGTERM winning; whether any rank saw a
        non-finite value). One small all_reduce under torchrun, nothing in one process."""
        signal_code, any_bad = dist.max_over_ranks([_SIGNAL_CODES.get(stop.requested or "", 0), int(bad)],
                                                   self.device)
        return _SIGNAL_NAMES.get(signal_code), bool(any_bad)

    # ---- checkpoints -------------------------------------------------------------------------------------
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
            "rng": rng_state(),
            "method_state": self.distiller.method_state(),
            "best_top1": self.best_top1, "best_epoch": self.best_epoch, "last_eval": last_eval or {},
            "teacher_eval": self.teacher_eval or {}, "wall_time": self.wall_time,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "config": to_yaml(self.cfg),
        }

    def save(self, epoch: int, step: int, last_eval: dict[str, float] | None, best: bool = False) -> None:
        """Rank 0 writes the checkpoint; under torchrun every rank calls this and waits until the file is
        complete (so a rank that stops or resumes next sees the finished file), and all stop if it failed."""
        self._check_weights(epoch, step)
        failure: TrainingStopped | None = None
        if dist.is_main_process():
            failure = self._write_checkpoint(epoch, step, last_eval, best)
        if dist.max_over_ranks([int(failure is not None)], self.device)[0]:  # collective: the barrier
            raise failure or TrainingStopped("rank 0 could not write its checkpoint (see its message)", exit_code=1)

    def _write_checkpoint(self, epoch: int, step: int, last_eval: dict[str, float] | None,
                          best: bool) -> TrainingStopped | None:
        state = self._checkpoint(epoch, step, last_eval)
        # best.pt before last.pt: a last.pt claiming this epoch as the best exists only once best.pt holds it, so
        # a resume after a failed write either retrains this epoch (and writes best.pt) or finds best.pt written.
        target = self.run_dir / MANIFEST
        try:
            for name in (BEST, LAST, PREVIOUS) if best else (LAST, PREVIOUS):
                self.logger.record(name)
            if best:
                target = self.run_dir / BEST
                atomic_save(state, target)
            target = self.run_dir / LAST
            atomic_save(state, target, keep_previous=self.run_dir / PREVIOUS)
        except (OSError, WriteFailed) as exc:  # disk full, quota, vanished folder: files already there stay
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            kept = [str(self.run_dir / n) for n in (LAST, PREVIOUS) if (self.run_dir / n).exists()]
            return TrainingStopped(
                f"could not write checkpoint '{target}' ({reason}); existing checkpoints are untouched "
                f"({', '.join(kept) or 'none yet'}). Free space, then {self._next_step()}", exit_code=1)
        return None

    def _next_step(self) -> str:
        """What to run once a write failure is fixed: the resume command, or the same command again."""
        if holds_checkpoint(self.run_dir):
            return f"resume with: {self.resume_command()}"
        return "run the same command again (no checkpoint was written yet)"

    def _load_resume_state(self) -> tuple[dict[str, Any], Path]:
        """Rank 0 picks the checkpoint (``last.pt``, or its fallback) and every rank loads that same file, so
        output_dir must be on a filesystem every node sees. Errors are raised on all ranks alike."""
        if not dist.is_distributed():
            return load_resume_checkpoint(self.run_dir, self._check_fits)
        choice: tuple[str, str] = ("error", "")
        state: dict[str, Any] | None = None
        if dist.is_main_process():
            try:
                state, path = load_resume_checkpoint(self.run_dir, self._check_fits)
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

    def _check_fits(self, state: dict[str, Any], path: Path) -> None:
        """UserError unless the checkpoint's weights and heads have exactly this run's names and shapes (a
        checkpoint of another method or network is left to :meth:`resume`, which names the mismatch)."""
        if state["method"] != self.cfg.method or state["arch"] != self.cfg.student.arch:
            return
        student_keys = {f"student.{k}" for k in self.distiller.student.state_dict()}
        full = self.distiller.state_dict()
        for entry, expected in (("model", self.distiller.student.state_dict()),
                                ("heads", {k: v for k, v in full.items() if k not in student_keys})):
            saved = state[entry]
            missing, extra = [k for k in expected if k not in saved], [k for k in saved if k not in expected]
            shapes = [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
            if missing or extra or shapes:
                first = (f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'" if extra
                         else f"'{shapes[0]}' has shape {tuple(state[entry][shapes[0]].shape)}")
                raise UserError(f"checkpoint '{path}' does not fit this run's {entry} ({first}; "
                                f"{len(missing) + len(extra) + len(shapes)} entries differ); use another checkpoint")
        groups = state["optimizer"].get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.built.optimizer.param_groups):
            raise UserError(f"checkpoint '{path}' does not fit this run's optimizer (its parameter groups differ); "
                            "use another checkpoint")

    def resume(self) -> None:
        """Restore weights, heads, optimizer, schedule, method state, RNG and bookkeeping from the checkpoint."""
        state, path = self._load_resume_state()
        if state["method"] != self.cfg.method or state["arch"] != self.cfg.student.arch:
            raise UserError(
                f"'{path}' is a {state['method']} run of {state['arch']} but the config asks for "
                f"{self.cfg.method} with {self.cfg.student.arch}; resume with the run's own config.yaml"
            )
        done = int(state["epoch"]) - (1 if state["step"] else 0)  # complete epochs in the checkpoint
        # A finished run whose summary.json could not be written (disk full) resumes to write it.
        if not state["step"] and done >= self.cfg.train.epochs and isinstance(state.get("config"), str) \
                and not config_changes(state["config"], to_yaml(self.cfg)) and (self.run_dir / SUMMARY).is_file():
            raise TrainingStopped(
                f"the run in {self.run_dir} already finished its {done} epochs (best test top-1 "
                f"{state['best_top1']:.2f}% at epoch {state['best_epoch']}); to train longer, resume with "
                f"train.epochs=N (N > {done})", exit_code=0)
        if isinstance(state.get("config"), str):
            self.extension = check_resume(state["config"], to_yaml(self.cfg), done, str(self.run_dir / CONFIG))
        self._warn_about_extension(state)
        student_sd = {f"student.{k}": v for k, v in state["model"].items()}
        self.distiller.load_state_dict({**student_sd, **state["heads"]})
        self.built.optimizer.load_state_dict(state["optimizer"])
        self.built.schedule.load_state_dict(state["scheduler"])
        self.distiller.load_method_state(state["method_state"])
        set_rng_state(state["rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
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
        self.logger.log({"kind": "resume", "epoch": self.start_epoch, "step": self.start_step, "from": path.name,
                         "changes": {k: list(v) for k, v in self.extension.items()}})

    def _warn_about_extension(self, state: dict[str, Any]) -> None:
        """Say what an extension of ``train.epochs`` does to the learning rate (a cosine schedule jumps)."""
        if "train.epochs" not in self.extension:
            return
        old, new = self.extension["train.epochs"]
        note = f"train.epochs extended from {old} to {new}; the change is recorded in metrics.jsonl"
        if self.cfg.train.schedule == Schedule.cosine and isinstance(old, int):
            done = int(state["epoch"])
            before = self.cfg.train.lr * lr_factor(done, dataclasses.replace(self.cfg.train, epochs=old))
            after = self.cfg.train.lr * lr_factor(done + 1, self.cfg.train)
            note += (f"; the cosine learning rate jumps from {before:.4g} (epoch {done} of {old}) to {after:.4g} "
                     f"(epoch {done + 1} of {new})")
        warnings.warn(note, PckdWarning, stacklevel=3)

    def resume_command(self) -> str:
        """The shell command that continues this run (from the current working directory), as it must be typed:
        under torchrun with its prefix, and with any extension this run was resumed with."""
        extra = "".join(f" {k}={shlex.quote(str(new))}" for k, (_, new) in self.extension.items())
        command = f"pckd train {shlex.quote(str(self.run_dir / CONFIG))} resume=true{extra}"
        if not dist.is_distributed():
            return command
        launcher = os.environ.get("PCKD_LAUNCHER")  # set by `pckd torchrun`, with its exact options
        if launcher:
            return f"{launcher} {command[len('pckd '):]}"
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size()))
        nodes = max(dist.world_size() // max(per_node, 1), 1)
        launcher = (f"torchrun --nproc_per_node={per_node}" if nodes == 1 else
                    f"torchrun --nnodes={nodes} --nproc_per_node={per_node} <your rendezvous options>")
        return f"{launcher} -m {command}"

    # ---- main loop ---------------------------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (or only up to ``stop_after_epoch``, as if stopped there);
        returns the summary (also written to summary.json). The folder's lock is released however it ends."""
        try:
            with self.stop:
                return self._fit(stop_after_epoch, self.stop)
        except WriteFailed as exc:  # a run file (env.json, metrics.jsonl, ...) could not be written: exit 1
            with contextlib.suppress(WriteFailed):
                self.logger.close()
            raise WriteFailed(f"{exc}. Free space, then {self._next_step()}") from None
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit(self, stop_after_epoch: int | None, stop: StopRequest) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.resume:
            self.resume()  # before writing anything: an unreadable run must stay as it was
        if not cfg.resume:  # a resumed run keeps the config it started with; changes are logged, not rewritten
            self.logger.write_text(CONFIG, to_yaml(dataclasses.replace(cfg, resume=False, overwrite=False)))
            self.logger.write_json(ENV, environment(cfg))
        if self.distiller.teacher is not None and cfg.train.eval_teacher and self.teacher_eval is None \
                and stop.requested is None:
            self.teacher_eval = self._evaluate(self.distiller.teacher)
            self.logger.log({"kind": "teacher", **self.teacher_eval})
            if dist.is_main_process():
                print(f"teacher {cfg.teacher.arch}: test top-1 {self.teacher_eval['top1']:.2f}% "
                      f"top-5 {self.teacher_eval['top5']:.2f}%", flush=True)
        signal, _ = self._agree(stop)
        if signal is not None:  # during start-up: save where training would begin, so a resume starts there
            epoch = self.start_epoch if self.start_step else self.start_epoch - 1
            self.save(epoch, self.start_step, None)
            self._stop_for_signal(signal, epoch, self.start_step, saved=True)
        last_eval: dict[str, float] | None = None
        for epoch in range(self.start_epoch, min(cfg.train.epochs, stop_after_epoch or cfg.train.epochs) + 1):
            last_eval = self._run_epoch(epoch, stop)
        return self._finish(last_eval)

    def _run_epoch(self, epoch: int, stop: StopRequest) -> dict[str, float]:
        progress = self._begin_epoch(epoch)
        bar = tqdm(total=progress.n_steps, initial=progress.start_step, desc=f"epoch {epoch}/{self.cfg.train.epochs}",
                   leave=False, disable=not (self.cfg.train.progress and dist.is_main_process()), dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)  # logs stay short when not a terminal
        loader = self.data.train
        for step, batch in enumerate(loader.iter_from(progress.start_step), start=progress.start_step):
            out, total, skipped = self._step(batch, epoch, progress)
            progress.loss_terms = tuple(out.losses)
            progress.window_steps += 1
            progress.window_skipped += int(skipped)
            if not skipped:  # metrics average over the steps that ran; a skipped step is counted, not averaged
                values = {**out.losses, "loss": total, **out.stats}
                progress.meter.update(values, out.logits, batch.labels, step=step)
                progress.window.update(values, out.logits, batch.labels, step=step)
            progress.window_images += batch.size * dist.world_size()
            bar.update(1)
            at_log = (step + 1) % self.cfg.train.log_interval == 0 or step + 1 == progress.n_steps
            if at_log:
                self._log_window(progress, step, stop, bar)
            # One process checks the flag after every step; ranks only stop at an agreed log-interval boundary.
            if stop.requested is not None and step + 1 < progress.n_steps and (at_log or not dist.is_distributed()):
                if not at_log:  # never save weights a non-finite step has already spoiled
                    _, bad = progress.window.read()
                    self._check_finite(bad, progress.window, epoch, progress.n_steps)
                self._stop_for_signal(stop.requested, epoch, step + 1)
        bar.close()
        return self._end_epoch(progress, stop)

    def _begin_epoch(self, epoch: int) -> EpochProgress:
        """Set the epoch's order, mode, hooks and learning rate."""
        loader = self.data.train
        loader.set_epoch(epoch)
        start_step = self.start_step if epoch == self.start_epoch else 0
        self.distiller.train()
        if start_step == 0:  # a mid-epoch resume continues an epoch whose start hook already ran (state restored)
            self.distiller.on_epoch_start(epoch)
        lr = self.built.schedule.set_epoch(epoch)
        return EpochProgress(epoch, start_step, len(loader), lr, StepMeter(self.device), StepMeter(self.device))

    def _step(self, batch: Batch, epoch: int, progress: EpochProgress) -> tuple[StepOutput, torch.Tensor, bool]:
        """Forward, backward, optimizer step (skipped when ``on_nonfinite=skip_step`` finds a bad loss).
        Returns the method's output, the total loss and whether the step was skipped."""
        opt = self.built.optimizer
        with self._autocast():
            out: StepOutput = self.model(batch, epoch)
        total = out.total
        opt.zero_grad(set_to_none=True)
        if self.cfg.train.on_nonfinite == OnNonFinite.skip_step and not self._all_finite(total):  # opt-in sync
            progress.skipped += 1
            return out, total, True
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.step(opt)  # skips the step (and lowers the scale) when a gradient overflowed
            self.scaler.update()
        else:
            self.built.step(out.losses, total, opt)  # the optimizer's update (SGD, or DOT's two momenta)
        return out, total, False

    def _log_window(self, progress: EpochProgress, step: int, stop: StopRequest, bar: Any) -> None:
        """Read the window's device-side metrics, agree with the other ranks, log, and start a new window."""
        if progress.window_skipped == progress.window_steps:  # skip_step skipped them all: training is stuck
            first = step + 2 - progress.window_steps
            raise TrainingStopped(
                f"non-finite loss at every step of epoch {progress.epoch} steps {first}-{step + 1} of "
                f"{progress.n_steps} (train.on_nonfinite=skip_step skipped all {progress.window_steps}: the weights "
                f"no longer train); {self._last_good()}. Lower train.lr", exit_code=3)
        means, bad = progress.window.read()
        signal, any_bad = self._agree(stop, bool(bad))
        self._check_finite(bad, progress.window, progress.epoch, progress.n_steps, elsewhere=any_bad)
        if signal:
            stop.requested = signal
        elapsed = time.perf_counter() - progress.window_t0
        rate = progress.window_images / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['top1']:.1f}", img_s=f"{rate:.0f}")
        self.logger.log({"kind": "step", "epoch": progress.epoch, "step": step + 1, "lr": progress.lr,
                         "img_per_s": rate, "loss_terms": list(progress.loss_terms),
                         **{f"train/{k}": v for k, v in means.items()}},
                        step=(progress.epoch - 1) * progress.n_steps + step + 1)
        progress.window.reset()
        progress.window_t0, progress.window_images = time.perf_counter(), 0
        progress.window_steps = progress.window_skipped = 0

    def _end_epoch(self, progress: EpochProgress, stop: StopRequest) -> dict[str, float]:
        """Check the epoch's metrics, evaluate, let the method write its records, log, checkpoint."""
        cfg, epoch = self.cfg, progress.epoch
        train_means, bad = progress.meter.read()
        self._check_finite(bad, progress.meter, epoch, progress.n_steps)
        self._check_weights(epoch, 0)
        epoch_time = time.perf_counter() - progress.t0
        self.wall_time += epoch_time
        test = self._evaluate(self.distiller.student)
        improved = test["top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = test["top1"], epoch
        self.distiller.on_epoch_end(epoch, self.logger)
        images = (progress.n_steps - progress.start_step) * cfg.train.batch_size
        record = {"kind": "epoch", "epoch": epoch, "lr": progress.lr, "epoch_time_s": epoch_time,
                  "img_per_s": images / max(epoch_time, 1e-9), "peak_memory_mb": peak_memory_mb(self.device),
                  "skipped_steps": progress.skipped, **{f"train/{k}": v for k, v in train_means.items()},
                  "test/top1": test["top1"], "test/top5": test["top5"], "test/loss": test["loss"],
                  "best/top1": self.best_top1}
        self.logger.log(record, step=epoch)
        if dist.is_main_process():
            tqdm.write(f"{self.run_dir.name}: epoch {epoch}/{cfg.train.epochs}  loss {train_means.get('loss', float('nan')):.4f}  "
                       f"train top-1 {train_means.get('top1', 0):.2f}%  test top-1 {test['top1']:.2f}%  "
                       f"(best {self.best_top1:.2f}% @ {self.best_epoch})  {record['img_per_s']:.0f} img/s")
        signal, _ = self._agree(stop)
        stopping = signal is not None and epoch < cfg.train.epochs
        if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs or improved or stopping:
            self.save(epoch, 0, test, best=improved)
        if stopping and signal is not None:
            self._stop_for_signal(signal, epoch, 0, saved=True)
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
        if not (bad or elsewhere) or self.cfg.train.on_nonfinite == OnNonFinite.skip_step:
            return
        good = self._last_good()
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

    def _last_good(self) -> str:
        last = self.run_dir / LAST
        return f"last good checkpoint: {last}" if last.exists() else "no checkpoint was written yet"

    def _check_weights(self, epoch: int, step: int) -> None:
        """Stop (exit code 3) before non-finite weights are evaluated or saved: a finite loss can still have
        produced them (an overflowing update). One host synchronisation, agreed over ranks."""
        tensors = {k: v for k, v in self.distiller.state_dict().items() if v.is_floating_point()}
        flags = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).logical_not().cpu().tolist()
        bad = [k for k, flag in zip(tensors, flags) if flag]
        if not dist.max_over_ranks([int(bool(bad))], self.device)[0]:
            return
        where = f"after epoch {epoch}" if step == 0 else f"by epoch {epoch} step {step}"
        first = f", first '{bad[0]}'" if bad else " on another rank"
        raise TrainingStopped(
            f"the weights became non-finite {where} ({len(bad)} of {len(tensors)} tensors{first}) and were not "
            f"saved; {self._last_good()}. Lower train.lr", exit_code=3)

    def _stop_for_signal(self, signame: str, epoch: int, step: int, saved: bool = False) -> None:
        if not saved:
            self.save(epoch, step, None)
        self.logger.close()
        code = 0 if signame == "SIGTERM" else 130
        where = f"after epoch {epoch}" if step == 0 else f"at epoch {epoch} step {step}"
        if epoch == 0:
            where = "before the first step"
        raise TrainingStopped(
            f"{signame}: stopped {where}; checkpoint saved in {self.run_dir / LAST}. "
            f"Resume with: {self.resume_command()}", exit_code=code)

    def _finish(self, last_eval: dict[str, float] | None) -> dict[str, Any]:
        if last_eval is None:  # resumed a finished run
            last_eval = self._evaluate(self.distiller.student)
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
        self.logger.write_json(SUMMARY, summary)
        self.logger.close()
        return summary


def train(cfg: Any) -> dict[str, Any]:
    """Train from a resolved config; returns the run summary."""
    return Trainer(cfg).fit()


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` of a finished run."""
    summary: dict[str, Any] = json.loads((Path(run_dir) / SUMMARY).read_text())
    return summary
