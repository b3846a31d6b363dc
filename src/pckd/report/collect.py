"""Find run directories and read what the trainer wrote into them (config.yaml, metrics.jsonl, summary.json).

A run directory is any folder holding ``summary.json`` or ``metrics.jsonl``. A run without a readable summary
(still running, stopped or crashed) is kept with the numbers of its last logged epoch and flagged incomplete.
Unreadable files never raise: each problem is passed to ``on_problem`` as one line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pckd.errors import PckdWarning, UserError

RUN_MARKERS = ("summary.json", "metrics.jsonl")
# Folders the trainer writes inside a run that never hold runs themselves (TensorBoard can hold thousands of files).
_SKIP_DIRS = {"tensorboard", "__pycache__", ".git"}
# Config entries besides the method's own section that make two runs of one method different experiments. The
# teacher checkpoint is not one of them (it changes with every column); tables warn when a cell mixes several.
VARIANT_KEYS = ("train.epochs", "train.schedule", "train.optimizer")

Problem = Callable[[str], None]


@dataclass
class RunRecord:
    """Everything the report needs from one run directory."""

    path: Path
    method: str
    student: str
    teacher: str | None  # None: trained without a teacher (ce teachers and scratch students, ...)
    dataset: str  # data.name plus any slicing (classes / train_limit / test_limit)
    seed: int | None
    epochs_planned: int | None
    epochs_done: int
    best_top1: float | None
    last_top1: float | None
    last_top5: float | None
    teacher_top1: float | None
    teacher_checkpoint: str | None
    complete: bool  # summary.json was read; otherwise the numbers come from the last logged epoch
    variant: tuple[tuple[str, str], ...] = ()  # (key, JSON value) of the method's section and VARIANT_KEYS
    epoch_curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, test top-1)
    loss_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # term -> (global step, value)

    def top1(self, metric: str) -> float | None:
        """Best or last test top-1 (percent)."""
        return self.best_top1 if metric == "best" else self.last_top1


def _warn(message: str) -> None:
    warnings.warn(PckdWarning(message), stacklevel=2)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every run directory at or below ``paths`` (sorted, without duplicates)."""
    found: set[Path] = set()
    for root in paths:
        root = Path(root).expanduser()
        if not root.exists():
            raise UserError(f"report path '{root}' not found; pass run directories or folders holding them")
        if root.is_file():  # e.g. a summary.json given directly: its folder is the run
            root = root.parent
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
            if any(name in files for name in RUN_MARKERS):
                found.add(Path(folder).resolve())
    return sorted(found)


def _read_json_object(path: Path, on_problem: Problem) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        on_problem(f"{path}: unreadable ({exc.__class__.__name__}: {exc}); treating the run as incomplete")
        return None
    if not isinstance(data, dict):
        on_problem(f"{path}: expected a JSON object, found {type(data).__name__}; treating the run as incomplete")
        return None
    return data


def _read_config(path: Path, on_problem: Problem) -> dict[str, Any]:
    if not path.is_file():
        on_problem(f"{path}: missing; method and models are taken from summary.json")
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        on_problem(f"{path}: unreadable ({exc.__class__.__name__}); method and models are taken from summary.json")
        return {}
    if not isinstance(data, dict):
        on_problem(f"{path}: not a mapping; method and models are taken from summary.json")
        return {}
    return data


def _read_metrics(path: Path, on_problem: Problem) -> list[dict[str, Any]]:
    """The JSON lines of metrics.jsonl; bad lines (a crash can cut the last one) are skipped and reported."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        on_problem(f"{path}: unreadable ({exc}); no curves for this run")
        return []
    records, bad = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        on_problem(f"{path}: skipped {len(bad)} unreadable line(s) (line {shown})")
    return records


def _number(value: Any) -> float | None:
    """A finite float, else None (the logger writes non-finite values as strings such as "nan")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [item for key in sorted(value) for item in _flatten(f"{prefix}.{key}", value[key])]
    return [(prefix, json.dumps(value, sort_keys=True))]


def _dataset_label(config: dict[str, Any]) -> str:
    name = _get(config, "data.name") or "unknown data"
    slicing = [f"{key}={_get(config, f'data.{key}')}" for key in ("classes", "train_limit", "test_limit")
               if _get(config, f"data.{key}") is not None]
    return f"{name} ({', '.join(slicing)})" if slicing else str(name)


def _epoch_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch records, the last one per epoch (a resumed run may log an epoch twice), in epoch order."""
    by_epoch = {r["epoch"]: r for r in records if r.get("kind") == "epoch" and isinstance(r.get("epoch"), int)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _loss_curves(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each logged loss term (and the total "loss") against the global step, from the "step" records. Records
    that list their ``loss_terms`` keep only those (not the methods' statistics such as a threshold); older runs
    keep every train/<value> except the accuracies."""
    steps = {(r["epoch"], r["step"]): r for r in records
             if r.get("kind") == "step" and isinstance(r.get("epoch"), int) and isinstance(r.get("step"), int)}
    if not steps:
        return {}
    # The last log of an epoch is at its final step, so the largest step seen is the epoch's length.
    per_epoch = max(step for _, step in steps)
    curves: dict[str, list[tuple[int, float]]] = {}
    for (epoch, step) in sorted(steps):
        record = steps[(epoch, step)]
        listed = record.get("loss_terms")
        keep = {*listed, "loss"} if isinstance(listed, list) else None
        for key, value in record.items():
            term = key[len("train/"):] if key.startswith("train/") else None
            number = _number(value)
            if term and term not in ("top1", "top5") and (keep is None or term in keep) and number is not None:
                curves.setdefault(term, []).append(((epoch - 1) * per_epoch + step, number))
    return curves


def read_run(run_dir: Path, on_problem: Problem = _warn) -> RunRecord | None:
    """Read one run directory; None (with a reported problem) when it says too little to place it in a table."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir / "config.yaml", on_problem)
    summary = _read_json_object(run_dir / "summary.json", on_problem)
    records = _read_metrics(run_dir / "metrics.jsonl", on_problem)
    epochs = _epoch_records(records)
    teacher_records = [r for r in records if r.get("kind") == "teacher"]

    method = (summary or {}).get("method") or config.get("method")
    student = (summary or {}).get("student") or _get(config, "student.arch")
    if not isinstance(method, str) or not isinstance(student, str):
        on_problem(f"{run_dir}: neither summary.json nor config.yaml names the method and student; run skipped")
        return None
    if summary is not None:
        teacher = summary.get("teacher")
    elif teacher_records or (_get(config, "train.eval_teacher") is False and _get(config, "teacher.checkpoint")):
        teacher = _get(config, "teacher.arch")
    else:
        teacher = None  # the trainer evaluates a teacher before the first step; no such record means none

    if summary is not None:
        best, last = _number(summary.get("best_top1")), _number(summary.get("last_top1"))
        last5, done = _number(summary.get("last_top5")), len(epochs) or int(summary.get("epochs") or 0)
        teacher_top1 = _number(summary.get("teacher_top1"))
    else:
        tops = [t for t in (_number(r.get("test/top1")) for r in epochs) if t is not None]
        best = max(tops) if tops else None
        last = _number(epochs[-1].get("test/top1")) if epochs else None
        last5 = _number(epochs[-1].get("test/top5")) if epochs else None
        done = len(epochs)
        teacher_top1 = _number(teacher_records[-1].get("top1")) if teacher_records else None
    if best is not None and best < 0:  # the trainer's "no epoch yet" sentinel
        best = None

    section = config.get(method) if isinstance(config.get(method), dict) else {}
    variant = _flatten(method, section) + [(key, json.dumps(_get(config, key))) for key in VARIANT_KEYS]
    seed = _get(config, "train.seed")
    planned = _get(config, "train.epochs") or (summary or {}).get("epochs")
    return RunRecord(
        path=run_dir, method=method, student=student, teacher=teacher, dataset=_dataset_label(config),
        seed=seed if isinstance(seed, int) else None, epochs_planned=planned if isinstance(planned, int) else None,
        epochs_done=done, best_top1=best, last_top1=last, last_top5=last5, teacher_top1=teacher_top1,
        teacher_checkpoint=_get(config, "teacher.checkpoint") if teacher is not None else None,
        complete=summary is not None, variant=tuple(variant),
        epoch_curve=[(r["epoch"], t) for r in epochs if (t := _number(r.get("test/top1"))) is not None],
        loss_curves=_loss_curves(records))


def collect_runs(paths: list[Path], on_problem: Problem = _warn) -> list[RunRecord]:
    """Read every run directory at or below ``paths``. Problems (corrupt or missing files) go to ``on_problem``
    as one line each (default: a ``pckd: warning:`` line); raises UserError when a path is missing or no run
    directory is found."""
    dirs = find_run_dirs(paths)
    if not dirs:
        where = ", ".join(str(p) for p in paths)
        raise UserError(f"no run directory (a folder with summary.json or metrics.jsonl) found under {where}")
    runs = [run for run in (read_run(d, on_problem) for d in dirs) if run is not None]
    for run in runs:
        if not run.complete and run.epochs_done == 0:
            on_problem(f"{run.path}: no finished epoch yet; shown without accuracy")
    return runs
