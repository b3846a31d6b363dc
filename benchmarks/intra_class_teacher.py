"""Benchmark: does the intra-class contrastive teacher (`intra_class`) give richer soft labels than a CE teacher?

Trains a CE teacher and an `intra_class` teacher of the same architecture for the same budget (epochs, batch,
lr, schedule, seed) on a slice of CIFAR-100, then measures both final (last-epoch) networks on the training
slice (the images a student is later distilled on) and on the test slice:

* test accuracy;
* spread of the L2-normalised penultimate features and of the soft labels softmax(z/T), T in {4, 1}:
  - intra: mean pairwise cosine distance (1 - cos) between samples of one class, averaged over classes;
  - inter: mean pairwise cosine distance between the class means;
* the entropy (nats) of the non-target probabilities p_{k != y} / (1 - p_y) at T = 4 and T = 1; its maximum is
  log(K - 1). A higher value means the teacher spreads more "dark knowledge" over the wrong classes.

Prints a Markdown table and writes everything (settings, machine, metrics) as JSON to --out.
This is a measurement script, not a test; e.g.

    PCKD_TEST_DATA=../shared/data python benchmarks/intra_class_teacher.py --classes 20 --epochs 4 \
        --out runs/benchmarks/intra_class_teacher.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pckd.config import load_config
from pckd.engine.trainer import Trainer

TEMPERATURES = (4.0, 1.0)


# ---- metrics (pure functions) ---------------------------------------------------------------------------
def mean_pairwise_cosine_distance(z: Tensor) -> float:
    """Mean of ``1 - cos(z_i, z_j)`` over ordered pairs i != j of the rows of ``z`` [n, d] (nan if n < 2).

    Uses ``sum_{i,j} <u_i, u_j> = ||sum_i u_i||^2`` for unit rows u, so it costs O(n d) instead of O(n^2 d).
    """
    n = z.shape[0]
    if n < 2:
        return float("nan")
    u = F.normalize(z.double(), dim=1)
    total = u.sum(dim=0).square().sum()
    mean_cos = (total - n) / (n * (n - 1))  # drop the n self-similarities (each exactly 1)
    return float(1.0 - mean_cos)


def spread(z: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Intra-class spread (mean over classes of the within-class mean pairwise cosine distance), inter-class
    spread (mean pairwise cosine distance between the means of the unit-normalised rows of each class), and
    their ratio."""
    u = F.normalize(z.double(), dim=1)
    intra = [mean_pairwise_cosine_distance(u[labels == k]) for k in range(num_classes)]
    intra = [v for v in intra if not math.isnan(v)]
    means = torch.stack([u[labels == k].mean(dim=0) for k in range(num_classes) if (labels == k).any()])
    inter = mean_pairwise_cosine_distance(means)
    intra_mean = sum(intra) / len(intra)
    return {"intra": intra_mean, "inter": inter, "ratio": intra_mean / inter}


def non_target_entropy(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean entropy (nats) of the non-target distribution ``p_k / (1 - p_y)``, k != y, of softmax(z / T).

    That distribution equals the softmax of the non-target logits alone, which is how it is computed (stable
    even when p_y is close to 1).
    """
    z = (logits.double() / temperature).scatter(1, labels[:, None], float("-inf"))
    log_q = torch.log_softmax(z, dim=1)
    q = log_q.exp()
    return float(-(q * log_q.nan_to_num(neginf=0.0)).sum(dim=1).mean())


def measure(features: Tensor, logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, Any]:
    """Every spread/entropy metric of one network on one split."""
    out: dict[str, Any] = {"top1": float((logits.argmax(dim=1) == labels).double().mean() * 100), "n": len(labels),
                           "feature": spread(features, labels, num_classes)}
    for t in TEMPERATURES:
        key = f"T{t:g}"
        out[f"soft_{key}"] = spread(torch.softmax(logits.double() / t, dim=1), labels, num_classes)
        out[f"entropy_{key}"] = non_target_entropy(logits, labels, t)
    return out


@torch.no_grad()
def outputs(model: torch.nn.Module, images: Tensor, augment: Any, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """Penultimate features and logits of ``model`` in eval mode on un-augmented ``images`` (uint8)."""
    model.eval()
    feats, logits = [], []
    for i in range(0, images.shape[0], batch_size):
        out = model.forward_features(augment.evaluate(images[i:i + batch_size]))
        feats.append(out.pooled.float().cpu())
        logits.append(out.logits.float().cpu())
    return torch.cat(feats), torch.cat(logits)


# ---- training -------------------------------------------------------------------------------------------
def train_one(method: str, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Train one network with ``method`` and measure it on the training and test slices."""
    overrides = [
        f"method={method}", f"student.arch={args.arch}", "data.name=cifar100", f"data.root={args.data_root}",
        f"data.classes={args.classes}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        f"train.lr={args.lr}", "train.schedule=cosine", f"train.seed={args.seed}", f"train.device={args.device}",
        "train.progress=false", "train.log_interval=20", "train.eval_batch_size=500",
        f"output_dir={work_dir / method}", "overwrite=true",
    ]
    if args.train_limit:
        overrides.append(f"data.train_limit={args.train_limit}")
    if method == "intra_class":
        overrides += [f"intra_class.{kv}" for kv in args.intra]
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg)
    start = time.perf_counter()
    summary = trainer.fit()
    seconds = time.perf_counter() - start
    model, data = trainer.distiller.student, trainer.data
    result: dict[str, Any] = {"method": method, "train_seconds": round(seconds, 1), "summary": summary}
    if method == "intra_class":
        result["params"] = {k: getattr(cfg.intra_class, k) for k in
                            ("ce_weight", "contrast_weight", "tau", "delta", "margin", "queue_size")}
        result["last_epoch"] = _last_epoch_record(work_dir / method)
    for split, loader in (("train", data.train), ("test", data.test)):
        feats, logits = outputs(model, loader.images, data.augment)
        result[split] = measure(feats, logits, loader.labels.cpu(), data.num_classes)
    return result


def _last_epoch_record(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "epoch"][-1]
    return {k: v for k, v in last.items() if k.startswith("train/")}


# ---- report ---------------------------------------------------------------------------------------------
ROWS: list[tuple[str, str]] = [
    ("top-1 accuracy (%)", "top1"),
    ("feature spread, intra-class (cos dist)", "feature.intra"),
    ("feature spread, between class means", "feature.inter"),
    ("feature intra / inter", "feature.ratio"),
    ("soft labels T=4, intra-class", "soft_T4.intra"),
    ("soft labels T=4, between class means", "soft_T4.inter"),
    ("soft labels T=1, intra-class", "soft_T1.intra"),
    ("soft labels T=1, between class means", "soft_T1.inter"),
    ("non-target entropy T=4 (nats)", "entropy_T4"),
    ("non-target entropy T=1 (nats)", "entropy_T1"),
]


def _get(d: dict[str, Any], dotted: str) -> float:
    for part in dotted.split("."):
        d = d[part]
    return float(d)  # type: ignore[arg-type]


def markdown_table(ce: dict[str, Any], intra: dict[str, Any], num_classes: int) -> str:
    """Rows = metrics; columns = CE / intra-class teacher on the training and test slices."""
    lines = ["| metric | CE (train) | intra-class (train) | CE (test) | intra-class (test) |",
             "|---|---|---|---|---|"]
    for label, key in ROWS:
        cells = [_get(r[split], key) for split in ("train", "test") for r in (ce, intra)]
        digits = 2 if key == "top1" else 4
        lines.append(f"| {label} | " + " | ".join(f"{v:.{digits}f}" for v in cells) + " |")
    lines.append(f"| training time (s) | {ce['train_seconds']:.0f} | {intra['train_seconds']:.0f} | | |")
    lines.append(f"\nMaximum non-target entropy: log({num_classes - 1}) = {math.log(num_classes - 1):.4f} nats.")
    last = intra.get("last_epoch", {})
    if "train/gate_pass_fraction" in last:
        # How much the contrast acted: with the margin gate, only confident anchors feed it.
        lines.append(f"Intra-class teacher, last epoch: {100 * last['train/gate_pass_fraction']:.1f}% of anchors "
                     f"passed the margin gate; weighted contrast term {last['train/intra']:.4f}, "
                     f"CE {last['train/ce']:.4f}.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=os.environ.get("PCKD_TEST_DATA"),
                   help="folder holding cifar-100-python/ (default: $PCKD_TEST_DATA)")
    p.add_argument("--classes", type=int, default=20, help="first N CIFAR-100 classes (default 20)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--train-limit", type=int, default=None, help="keep the first N training images of the slice")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--intra", action="append", default=[], metavar="KEY=VALUE",
                   help="intra_class.* override for the intra-class teacher, e.g. --intra delta=0.3 (repeatable)")
    p.add_argument("--work-dir", default=None, help="where the two runs go (default: a temporary folder)")
    p.add_argument("--out", default="runs/benchmarks/intra_class_teacher.json", help="JSON results file")
    args = p.parse_args(argv)
    if not args.data_root:
        p.error("give --data-root or set PCKD_TEST_DATA")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(args.work_dir or tmp)
        ce = train_one("ce", args, work_dir)
        intra = train_one("intra_class", args, work_dir)
    table = markdown_table(ce, intra, args.classes)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")}
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    report = {"settings": settings, "machine": machine, "wall_seconds": round(time.perf_counter() - start, 1),
              "ce": ce, "intra_class": intra, "table": table}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nsettings: {json.dumps(settings)}")
    print(table)
    print(f"\nwall time {report['wall_seconds']:.0f} s; JSON written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
