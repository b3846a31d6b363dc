"""Benchmark: training-step throughput and peak memory of `ce`, `kd` and `pckd`, and augmentation throughput,
each against a reference written the way the released PCKD code works (``benchmarks/reference_step.py``).

Everything is measured in the same run on the same machine. Every (pair, method, implementation) runs in a
fresh subprocess (so its peak memory is its own) that loads the CIFAR-100 training set, builds the models,
runs ``--warmup`` steps and times ``--steps`` steps. A step's time runs from asking the loader for the batch to
the end of the optimizer step, so data loading and augmentation are inside it, and an epoch is
``ceil(50000 / batch)`` such steps (same count for both implementations).

Implementations:
  reference   per-sample PIL augmentation in DataLoader workers, loss modules called one by one, preview
              weights broadcast through a Python list of ``.item()`` reads (fp32, NCHW);
  project     the project's step as the trainer runs it (in-memory loader, batch augmentation on the training
              device, ``Distiller`` forward, summed losses, SGD), fp32, default flags;
  project+cl  the same with ``train.channels_last=true``.

For the project implementations the subprocess also times the *bare* networks on the same views (student
forward + backward of a trivial loss, teacher forward without autograd): ``step - bare`` is the loss-side
overhead (augmentation, heads, losses, optimizer). It also times the teacher forward under ``no_grad`` against
``inference_mode`` (+ the clones that make its outputs usable in the student's graph).

The augmentation benchmark times ``BatchAugment.standard`` / ``rotated_views`` on uint8 batches against the
per-sample pipelines (in one process, and through a DataLoader with ``--ref-workers`` workers).

Defaults are small so the whole run takes a few minutes on 2 CPU cores; scale with --steps/--repeats.
Measurement script, not a test:

    PCKD_TEST_DATA=/work/shared/data python benchmarks/train_step.py --out benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_step.py next to this file

PAIRS = {"resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4"), "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2")}
METHODS = ("ce", "kd", "pckd")
IMPLS = ("reference", "project", "project+cl")
TRAIN_SIZE = 50000  # CIFAR-100 training images: steps per epoch = ceil(TRAIN_SIZE / batch)
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


# ---- data --------------------------------------------------------------------------------------------------
def load_train_images(root: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """CIFAR-100 training images uint8 [N,3,32,32] and labels; synthetic data of the same shape if absent."""
    if root:
        try:
            import warnings

            from pckd.data.cifar import load_cifar

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images, labels, _ = load_cifar("cifar100", root, train=True)
            return images, labels, f"CIFAR-100 train ({images.shape[0]} images) from {root}"
        except Exception:  # noqa: BLE001 - any failure: fall back to synthetic data of the same size
            pass
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (TRAIN_SIZE, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 100, (TRAIN_SIZE,), generator=g), f"synthetic uint8 ({TRAIN_SIZE} images)"


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


# ---- one measurement (runs in a subprocess) ----------------------------------------------------------------
def _models(pair: str, method: str):
    from pckd.models import create_model

    teacher_arch, student_arch = PAIRS[pair]
    torch.manual_seed(0)
    student = create_model(student_arch, 100)
    teacher = create_model(teacher_arch, 100) if method != "ce" else None
    return student, teacher


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Clock:
    """Wall time and CPU time of this process plus the given worker processes.

    CPU time is what a configuration costs whatever else the machine runs; on a shared machine the wall time
    also carries other jobs' load, so the benchmark reports both.
    """

    def __init__(self, worker_pids: list[int] | None = None) -> None:
        self.pids = worker_pids or []

    def now(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time() + sum(_proc_cpu_s(p) for p in self.pids)

    @staticmethod
    def since(start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
        return end[0] - start[0], end[1] - start[1]


def _time_reference(spec: dict[str, Any], images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    from reference_step import RotatedCIFAR, StandardCIFAR, build_reference, make_loader, reference_step

    student, teacher = _models(spec["pair"], spec["method"])
    setup = build_reference(spec["method"], student, teacher)
    hwc, lab = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()
    dataset = RotatedCIFAR(hwc, lab, MEAN, STD) if spec["method"] == "pckd" else StandardCIFAR(hwc, lab, MEAN, STD)
    loader = make_loader(dataset, spec["batch_size"], spec["ref_workers"])
    it = iter(loader)
    clock = Clock([w.pid for w in getattr(it, "_workers", [])])  # the DataLoader's worker processes
    wall, cpu = [], []
    for n in range(spec["warmup"] + spec["steps"]):
        t0 = clock.now()
        x, y, _ = next(it)
        reference_step(setup, x, y)
        w, c = Clock.since(t0, clock.now())
        if n >= spec["warmup"]:
            wall.append(w)
            cpu.append(c)
    del it, loader  # stops the workers, so their peak memory is counted below
    return {"step_s": wall, "step_cpu_s": cpu, "worker_peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN)}


def _time_project(spec: dict[str, Any], images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    from pckd.data.augment import BatchAugment
    from pckd.data.loader import InMemoryLoader
    from pckd.engine.metrics import StepMeter
    from pckd.methods.base import method_registry

    method, channels_last = spec["method"], spec["impl"] == "project+cl"
    student, teacher = _models(spec["pair"], method)
    reg = method_registry()[method]
    distiller = reg.cls(student, teacher, reg.params(), 100)
    if channels_last:
        distiller.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                          weight_decay=5e-4)
    loader = InMemoryLoader(images, labels, spec["batch_size"], BatchAugment(MEAN, STD), shuffle=True, seed=0)
    loader.set_epoch(1)
    meter = StepMeter(torch.device("cpu"))
    distiller.train()
    it = iter(loader)
    clock = Clock()
    views = None

    def step() -> None:  # the trainer's step body, without the progress bar
        nonlocal views
        batch = next(it)
        out = distiller(batch, 1)
        total = out.total
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        meter.update({**out.losses, "loss": total, **out.stats}, out.logits, batch.labels)
        if views is None:  # the bare networks below run on views of this size
            aug = batch.augment
            views = aug.rotated_views(batch.images, 4) if method == "pckd" else aug.standard(batch.images)

    def bare() -> None:  # the networks alone: student forward + backward, teacher forward without autograd
        student.zero_grad(set_to_none=True)
        student.forward_features(views).logits.float().mean().backward()
        if teacher is not None:
            with torch.no_grad():
                teacher.forward_features(views)

    def teacher_no_grad() -> None:
        with torch.no_grad():
            teacher.forward_features(views)

    def teacher_inference_mode() -> None:  # + the clones that let the outputs enter the student's graph
        with torch.inference_mode():
            out = teacher.forward_features(views)
        type(out)([s.clone() for s in out.stages], out.pooled.clone(), out.logits.clone())

    parts = {"step": step, "bare": bare}
    if teacher is not None and spec["teacher_modes"]:
        parts.update(teacher_no_grad=teacher_no_grad, teacher_inference_mode=teacher_inference_mode)
    timings: dict[str, list[float]] = {}
    for n in range(spec["warmup"] + spec["steps"]):
        for name, fn in parts.items():  # alternated, so a change of the machine's load hits all parts alike
            t0 = clock.now()
            fn()
            w, c = Clock.since(t0, clock.now())
            if n >= spec["warmup"]:
                timings.setdefault(f"{name}_s", []).append(w)
                timings.setdefault(f"{name}_cpu_s", []).append(c)
    meter.read()
    return timings


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    images, labels, source = load_train_images(spec["data_root"])
    base_rss = peak_rss_mb()
    timer = _time_reference if spec["impl"] == "reference" else _time_project
    result = timer(spec, images, labels)
    result.update(spec=spec, data=source, peak_rss_mb=peak_rss_mb(), rss_after_data_mb=base_rss)
    return result


# ---- augmentation throughput (runs in a subprocess) ------------------------------------------------------
def run_augmentation(spec: dict[str, Any]) -> dict[str, Any]:
    from reference_step import RotatedCIFAR, StandardCIFAR, make_loader

    from pckd.data.augment import BatchAugment

    torch.set_num_threads(spec["threads"])
    images, labels, source = load_train_images(spec["data_root"])
    b, iters = spec["batch_size"], spec["aug_iters"]
    aug = BatchAugment(MEAN, STD)
    hwc, lab = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()
    out: dict[str, Any] = {"data": source}
    for name, views in (("standard", 1), ("rotated x4", 4)):
        batches = [images[i * b:(i + 1) * b] for i in range(iters)]
        fn = aug.standard if views == 1 else (lambda x: aug.rotated_views(x, 4))
        fn(batches[0])
        t0 = time.perf_counter()
        for x in batches:
            fn(x)
        batch_rate = iters * b / (time.perf_counter() - t0)
        dataset = StandardCIFAR(hwc, lab, MEAN, STD) if views == 1 else RotatedCIFAR(hwc, lab, MEAN, STD)
        n = min(iters * b, 2048) // views
        t0 = time.perf_counter()
        for i in range(n):
            dataset[i]
        sample_rate = n / (time.perf_counter() - t0)
        loader = make_loader(dataset, b, spec["ref_workers"])
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        k = max(2, n // b)
        t0 = time.perf_counter()
        for _ in range(k):
            next(it)
        loader_rate = k * b / (time.perf_counter() - t0)
        del it, loader
        out[name] = {"batch_img_s": batch_rate, "per_sample_img_s": sample_rate, "dataloader_img_s": loader_rate}
    return out


# ---- orchestration ---------------------------------------------------------------------------------------
def _subprocess(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{kind}", json.dumps(spec)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summarise(results: list[dict[str, Any]], batch_size: int) -> dict[tuple[str, str, str], dict[str, float]]:
    """Medians over all timed steps of all repeats, per (pair, method, impl)."""
    pooled: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for r in results:
        s = r["spec"]
        row = pooled.setdefault((s["pair"], s["method"], s["impl"]), {})
        for key, value in r.items():
            if key.endswith("_s") and isinstance(value, list):
                row.setdefault(key, []).extend(value)
        row.setdefault("peak_rss_mb", []).append(r["peak_rss_mb"])
        row.setdefault("worker_peak_rss_mb", []).append(r.get("worker_peak_rss_mb", 0.0))
    steps_per_epoch = math.ceil(TRAIN_SIZE / batch_size)
    out = {}
    for key, row in pooled.items():
        m = {k: _median(v) for k, v in row.items() if k.endswith("_s")}
        step, cpu = m["step_s"], m["step_cpu_s"]
        bare_cpu = m.get("bare_cpu_s", math.nan)
        out[key] = {**m, "img_s": batch_size / step, "epoch_min": steps_per_epoch * step / 60,
                    "overhead_pct": 100 * (cpu - bare_cpu) / cpu,
                    "peak_rss_mb": max(row["peak_rss_mb"]), "worker_peak_rss_mb": max(row["worker_peak_rss_mb"])}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2, help="timed steps per subprocess")
    p.add_argument("--repeats", type=int, default=1, help="subprocesses per configuration (interleaved)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--ref-workers", type=int, default=max(1, os.cpu_count() or 1), help="reference DataLoader workers")
    p.add_argument("--aug-iters", type=int, default=30, help="batches for the augmentation benchmark")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-augmentation", action="store_true")
    p.add_argument("--no-teacher-modes", action="store_true", help="skip the no_grad / inference_mode timing")
    p.add_argument("--data-root", default=os.environ.get("PCKD_TEST_DATA", "./data"))
    p.add_argument("--out", type=Path, default=None, help="write every measurement as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--augmentation", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.augmentation:
        print(json.dumps(run_augmentation(json.loads(args.augmentation))))
        return 0

    started = time.perf_counter()
    common = {"batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
              "ref_workers": args.ref_workers, "data_root": args.data_root, "teacher_modes": not args.no_teacher_modes}
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
               "python": platform.python_version(), "threads": args.threads}
    print(f"machine: {machine}", flush=True)
    results: list[dict[str, Any]] = []
    if not args.skip_steps:
        for pair in args.pairs:
            for method in args.methods:
                for rep in range(args.repeats):
                    for impl in args.impls:  # interleaved, so slow drifts of the machine's load hit all alike
                        r = _subprocess("worker", {**common, "pair": pair, "method": method, "impl": impl})
                        results.append(r)
                        print(f"  {pair} {method:4s} {impl:10s} step {_median(r['step_s']):7.3f} s wall, "
                              f"{_median(r['step_cpu_s']):7.3f} s CPU, peak {r['peak_rss_mb']:6.0f} MB", flush=True)
    aug = None if args.skip_augmentation else _subprocess("augmentation", {**common, "aug_iters": args.aug_iters})
    report = render(summarise(results, args.batch_size) if results else {}, aug, args, machine)
    print(report)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "settings": vars(args) | {"out": str(args.out)},
                                        "results": results, "augmentation": aug}, indent=1, default=str) + "\n")
    return 0


def render(table: dict[tuple[str, str, str], dict[str, float]], aug: dict[str, Any] | None,
           args: argparse.Namespace, machine: dict[str, Any]) -> str:
    """Markdown tables: per configuration, then project / reference ratios, then augmentation."""
    lines = []
    order = sorted(table, key=lambda k: (k[0], METHODS.index(k[1]), IMPLS.index(k[2])))
    if table:
        lines += ["", "| pair | method | implementation | step wall (s) | img/s | epoch (min) | step CPU (s) | "
                      "loss-side overhead (CPU) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
        for pair, method, impl in order:
            r = table[(pair, method, impl)]
            over = "n/a" if math.isnan(r["overhead_pct"]) else f"{r['overhead_pct']:.1f}%"
            rss = _fmt(r["peak_rss_mb"], 0)
            if impl == "reference":
                rss += f" + workers {_fmt(r['worker_peak_rss_mb'], 0)}"
            lines.append(f"| {pair} | {method} | {impl} | {_fmt(r['step_s'], 3)} | {_fmt(r['img_s'])} | "
                         f"{_fmt(r['epoch_min'])} | {_fmt(r['step_cpu_s'], 3)} | {over} | {rss} |")
        lines += ["", "| pair | method | speed-up wall: project, project+cl | speed-up CPU: project, project+cl | "
                      "peak RSS project / reference | teacher fwd CPU s: no_grad, inference_mode+clone |",
                  "|---|---|---|---|---|---|"]
        for pair in args.pairs:
            for method in args.methods:
                ref = table.get((pair, method, "reference"))
                if not ref:
                    continue
                proj = [table.get((pair, method, i)) for i in IMPLS[1:]]
                wall = ", ".join(_fmt(ref["step_s"] / p["step_s"], 2) + "x" if p else "n/a" for p in proj)
                cpu = ", ".join(_fmt(ref["step_cpu_s"] / p["step_cpu_s"], 2) + "x" if p else "n/a" for p in proj)
                mem = _fmt(proj[0]["peak_rss_mb"] / ref["peak_rss_mb"], 2) if proj[0] else "n/a"
                teach = "n/a"
                if proj[0] and "teacher_no_grad_cpu_s" in proj[0]:
                    teach = f"{_fmt(proj[0]['teacher_no_grad_cpu_s'], 3)}, {_fmt(proj[0]['teacher_inference_mode_cpu_s'], 3)}"
                lines.append(f"| {pair} | {method} | {wall} | {cpu} | {mem} | {teach} |")
    if aug:
        lines += ["", "| augmentation | batch (img/s) | per-sample, 1 process (img/s) | DataLoader, "
                      f"{args.ref_workers} workers (img/s) | batch / per-sample | batch / DataLoader |",
                  "|---|---|---|---|---|---|"]
        for name in ("standard", "rotated x4"):
            a = aug[name]
            lines.append(f"| {name} | {a['batch_img_s']:.0f} | {a['per_sample_img_s']:.0f} | "
                         f"{a['dataloader_img_s']:.0f} | {a['batch_img_s'] / a['per_sample_img_s']:.1f}x | "
                         f"{a['batch_img_s'] / a['dataloader_img_s']:.1f}x |")
        lines.append(f"(augmentation data: {aug['data']}; rotated x4 counts source images, 4 views each)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
