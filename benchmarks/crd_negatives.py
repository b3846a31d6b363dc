"""Benchmark: CRD's negative draws and memory banks at CIFAR-100 and ImageNet size.

For each bank size N (CIFAR-100: 50,000; ImageNet: 1,281,167 training images) it times one step's draw of
``nce_k`` negatives for a batch of B anchors with the two label-aware samplers of ``pckd.methods.crd``:

* ``other_class``: RepDistiller's CIFAR sampler (distinct other-class samples; ranks random keys over the
  whole bank, a [B, N] tensor per step);
* ``other_class_replace``: mdistiller's ImageNet sampler (other-class samples with replacement, drawn from the
  complement of the anchor's class in the label-sorted bank; B x k work).

and prints the bank footprint (two banks of N x feat_dim float32, plus the label bank) and the step's score
tensor of ``contrast_exp`` ([B, N] float32 per side). Medians over ``--repeats`` draws after one warm-up.

    python benchmarks/crd_negatives.py --out benchmarks/results/crd_negatives.json

Measurement script, not a test; the numbers depend on the machine (it prints what it ran on).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pckd.methods.crd import draw_contrast_index

SIZES = {"cifar100": (50_000, 100), "imagenet": (1_281_167, 1000)}
MODES = ("other_class", "other_class_replace")


def time_draw(n: int, classes: int, batch: int, k: int, mode: str, repeats: int) -> list[float]:
    """Seconds of ``repeats`` draws (after one warm-up) for a bank of ``n`` samples of ``classes`` classes."""
    gen = torch.Generator().manual_seed(0)
    bank_labels = torch.randint(0, classes, (n,), generator=gen)
    times = []
    for r in range(repeats + 1):
        index = torch.randint(0, n, (batch,), generator=gen)
        start = time.perf_counter()
        idx = draw_contrast_index(index, bank_labels[index], bank_labels, n, k, mode)
        elapsed = time.perf_counter() - start
        assert idx.shape == (batch, k + 1)
        if r > 0:
            times.append(elapsed)
    return times


def footprint_mb(n: int, batch: int, feat_dim: int) -> dict[str, float]:
    """Memory of the banks and of one step's score tensors, in MB (float32, int64 labels)."""
    mb = 1024 * 1024
    return {"banks_mb": 2 * n * feat_dim * 4 / mb, "label_bank_mb": n * 8 / mb,
            "scores_per_side_mb": batch * n * 4 / mb, "bank_copy_per_side_mb": n * feat_dim * 4 / mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=16384, help="negatives per anchor (CRD's nce_k)")
    parser.add_argument("--feat-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
               "threads": args.threads}
    print(f"machine: {machine}")
    results: dict[str, dict[str, object]] = {}
    for name, (n, classes) in SIZES.items():
        row: dict[str, object] = {"n": n, "classes": classes, **footprint_mb(n, args.batch, args.feat_dim)}
        for mode in MODES:
            times = time_draw(n, classes, args.batch, args.k, mode, args.repeats)
            row[f"{mode}_s"] = statistics.median(times)
        row["speedup"] = float(row["other_class_s"]) / float(row["other_class_replace_s"])  # type: ignore[arg-type]
        results[name] = row
        print(f"{name:9s} N={n:>9,d}  other_class {row['other_class_s']:.3f} s  other_class_replace "
              f"{row['other_class_replace_s']:.4f} s  ({row['speedup']:.0f}x)  banks {row['banks_mb']:.0f} MB  "
              f"scores/side {row['scores_per_side_mb']:.0f} MB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {"batch": args.batch, "k": args.k, "feat_dim": args.feat_dim, "repeats": args.repeats}
        args.out.write_text(json.dumps({"machine": machine, "settings": settings, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
