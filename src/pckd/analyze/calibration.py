"""Reliability diagram and expected calibration error (ECE) of the student and the teacher on the test set.

The confidence of a prediction is its largest softmax probability. The interval [0, 1] is cut into B equal bins
((b-1)/B, b/B] (a confidence of exactly 0 falls into the first); for bin b with n_b predictions, acc_b is the
fraction correct and conf_b the mean confidence, and

    ECE = sum_b (n_b / N) |acc_b - conf_b|       (Guo et al., ICML 2017).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pckd.analyze.output import new_figure, save_figure


def bin_of(confidence: np.ndarray, bins: int) -> np.ndarray:
    """The bin (0..bins-1) of each confidence: bin b holds (b/bins, (b+1)/bins], and 0 goes to bin 0."""
    return np.clip(np.ceil(np.asarray(confidence, dtype=np.float64) * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int) -> dict[str, Any]:
    """Per bin: count, accuracy and mean confidence (None for empty bins), the bin edges and the ECE."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    which = bin_of(conf, bins)
    count = np.bincount(which, minlength=bins)
    acc_sum = np.bincount(which, weights=hit, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    filled = count > 0
    accuracy = np.where(filled, acc_sum / np.maximum(count, 1), np.nan)
    mean_conf = np.where(filled, conf_sum / np.maximum(count, 1), np.nan)
    n = max(int(count.sum()), 1)
    ece = float(np.sum(count[filled] / n * np.abs(accuracy[filled] - mean_conf[filled])))
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "count": count, "accuracy": accuracy,
            "confidence": mean_conf, "ece": ece, "n": int(count.sum()),
            "top1": float(hit.mean()) if hit.size else float("nan"),
            "mean_confidence": float(conf.mean()) if conf.size else float("nan")}


def softmax_confidence(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(largest softmax probability, whether the arg-max is the label) of each row of ``logits``."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p.max(axis=1), p.argmax(axis=1) == np.asarray(labels)


def plot_calibration(panels: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> Path:
    """One reliability diagram per model: accuracy per bin (bars), the gap to the diagonal, the diagonal, and the
    share of predictions in each bin below."""
    fig = new_figure(5.2 * len(panels) + 0.6, 6.2)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3.2, 1.0], hspace=0.08)
    for n, (who, rel) in enumerate(panels):
        edges = np.asarray(rel["edges"], dtype=np.float64)
        width = edges[1] - edges[0]
        centre = edges[:-1] + width / 2
        acc = np.nan_to_num(np.asarray(rel["accuracy"], dtype=np.float64))
        conf = np.asarray(rel["confidence"], dtype=np.float64)
        filled = np.asarray(rel["count"]) > 0
        ax = fig.add_subplot(grid[0, n])
        ax.bar(centre[filled], acc[filled], width=width * 0.95, color="tab:blue", edgecolor="navy", lw=0.5,
               label="accuracy in bin")
        gap_lo, gap_hi = np.minimum(acc, conf), np.maximum(acc, conf)
        ax.bar(centre[filled], (gap_hi - gap_lo)[filled], bottom=gap_lo[filled], width=width * 0.95,
               color="tab:red", alpha=0.35, edgecolor="tab:red", lw=0.5, hatch="//", label="gap to confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
        ax.tick_params(labelbottom=False)
        ax.set_title(f"{who}: ECE {100 * rel['ece']:.2f}%  (top-1 {100 * rel['top1']:.1f}%)", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        share = fig.add_subplot(grid[1, n], sharex=ax)
        total = max(int(rel["n"]), 1)
        share.bar(centre, np.asarray(rel["count"]) / total, width=width * 0.95, color="tab:gray")
        share.set(xlim=(0, 1), xlabel="confidence (largest softmax probability)", ylabel="share of test set")
        share.grid(alpha=0.3)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.1, wspace=0.25)
    return save_figure(fig, path)
