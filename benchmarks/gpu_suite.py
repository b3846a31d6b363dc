"""The GPU check: CUDA correctness, training-step throughput and peak memory, and a short learning smoke test,
in one command that never needs the network and writes everything under ``--out``.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu --data data_gpu   # on the GPU machine (<= 8 min)
    python benchmarks/gpu_suite.py --out /tmp/gpu --dry-run                       # anywhere, tiny sizes (< 2 min)

Sections (a failure is recorded and the next section still runs; results.json and results.md are rewritten after
every section, so a crash or a time-out loses nothing that was measured):

1. correctness: the tests that skip without CUDA (and the precision/compile tests, which then run on the GPU),
   plus direct checks on the device: bf16 autocast losses against fp32 for several methods, bit-identical
   resume under ``train.deterministic=true``, a ``torch.compile``d student, SyncBatchNorm in a one-process group.
2. throughput: the project's training step (batch augmentation on the device, the Distiller, SGD) for ce, kd,
   pckd, ckd, dkd, crd and reviewkd on resnet32x4 -> resnet8x4 and wrn_40_2 -> wrn_16_2 at batch 64 and 256, in
   fp32, bf16 and bf16 + channels_last; images/s, peak GPU memory and the share of the step the GPU is busy
   (profiler kernel time / wall time), and bf16 + channels_last + torch.compile for kd and pckd on one pair while the
   time budget lasts; for ce, kd and pckd also the reference step written like the released
   code (per-sample augmentation in DataLoader workers, one per CPU core) and the ratio.
3. smoke: a resnet56 teacher for a few epochs on the full CIFAR-100 in ``--data``, then ce, kd and pckd resnet20
   students for the same short schedule; top-1 per epoch. Evidence that the GPU path learns, not a reproduction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

PAIRS = {"resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4"), "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2")}
METHODS = ("ce", "kd", "pckd", "ckd", "dkd", "crd", "reviewkd")
REFERENCE_METHODS = ("ce", "kd", "pckd")
MODES = ("fp32", "bf16", "bf16+cl")
CUDA_TESTS = ["tests/engine/test_precision_flags.py", "tests/data/test_loader.py", "tests/data/test_augment.py",
              "tests/data/test_randaugment.py"]
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


class Suite:
    """Holds the settings and the results, and writes them after every section."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
        self.dry = args.dry_run
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {"machine": machine(self.device), "dry_run": self.dry, "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run(self, name: str, fn: Callable[[Suite], Any]) -> None:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            self.results["sections"][name] = {"ok": True, "result": fn(self)}
        except Exception as exc:  # recorded, the next section still runs
            self.results["sections"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc()[-4000:]}
            print(f"   failed: {type(exc).__name__}: {exc}", flush=True)
        self.results["sections"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        self.save()

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        (self.out / "results.md").write_text(render(self.results))


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
                            "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


# ---- 1. correctness ----------------------------------------------------------------------------------------
def correctness(s: Suite) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for name, fn in (("pytest (CUDA-only and precision tests)", _pytest_cuda), ("bf16 autocast vs fp32 losses", _bf16),
                     ("deterministic resume is bit-identical", _resume), ("torch.compile student", _compile),
                     ("SyncBatchNorm, 1-process group", _sync_bn)):
        t0 = time.perf_counter()
        try:
            ok, detail = fn(s)
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append({"check": name, "ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"   {'ok  ' if ok else ('skip' if ok is None else 'FAIL')} {name}: {detail}", flush=True)
    return checks


def _pytest_cuda(s: Suite) -> tuple[bool | None, str]:
    xml = s.out / "pytest_cuda.xml"
    env = {**os.environ, "PCKD_TEST_DATA": str(s.args.data)} if s.args.data else dict(os.environ)
    files = CUDA_TESTS[1:] if s.dry else CUDA_TESTS  # the precision tests train; too slow for a CPU dry run
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                           *files], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    tail = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return done.returncode == 0, tail


def _batch(s: Suite, n: int = 8) -> Any:
    from pckd.data.augment import BatchAugment
    from pckd.data.batch import Batch

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(s.device)
    labels = torch.randint(0, 10, (n,), generator=g).to(s.device)
    return Batch(images=images, labels=labels, index=torch.arange(n, device=s.device),
                 augment=BatchAugment(MEAN, STD))


def _distiller(method: str, student_arch: str, teacher_arch: str, device: torch.device, classes: int = 10,
               train_size: int = 64) -> Any:
    from pckd.data.info import DataInfo
    from pckd.methods.base import method_registry
    from pckd.models import create_model

    torch.manual_seed(0)
    reg = method_registry()[method]
    teacher = create_model(teacher_arch, classes).to(device).eval() if method != "ce" else None
    student = create_model(student_arch, classes)
    labels = torch.arange(train_size) % classes
    return reg.cls(student, teacher, reg.params(), DataInfo(classes, train_size, 32, labels)).to(device)


def _bf16(s: Suite) -> tuple[bool | None, str]:
    worst = []
    for method in ("kd", "dkd", "ckd", "pckd"):
        values = {}
        for precision in ("fp32", "bf16"):
            distiller = _distiller(method, "resnet8", "resnet14", s.device)
            batch = _batch(s)  # _distiller seeded the global RNG: both precisions draw the same augmentation
            with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = distiller(batch, 1)
            values[precision] = {k: float(v.detach()) for k, v in out.losses.items()}
        rel = max(abs(values["bf16"][k] - values["fp32"][k]) / max(abs(values["fp32"][k]), 1e-6) for k in values["fp32"])
        worst.append((method, rel))
    bad = [f"{m} {r:.3f}" for m, r in worst if r > 0.05]
    return not bad, "largest relative loss difference: " + ", ".join(f"{m} {r:.4f}" for m, r in worst)


def _train(s: Suite, out: Path, extra: list[str]) -> Path:
    from pckd.config import load_config
    from pckd.engine.launch import run_training

    cfg = load_config(None, ["method=ce", "data.name=digits", "student.arch=resnet8", f"train.device={s.device}",
                             "train.batch_size=64", "train.progress=false", "data.train_limit=256",
                             "data.test_limit=64", "train.schedule=multistep", "train.milestones=[]",
                             f"output_dir={out}", *extra])
    run_training(cfg)
    return out


def _resume(s: Suite) -> tuple[bool | None, str]:
    from pckd.models import read_checkpoint

    base = s.out / "work" / "resume"
    flags = ["train.deterministic=true", "overwrite=true"]
    straight = _train(s, base / "straight", [*flags, "train.epochs=2"])
    _train(s, base / "split", [*flags, "train.epochs=1"])
    _train(s, base / "split", ["train.deterministic=true", "train.epochs=2", "resume=true"])
    a = read_checkpoint(straight / "last.pt")["model"]
    b = read_checkpoint(base / "split" / "last.pt")["model"]
    same = all(torch.equal(a[k], b[k]) for k in a)
    return same, f"{len(a)} tensors {'identical' if same else 'DIFFER'} after 1 + 1 epochs vs 2"


def _compile(s: Suite) -> tuple[bool | None, str]:
    if s.dry:
        return None, "skipped in the CPU dry run (compiling takes minutes on CPU)"
    run = _train(s, s.out / "work" / "compile", ["train.compile=true", "train.epochs=1", "overwrite=true"])
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    loss = last.get("train/loss", float("nan"))
    return bool(loss == loss and loss < 1e9), f"1 epoch compiled, train loss {loss:.3f}, top-1 {last.get('test/top1')}"


def _sync_bn(s: Suite) -> tuple[bool | None, str]:
    if s.device.type != "cuda":
        return None, "skipped: SyncBatchNorm needs CUDA tensors"
    import torch.distributed as dist

    from pckd.models import create_model

    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = create_model("resnet8", 10).to(s.device).train()
        synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(create_model("resnet8", 10)).to(s.device).train()
        synced.load_state_dict(plain.state_dict())
        x = torch.randn(16, 3, 32, 32, device=s.device)
        a, b = plain(x), synced(x)
        a.sum().backward()
        b.sum().backward()
        diff = float((a - b).abs().max())
        return diff < 1e-4, f"max |plain - synced| output {diff:.2e} (one process: they must agree)"
    finally:
        dist.destroy_process_group()


# ---- 2. throughput -----------------------------------------------------------------------------------------
def throughput(s: Suite) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pairs = ["wrn_40_2-wrn_16_2"] if s.dry else list(PAIRS)
    batches = [4] if s.dry else [64, 256]
    modes = MODES
    steps, warmup = (1, 1) if s.dry else (s.args.steps, 3)
    for pair in pairs:
        for method in METHODS:
            for batch in batches:
                for mode in modes:
                    rows.append(_measure(s, pair, method, batch, mode, steps, warmup))
                    print(f"   {pair} {method} b{batch} {mode}: {rows[-1].get('img_per_s', rows[-1].get('error'))}",
                          flush=True)
                if method in REFERENCE_METHODS:
                    rows.append(_measure_reference(s, pair, method, batch, steps, warmup))
                if s.elapsed() > s.args.budget_s * 0.7:
                    rows.append({"note": f"stopped at {s.elapsed():.0f} s to leave time for the smoke test"})
                    return rows
    if s.device.type == "cuda":  # compile where it may pay off, while the budget lasts (each compile takes a while)
        for method in ("kd", "pckd"):
            if s.elapsed() > s.args.budget_s * 0.6:
                rows.append({"note": "compile rows skipped: budget"})
                break
            rows.append(_measure(s, "wrn_40_2-wrn_16_2", method, 256, "bf16+cl+compile", steps, warmup))
    return rows


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 100, (n,), generator=g))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per step over ``steps`` timed steps after ``warmup`` untimed ones; the peak-memory counter
    starts after the warm-up."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def _measure(s: Suite, pair: str, method: str, batch: int, mode: str, steps: int, warmup: int) -> dict[str, Any]:
    from pckd.data.augment import BatchAugment
    from pckd.data.loader import InMemoryLoader

    row: dict[str, Any] = {"pair": pair, "method": method, "batch": batch, "mode": mode, "impl": "project"}
    try:
        teacher_arch, student_arch = PAIRS[pair]
        n = batch * (steps + warmup + 4)
        images, labels = _images(n)
        distiller = _distiller(method, student_arch, teacher_arch, s.device, 100, n)
        if "+cl" in mode:
            distiller.to(memory_format=torch.channels_last)
        if mode.endswith("+compile"):
            from pckd.engine.acceleration import compile_student

            compile_student(distiller.student)  # as train.compile does
        opt = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        from pckd.engine.acceleration import ChannelsLastAugment

        augment: Any = BatchAugment(MEAN, STD)
        if "+cl" in mode:  # as the trainer does: every view in channels_last too
            augment = ChannelsLastAugment(augment)
        loader = InMemoryLoader(images.to(s.device), labels.to(s.device), batch, augment, shuffle=True,
                                seed=0, rank=0, world_size=1)
        it = iter(loader)
        bf16 = mode.startswith("bf16")

        def step() -> None:
            b = next(it)
            with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = distiller(b, 1)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()

        distiller.train()
        wall = _time_steps(step, s.device, steps, warmup)
        row.update(step_s=wall, img_per_s=batch / wall)
        if s.device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
            row["gpu_busy"] = _busy(step, s.device)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _busy(step: Callable[[], None], device: torch.device, n: int = 3) -> float:
    """Kernel time over wall time for ``n`` steps under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        _sync(device)
        wall = time.perf_counter() - t0
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return min(1.0, kernel_us / 1e6 / wall) if wall > 0 else float("nan")


def _measure_reference(s: Suite, pair: str, method: str, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    from reference_step import RotatedCIFAR, StandardCIFAR, build_reference, make_loader, reference_step

    from pckd.models import create_model

    workers = 0 if s.dry else (os.cpu_count() or 1)
    row: dict[str, Any] = {"pair": pair, "method": method, "batch": batch, "mode": "fp32", "impl": "reference",
                           "workers": workers}
    try:
        teacher_arch, student_arch = PAIRS[pair]
        torch.manual_seed(0)
        student = create_model(student_arch, 100).to(s.device)
        teacher = create_model(teacher_arch, 100).to(s.device) if method != "ce" else None
        setup = build_reference(method, student, teacher)
        setup.heads.to(s.device)
        images, labels = _images(batch * (steps + warmup + 4))
        hwc, lab = images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy()
        data = RotatedCIFAR(hwc, lab, MEAN, STD) if method == "pckd" else StandardCIFAR(hwc, lab, MEAN, STD)
        it = iter(make_loader(data, batch, workers))

        def step() -> None:
            x, y, _ = next(it)
            reference_step(setup, x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True))

        wall = _time_steps(step, s.device, steps, warmup)
        row.update(step_s=wall, img_per_s=batch / wall)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


# ---- 3. learning smoke test --------------------------------------------------------------------------------
def smoke(s: Suite) -> dict[str, Any]:
    from pckd.config import load_config
    from pckd.engine.launch import run_training

    if s.dry or not s.args.data:
        data = ["data.name=digits"]
        teacher_epochs, student_epochs, teacher, student = 1, 1, "resnet14", "resnet8"
    else:
        data = ["data.name=cifar100", f"data.root={s.args.data}"]
        teacher_epochs, student_epochs, teacher, student = s.args.smoke_epochs, s.args.smoke_epochs, "resnet56", "resnet20"
    common = [*data, f"train.device={s.device}", "train.progress=false", "train.schedule=cosine", "overwrite=true",
              "train.batch_size=64"] + (["data.train_limit=128", "data.test_limit=64"] if s.dry else [])
    root = s.out / "work" / "smoke"
    out: dict[str, Any] = {}

    def top1_per_epoch(run: Path) -> list[float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [round(r["test/top1"], 2) for r in rows if r.get("kind") == "epoch"]

    run_training(load_config(None, ["method=ce", f"student.arch={teacher}", f"train.epochs={teacher_epochs}",
                                    *common, f"output_dir={root / 'teacher'}"]))
    out[f"teacher {teacher} (ce)"] = top1_per_epoch(root / "teacher")
    for method in ("ce", "kd", "pckd"):
        extra = [] if method == "ce" else [f"teacher.arch={teacher}", f"teacher.checkpoint={root / 'teacher' / 'best.pt'}"]
        run_training(load_config(None, [f"method={method}", f"student.arch={student}",
                                        f"train.epochs={student_epochs}", *common, *extra,
                                        f"output_dir={root / method}"]))
        out[f"student {student} ({method})"] = top1_per_epoch(root / method)
    return out


# ---- report ------------------------------------------------------------------------------------------------
def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# GPU suite{' (dry run)' if results['dry_run'] else ''}", "",
             f"Machine: {m.get('gpu', m['device'])}, {m['cpus']} CPUs, torch {m['torch']}", ""]
    sections = results["sections"]
    if "correctness" in sections:
        lines += ["## Correctness", "", "| check | result | detail |", "|---|---|---|"]
        for c in sections["correctness"].get("result") or []:
            state = "ok" if c["ok"] else ("skipped" if c["ok"] is None else "FAILED")
            lines.append(f"| {c['check']} | {state} | {c['detail']} |")
        lines.append("")
    if "throughput" in sections:
        rows = sections["throughput"].get("result") or []
        ref = {(r["pair"], r["method"], r["batch"]): r.get("img_per_s") for r in rows if r.get("impl") == "reference"}
        lines += ["## Throughput (one training step: augmentation, forward, backward, SGD)", "",
                  "| pair | method | batch | mode | img/s | vs reference | peak GPU MB | GPU busy |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "note" in r:
                lines.append(f"| {r['note']} |||||||")
                continue
            if r.get("impl") == "reference":
                name = f"reference ({r['workers']} workers)"
            else:
                name = r["mode"]
            if "error" in r:
                lines.append(f"| {r['pair']} | {r['method']} | {r['batch']} | {name} | error: {r['error'][:80]} ||||")
                continue
            base = ref.get((r["pair"], r["method"], r["batch"]))
            ratio = f"{r['img_per_s'] / base:.2f}x" if base and r.get("impl") == "project" else ""
            mem = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else ""
            busy = f"{100 * r['gpu_busy']:.0f}%" if "gpu_busy" in r else ""
            lines.append(f"| {r['pair']} | {r['method']} | {r['batch']} | {name} | {r['img_per_s']:.0f} | {ratio} | "
                         f"{mem} | {busy} |")
        lines.append("")
    if "smoke" in sections and sections["smoke"].get("ok"):
        lines += ["## Learning smoke test (test top-1 % per epoch)", "", "| run | top-1 per epoch |", "|---|---|"]
        lines += [f"| {k} | {', '.join(map(str, v))} |" for k, v in sections["smoke"]["result"].items()]
        lines.append("")
    for name, sec in sections.items():
        if not sec.get("ok"):
            lines += [f"Section {name} failed: {sec.get('error')}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the work files")
    parser.add_argument("--data", default=os.environ.get("PCKD_TEST_DATA"),
                        help="folder holding cifar-100-python/ (the smoke test; default $PCKD_TEST_DATA)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on whatever device, for CI (< 2 min)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per throughput configuration")
    parser.add_argument("--smoke-epochs", type=int, default=3, help="epochs of each smoke-test run")
    parser.add_argument("--budget-s", type=float, default=420.0, help="throughput stops at 70%% of this")
    parser.add_argument("--sections", nargs="*", default=["correctness", "throughput", "smoke"],
                        choices=["correctness", "throughput", "smoke"])
    args = parser.parse_args(argv)
    suite = Suite(args)
    for name, fn in (("correctness", correctness), ("throughput", throughput), ("smoke", smoke)):
        if name in args.sections:
            suite.run(name, fn)
    print(f"wrote {suite.out / 'results.md'} and results.json in {suite.elapsed():.0f} s")
    failed = [n for n, sec in suite.results["sections"].items() if not sec["ok"]]
    checks = suite.results["sections"].get("correctness", {}).get("result") or []
    failed += [c["check"] for c in checks if c["ok"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
