"""`pckd demo`: a teacher and distilled students on the embedded digits data, in a few minutes on a CPU.

Every run is an ordinary `pckd train` run (configs built in code), so the demo exercises the same path users do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pckd.config import resolve_config, to_yaml
from pckd.engine.trainer import train

TEACHER_ARCH = "resnet14"
STUDENT_ARCH = "resnet8"
TEACHER_EPOCHS = 10
STUDENT_EPOCHS = 6

_COMMON = {
    "data": {"name": "digits"},
    "train": {"batch_size": 64, "lr": 0.05, "schedule": "cosine", "seed": 0, "log_interval": 10,
              "eval_batch_size": 512},
}

# Student methods shown in the table; each entry is (method, overrides of its section). Weights follow the
# methods' CIFAR defaults; short schedules need nothing else.
STUDENT_RUNS: dict[str, dict[str, Any]] = {
    "ce": {},
    "kd": {},
    "pckd": {},
    "ckd": {"weight": 10.0, "tau": 1.0},
}


def _config(method: str, run_dir: Path, epochs: int, arch: str, extra: dict[str, Any] | None = None,
            teacher_ckpt: str | None = None) -> Any:
    base = {**_COMMON, "method": method, "output_dir": str(run_dir), "overwrite": True,
            "student": {"arch": arch}, "train": {**_COMMON["train"], "epochs": epochs}}
    if teacher_ckpt is not None:
        base["teacher"] = {"arch": TEACHER_ARCH, "checkpoint": teacher_ckpt}
    if extra:
        base[method] = extra
    return resolve_config(None, [], base=base)


def run_demo(output_dir: str | Path = "runs/demo", epochs_scale: float = 1.0,
             methods: list[str] | None = None) -> list[dict[str, Any]]:
    """Train the teacher, then one student per method; print a Markdown table and return the summaries."""
    root = Path(output_dir)
    scale = lambda n: max(1, round(n * epochs_scale))  # noqa: E731
    start = time.perf_counter()
    print(f"pckd demo: teacher {TEACHER_ARCH} on scikit-learn digits (32x32), then {STUDENT_ARCH} students\n")
    teacher_cfg = _config("ce", root / "teacher", scale(TEACHER_EPOCHS), TEACHER_ARCH)
    teacher = train(teacher_cfg)
    teacher_ckpt = str(root / "teacher" / "best.pt")
    rows = [{"run": f"teacher ({TEACHER_ARCH}, ce)", **teacher}]
    for method in methods or list(STUDENT_RUNS):
        if method not in STUDENT_RUNS:
            raise ValueError(f"unknown demo method {method!r}; choose from {', '.join(STUDENT_RUNS)}")
        cfg = _config(method, root / f"student-{method}", scale(STUDENT_EPOCHS), STUDENT_ARCH,
                      STUDENT_RUNS[method], None if method == "ce" else teacher_ckpt)
        rows.append({"run": f"student ({STUDENT_ARCH}, {method})", **train(cfg)})
    elapsed = time.perf_counter() - start
    table = format_table(rows)
    print("\n" + table)
    print(f"\n{len(rows)} runs in {elapsed:.0f} s; run folders (config, metrics.jsonl, TensorBoard, checkpoints) "
          f"under {root}/")
    (root / "results.md").write_text(table + "\n")
    (root / "demo_config.yaml").write_text(to_yaml(teacher_cfg))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of best/last test accuracy per run."""
    lines = ["| run | epochs | best top-1 (%) | last top-1 (%) | last top-5 (%) | time (s) | run folder |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['epochs']} | {r['best_top1']:.2f} | {r['last_top1']:.2f} | "
                     f"{r['last_top5']:.2f} | {r['wall_time_s']:.0f} | {r['run_dir']} |")
    return "\n".join(lines)
