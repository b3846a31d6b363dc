"""Benchmark: training-step throughput and peak memory of `ce`, `kd` and `pckd`, and augmentation throughput,
each against a reference written the way the released PCKD code works (``benchmarks/reference_step.py``).

Everything is measured in the same run on the same machine.

Timing: one subprocess per (pair, method) builds every implementation and runs them in rounds, one step of
each per round (so a change of the machine's load hits all of them alike); ``--warmup`` rounds are untimed,
then ``--steps`` timed ones, and the report takes medians. A step runs from asking the loader for the batch to
the end of the optimizer step, so data loading and augmentation are inside it, and an epoch is
``ceil(50000 / batch)`` such steps for every implementation. Each step's wall time and CPU time are recorded;
the reference's CPU time includes its DataLoader workers'. After a reference step the benchmark waits, outside
the timed window, until the workers have prefetched the next batch: in a real run that work competes with the
step for the cores, so this favours the reference's wall time, if anything.

Peak memory: one subprocess per (pair, method, implementation) runs a single step and reports its peak
resident set size (the reference's DataLoader workers separately).

Implementations:
  reference   per-sample PIL augmentation in DataLoader workers, loss modules called one by one, preview
              weights broadcast through a Python list of ``.item()`` reads, student forward before the
              teacher's (fp32, NCHW);
  project     the project's step as the trainer runs it (in-memory loader, batch augmentation on the training
              device, ``Distiller`` forward, summed losses, SGD), fp32, default flags (so the frozen teacher
              runs with its BatchNorms folded and, on CPU, channels_last; the student in NCHW);
  project+cl  the same with ``train.channels_last=true``.

Each round also times, for ``project``, the *bare* networks on the same views (student forward + backward of
a trivial loss, teacher forward without autograd): ``step - bare`` is the loss-side overhead (augmentation,
heads, losses, optimizer); and the teacher forward under ``no_grad`` against ``inference_mode`` (+ the clones
that make its outputs usable in the student's graph).

The augmentation benchmark times ``BatchAugment.standard`` / ``rotated_views`` / ``standard + strong`` (MLD) on uint8 batches against the
per-sample pipelines (in one process, and through a DataLoader with ``--ref-workers`` workers).

Defaults are small so the whole run takes minutes on 2 CPU cores; scale with --steps. Measurement script, not
a test:

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        except Exception:
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


def _settle(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until the worker processes stop using CPU (their prefetch is done)."""
    deadline, last, still = time.perf_counter() + timeout, -1.0, 0
    while time.perf_counter() < deadline and still < 2:
        time.sleep(0.02)
        now = sum(_proc_cpu_s(p) for p in pids)
        still = still + 1 if now == last else 0
        last = now


Parts = dict[str, Callable[[], None]]


def _reference_parts(spec: dict[str, Any], images: torch.Tensor,
                     labels: torch.Tensor) -> tuple[Parts, Any, list[int]]:
    """The reference step as a callable; also its loader iterator (keep it alive) and the worker pids."""
    from reference_step import RotatedCIFAR, StandardCIFAR, build_reference, make_loader, reference_step

    student, teacher = _models(spec["pair"], spec["method"])
    setup = build_reference(spec["method"], student, teacher)
    hwc, lab = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()
    dataset = RotatedCIFAR(hwc, lab, MEAN, STD) if spec["method"] == "pckd" else StandardCIFAR(hwc, lab, MEAN, STD)
    it = iter(make_loader(dataset, spec["batch_size"], spec["ref_workers"]))

    def step() -> None:
        x, y, _ = next(it)
        reference_step(setup, x, y)

    return {"step": step}, it, [w.pid for w in getattr(it, "_workers", [])]


def _project_parts(spec: dict[str, Any], images: torch.Tensor, labels: torch.Tensor, channels_last: bool,
                   extras: bool) -> Parts:
    """The trainer's step body as a callable (+ the bare networks and the teacher-mode timings if ``extras``)."""
    from pckd.config.schema import TrainConfig
    from pckd.data.augment import BatchAugment
    from pckd.data.info import DataInfo
    from pckd.data.loader import InMemoryLoader
    from pckd.engine.build import prepare_teacher
    from pckd.engine.metrics import StepMeter
    from pckd.methods.base import method_registry

    method = spec["method"]
    student, teacher = _models(spec["pair"], method)
    if teacher is not None:  # as the trainer runs it: BatchNorms folded, channels_last on CPU (defaults)
        teacher = prepare_teacher(teacher, TrainConfig(channels_last=channels_last), 32, torch.device("cpu"))
    reg = method_registry()[method]
    distiller = reg.cls(student, teacher, reg.params(), DataInfo(100, len(labels), 32, labels))
    if channels_last:
        distiller.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                          weight_decay=5e-4)
    loader = InMemoryLoader(images, labels, spec["batch_size"], BatchAugment(MEAN, STD), shuffle=True, seed=0)
    loader.set_epoch(1)
    meter = StepMeter(torch.device("cpu"))
    distiller.train()
    it = iter(loader)
    first = next(iter(loader))
    views = first.augment.rotated_views(first.images, 4) if method == "pckd" else first.augment.standard(first.images)

    def step() -> None:  # the trainer's step body, without the progress bar and the log-interval read
        batch = next(it)
        out = distiller(batch, 1)
        total = out.total
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        meter.update({**out.losses, "loss": total, **out.stats}, out.logits, batch.labels)

    def bare() -> None:  # the networks alone: teacher forward without autograd, student forward + backward
        if teacher is not None:
            with torch.no_grad():
                teacher.forward_features(views)
        student.zero_grad(set_to_none=True)
        student.forward_features(views).logits.float().mean().backward()

    def teacher_no_grad() -> None:
        with torch.no_grad():
            teacher.forward_features(views)

    def teacher_inference_mode() -> None:  # + the clones that let the outputs enter the student's graph
        with torch.inference_mode():
            out = teacher.forward_features(views)
        type(out)([s.clone() for s in out.stages], out.pooled.clone(), out.logits.clone())

    parts = {"step": step}
    if extras:
        parts["bare"] = bare
        if teacher is not None:
            parts.update(teacher_no_grad=teacher_no_grad, teacher_inference_mode=teacher_inference_mode)
    return parts


def run_timing(spec: dict[str, Any]) -> dict[str, Any]:
    """All implementations of one (pair, method), one step of each per round."""
    torch.set_num_threads(spec["threads"])
    images, labels, source = load_train_images(spec["data_root"])
    schedule: list[tuple[str, Callable[[], None], list[int]]] = []
    keep_alive = []
    for impl in spec["impls"]:
        if impl == "reference":
            parts, it, pids = _reference_parts(spec, images, labels)
            keep_alive.append(it)
        else:
            parts, pids = _project_parts(spec, images, labels, impl == "project+cl", impl == "project"), []
        schedule += [(f"{impl}/{name}", fn, pids) for name, fn in parts.items()]
    timings: dict[str, list[float]] = {}
    for n in range(spec["warmup"] + spec["steps"]):
        for name, fn, pids in schedule:
            clock = Clock(pids)
            t0 = clock.now()
            fn()
            wall = time.perf_counter() - t0[0]
            if pids:
                _settle(pids)  # the workers' prefetch of the next batch belongs to this step's CPU time
            cpu = clock.now()[1] - t0[1]
            if n >= spec["warmup"]:
                timings.setdefault(f"{name}_s", []).append(wall)
                timings.setdefault(f"{name}_cpu_s", []).append(cpu)
    del keep_alive
    return {"spec": spec, "data": source, "timings": timings}


def run_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak resident memory of one step of one implementation (the reference's workers separately)."""
    torch.set_num_threads(spec["threads"])
    images, labels, source = load_train_images(spec["data_root"])
    after_data = peak_rss_mb()
    workers = 0.0
    if spec["impl"] == "reference":
        parts, it, _ = _reference_parts(spec, images, labels)
        parts["step"]()
        del parts, it  # the last references: the workers stop, so their peak memory is counted
        workers = peak_rss_mb(resource.RUSAGE_CHILDREN)
    else:
        _project_parts(spec, images, labels, spec["impl"] == "project+cl", False)["step"]()
    return {"spec": spec, "data": source, "peak_rss_mb": peak_rss_mb(), "rss_after_data_mb": after_data,
            "worker_peak_rss_mb": workers}


# ---- augmentation throughput (runs in a subprocess) ------------------------------------------------------
def run_augmentation(spec: dict[str, Any]) -> dict[str, Any]:
    from reference_step import RotatedCIFAR, StandardCIFAR, WeakStrongCIFAR, make_loader

    from pckd.data.augment import BatchAugment

    torch.set_num_threads(spec["threads"])
    images, labels, source = load_train_images(spec["data_root"])
    b, iters = spec["batch_size"], spec["aug_iters"]
    aug = BatchAugment(MEAN, STD)
    hwc, lab = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()
    out: dict[str, Any] = {"data": source}
    fns = {"standard": aug.standard, "rotated x4": lambda x: aug.rotated_views(x, 4),
           "weak + strong (MLD)": lambda x: (aug.standard(x), aug.strong(x))}
    sets = {"standard": StandardCIFAR, "rotated x4": RotatedCIFAR, "weak + strong (MLD)": WeakStrongCIFAR}
    for name, views in (("standard", 1), ("rotated x4", 4), ("weak + strong (MLD)", 2)):
        batches = [images[i * b:(i + 1) * b] for i in range(iters)]
        fn = fns[name]
        fn(batches[0])
        t0 = time.perf_counter()
        for x in batches:
            fn(x)
        batch_rate = iters * b / (time.perf_counter() - t0)
        dataset = sets[name](hwc, lab, MEAN, STD)
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


def summarise(timing: list[dict[str, Any]], memory: list[dict[str, Any]],
              batch_size: int) -> dict[tuple[str, str, str], dict[str, float]]:
    """Medians per (pair, method, impl): step wall/CPU, img/s, epoch minutes, loss-side overhead, peak RSS."""
    steps_per_epoch = math.ceil(TRAIN_SIZE / batch_size)
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in timing:
        pair, method = r["spec"]["pair"], r["spec"]["method"]
        t = {k: _median(v) for k, v in r["timings"].items()}
        for impl in r["spec"]["impls"]:
            wall, cpu = t[f"{impl}/step_s"], t[f"{impl}/step_cpu_s"]
            row = {"step_s": wall, "step_cpu_s": cpu, "img_s": batch_size / wall,
                   "epoch_min": steps_per_epoch * wall / 60, "overhead_pct": math.nan}
            if f"{impl}/bare_cpu_s" in t:
                # paired per round (step and bare ran back to back), then the median of the rounds
                steps, bares = r["timings"][f"{impl}/step_cpu_s"], r["timings"][f"{impl}/bare_cpu_s"]
                row["overhead_pct"] = _median([100 * (s - b) / s for s, b in zip(steps, bares)])
                row["bare_cpu_s"] = t[f"{impl}/bare_cpu_s"]
            for mode in ("teacher_no_grad", "teacher_inference_mode"):
                if f"{impl}/{mode}_cpu_s" in t:
                    row[f"{mode}_cpu_s"] = t[f"{impl}/{mode}_cpu_s"]
            out[(pair, method, impl)] = row
    for m in memory:
        s = m["spec"]
        out.setdefault((s["pair"], s["method"], s["impl"]), {}).update(
            peak_rss_mb=m["peak_rss_mb"], worker_peak_rss_mb=m["worker_peak_rss_mb"])
    return out


def render(table: dict[tuple[str, str, str], dict[str, float]], aug: dict[str, Any] | None,
           args: argparse.Namespace) -> str:
    """Markdown: per configuration, then project / reference ratios, then augmentation."""
    lines = []
    if table:
        lines += ["", "| pair | method | implementation | step wall (s) | img/s | epoch (min) | step CPU (s) | "
                      "loss-side overhead (CPU) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
        for pair, method, impl in sorted(table, key=lambda k: (k[0], METHODS.index(k[1]), IMPLS.index(k[2]))):
            r = table[(pair, method, impl)]
            over = "" if math.isnan(r.get("overhead_pct", math.nan)) else f"{r['overhead_pct']:.1f}%"
            rss = _fmt(r.get("peak_rss_mb", math.nan), 0)
            if impl == "reference":
                rss += f" (+ workers {_fmt(r.get('worker_peak_rss_mb', math.nan), 0)} each)"
            lines.append(f"| {pair} | {method} | {impl} | {_fmt(r.get('step_s', math.nan), 3)} | "
                         f"{_fmt(r.get('img_s', math.nan))} | {_fmt(r.get('epoch_min', math.nan))} | "
                         f"{_fmt(r.get('step_cpu_s', math.nan), 3)} | {over} | {rss} |")
        lines += ["", "| pair | method | speed-up (wall): project, project+cl | speed-up (CPU): project, project+cl | "
                      "peak RSS project / reference | teacher forward CPU (s): no_grad, inference_mode + clone |",
                  "|---|---|---|---|---|---|"]
        for pair in args.pairs:
            for method in args.methods:
                ref = table.get((pair, method, "reference"), {})
                if "step_s" not in ref:
                    continue
                proj = [table.get((pair, method, i), {}) for i in IMPLS[1:]]
                wall = ", ".join(f"{ref['step_s'] / p['step_s']:.2f}x" if "step_s" in p else "n/a" for p in proj)
                cpu = ", ".join(f"{ref['step_cpu_s'] / p['step_cpu_s']:.2f}x" if "step_s" in p else "n/a" for p in proj)
                mem = (f"{proj[0]['peak_rss_mb'] / ref['peak_rss_mb']:.2f}"
                       if "peak_rss_mb" in proj[0] and "peak_rss_mb" in ref else "n/a")
                teach = "n/a"
                if "teacher_no_grad_cpu_s" in proj[0]:
                    teach = f"{proj[0]['teacher_no_grad_cpu_s']:.3f}, {proj[0]['teacher_inference_mode_cpu_s']:.3f}"
                lines.append(f"| {pair} | {method} | {wall} | {cpu} | {mem} | {teach} |")
    if aug:
        lines += ["", "| augmentation | batch (img/s) | per-sample, 1 process (img/s) | DataLoader, "
                      f"{args.ref_workers} workers (img/s) | batch / per-sample | batch / DataLoader |",
                  "|---|---|---|---|---|---|"]
        for name in ("standard", "rotated x4", "weak + strong (MLD)"):
            if name not in aug:
                continue
            a = aug[name]
            lines.append(f"| {name} | {a['batch_img_s']:.0f} | {a['per_sample_img_s']:.0f} | "
                         f"{a['dataloader_img_s']:.0f} | {a['batch_img_s'] / a['per_sample_img_s']:.1f}x | "
                         f"{a['batch_img_s'] / a['dataloader_img_s']:.1f}x |")
        lines.append(f"(augmentation data: {aug['data']}; rotated x4 counts source images, 4 views each; weak + "
                     "strong counts source images, 2 views each, the strong one RandAugment + Cutout)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds")
    p.add_argument("--steps", type=int, default=2, help="timed rounds (one step of each implementation each)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--ref-workers", type=int, default=max(1, os.cpu_count() or 1), help="reference DataLoader workers")
    p.add_argument("--aug-iters", type=int, default=30, help="batches for the augmentation benchmark")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-augmentation", action="store_true")
    p.add_argument("--data-root", default=os.environ.get("PCKD_TEST_DATA", "./data"))
    p.add_argument("--out", type=Path, default=None, help="write every measurement as JSON")
    for hidden in ("--timing", "--memory", "--augmentation"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for kind, fn in (("timing", run_timing), ("memory", run_memory), ("augmentation", run_augmentation)):
        if getattr(args, kind):
            print(json.dumps(fn(json.loads(getattr(args, kind)))))
            return 0

    started = time.perf_counter()
    common = {"batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps, "threads": args.threads,
              "ref_workers": args.ref_workers, "data_root": args.data_root}
    machine = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
               "python": platform.python_version(), "threads": args.threads}
    print(f"machine: {machine}", flush=True)
    timing, memory = [], []
    for pair in args.pairs if not args.skip_steps else []:
        for method in args.methods:
            r = _subprocess("timing", {**common, "pair": pair, "method": method, "impls": args.impls})
            timing.append(r)
            t = {k: _median(v) for k, v in r["timings"].items()}
            print(f"  {pair} {method:4s} " + "  ".join(
                f"{i} {t[f'{i}/step_s']:.3f} s ({t[f'{i}/step_cpu_s']:.3f} CPU)" for i in args.impls), flush=True)
            for impl in args.impls if not args.skip_memory else []:
                memory.append(_subprocess("memory", {**common, "pair": pair, "method": method, "impl": impl}))
    aug = None if args.skip_augmentation else _subprocess("augmentation", {**common, "aug_iters": args.aug_iters})
    print(render(summarise(timing, memory, args.batch_size), aug, args))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                    if k not in ("timing", "memory", "augmentation")}
        args.out.write_text(json.dumps({"machine": machine, "settings": settings, "timing": timing,
                                        "memory": memory, "augmentation": aug}, indent=1) + "\n")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
