"""`pckd demo`: a teacher and distilled students on the embedded digits data, in a few minutes on a CPU.

Every run is an ordinary `pckd train` run (configs built in code), so the demo exercises the same path users do.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from pckd.config import load_config
from pckd.engine.trainer import train
from pckd.errors import TrainingStopped, UserError

TEACHER_ARCH = "resnet14"
STUDENT_ARCH = "resnet8"
TEACHER_EPOCHS = 8
STUDENT_EPOCHS = 5

_COMMON: dict[str, Any] = {
    "data": {"name": "digits"},
    "train": {"batch_size": 64, "lr": 0.05, "schedule": "cosine", "seed": 0, "log_interval": 10,
              "eval_batch_size": 512},
}

# Student methods shown in the table by default; each entry is (method, overrides of its section). Weights
# follow the methods' CIFAR defaults; short schedules need nothing else. The baselines (`--methods all`) run
# with their CIFAR defaults too: the demo shows that they run, not how well they are tuned for digits.
STUDENT_RUNS: dict[str, dict[str, Any]] = {
    "ce": {},
    "kd": {},
    "pckd": {},
    "ckd": {"weight": 10.0, "tau": 1.0},
}
def short_first_stage(method: str, epochs: int) -> dict[str, Any]:
    """Overrides that fit a two-stage method's first stage (``init_epochs``: AB/FT/FSP's 30, SSKD's 60) into the
    demo's short schedule: one epoch when the run has two or more, none otherwise (training refuses a first stage
    as long as the run). Read off the method's fields, so a new two-stage method needs no entry here."""
    from pckd.methods.base import method_registry

    fields = {f.name for f in dataclasses.fields(method_registry()[method].params)}
    if "init_epochs" not in fields:
        return {}
    out: dict[str, Any] = {"init_epochs": 1 if epochs >= 2 else 0}
    if "init_milestones" in fields:
        out["init_milestones"] = []
    return out


def demo_methods(requested: list[str] | None) -> list[str]:
    """The student methods to run: the default four, ``["all"]`` for every registered method that trains a
    student, or an explicit list (checked against the registry)."""
    from pckd.methods.base import method_registry

    students = ["ce"] + sorted(n for n, spec in method_registry().items() if spec.cls.needs_teacher)
    if not requested:
        return list(STUDENT_RUNS)
    if requested == ["all"]:
        return list(STUDENT_RUNS) + [m for m in students if m not in STUDENT_RUNS]
    unknown = [m for m in requested if m not in students]
    if unknown:
        raise UserError(f"pckd demo --methods: unknown student method {unknown[0]!r}; choose from all, "
                        f"{', '.join(students)}")
    return requested


def _config(method: str, run_dir: Path, epochs: int, arch: str, extra: dict[str, Any] | None = None,
            teacher_ckpt: str | None = None) -> Any:
    base = {**_COMMON, "method": method, "output_dir": str(run_dir), "overwrite": True,
            "student": {"arch": arch}, "train": {**_COMMON["train"], "epochs": epochs}}
    if teacher_ckpt is not None:
        base["teacher"] = {"arch": TEACHER_ARCH, "checkpoint": teacher_ckpt}
    if extra:
        base[method] = extra
    return load_config(None, [], base=base)


def run_demo(output_dir: str | Path = "runs/demo", epochs_scale: float = 1.0,
             methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Train the teacher, then one student per method; print a Markdown table and return the summaries."""
    students = demo_methods(methods)  # checked before anything trains
    if not (math.isfinite(epochs_scale) and 0 < epochs_scale <= 1000):
        raise UserError(f"pckd demo --scale {epochs_scale}: must be a number in (0, 1000], e.g. --scale 0.2 for a "
                        f"smoke run")
    root = Path(output_dir)
    scale = lambda n: max(1, round(n * epochs_scale))  # noqa: E731
    start = time.perf_counter()
    print(f"pckd demo: teacher {TEACHER_ARCH} on scikit-learn digits (32x32), then {STUDENT_ARCH} students\n")
    teacher_cfg = _config("ce", root / "teacher", scale(TEACHER_EPOCHS), TEACHER_ARCH)
    teacher = train(teacher_cfg)
    teacher_ckpt = str(root / "teacher" / "best.pt")
    rows = [{"run": f"teacher ({TEACHER_ARCH}, ce)", **teacher}]
    for method in students:
        epochs = scale(STUDENT_EPOCHS)
        cfg = _config(method, root / f"student-{method}", epochs, STUDENT_ARCH,
                      STUDENT_RUNS.get(method) or short_first_stage(method, epochs),
                      None if method == "ce" else teacher_ckpt)
        name = f"student ({STUDENT_ARCH}, {method})"
        try:
            rows.append({"run": name, **train(cfg)})
        except TrainingStopped as exc:  # e.g. a CIFAR-tuned weight diverging on digits: report it, go on
            print(f"pckd demo: {method} stopped: {exc}")
            rows.append({"run": f"{name}: stopped ({exc.__class__.__name__})", "epochs": cfg.train.epochs,
                         "best_top1": float("nan"), "last_top1": float("nan"), "last_top5": float("nan"),
                         "wall_time_s": float("nan"), "run_dir": str(cfg.output_dir)})
    elapsed = time.perf_counter() - start
    table = format_table(rows)
    print("\n" + table)
    print(f"\n{len(rows)} runs in {elapsed:.0f} s; run folders (config, metrics.jsonl, TensorBoard, checkpoints) "
          f"under {root}/")
    (root / "results.md").write_text(table + "\n")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of best/last test accuracy per run."""
    lines = ["| run | epochs | best top-1 (%) | last top-1 (%) | last top-5 (%) | time (s) | run folder |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['epochs']} | {r['best_top1']:.2f} | {r['last_top1']:.2f} | "
                     f"{r['last_top5']:.2f} | {r['wall_time_s']:.0f} | {r['run_dir']} |")
    return "\n".join(lines)
