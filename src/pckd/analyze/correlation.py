"""The |teacher - student| difference of the class correlations of the logits (mdistiller's correlation notebook).

For a model, C[l, k] is the mean logit of class k over the test images labelled l (a K x K matrix: how much each
class's images resemble every class). The figure is D = |C_teacher - C_student| with its diagonal set to 0, as
in mdistiller; its mean over all K x K entries (the zeroed diagonal included, as there) is the number printed.
A class without test images has a NaN row in C and in D, left out of the mean and the max.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pckd.analyze.output import class_label, new_figure, save_figure


def class_mean_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """C[l] = the mean of the logit rows of the images labelled l, shape [K, K]; NaN rows for absent classes."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    sums = np.zeros((num_classes, z.shape[1]))
    np.add.at(sums, y, z)
    count = np.bincount(y, minlength=num_classes).astype(np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, sums / np.maximum(count, 1), np.nan)


def correlation_difference(teacher_logits: np.ndarray, student_logits: np.ndarray, labels: np.ndarray,
                           num_classes: int) -> dict[str, Any]:
    """D = |C_t - C_s| with a zero diagonal, its mean (over all entries) and max, and the classes counted."""
    diff = np.abs(class_mean_logits(teacher_logits, labels, num_classes)
                  - class_mean_logits(student_logits, labels, num_classes))
    np.fill_diagonal(diff, 0.0)
    present = ~np.isnan(diff).any(axis=1)
    kept = diff[present]
    return {"difference": diff, "mean": float(kept.mean()) if kept.size else float("nan"),
            "max": float(kept.max()) if kept.size else float("nan"), "classes_present": int(present.sum())}


def plot_correlation(numbers: dict[str, Any], names: list[str], path: Path, title: str,
                     vmax: float | None = None) -> Path:
    """Heatmap of D (rows: the images' class, columns: the logit's class) with a colour bar; class names on the
    axes when there are at most 20 classes."""
    diff = np.asarray(numbers["difference"], dtype=np.float64)
    k = diff.shape[0]
    top = vmax if vmax is not None else (numbers["max"] if np.isfinite(numbers["max"]) and numbers["max"] > 0 else 1.0)
    side = 6.0 if k <= 20 else 8.0
    fig = new_figure(side + 0.9, side + 0.3)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(diff, cmap="PuBuGn", vmin=0.0, vmax=top, interpolation="nearest")
    if k <= 20:
        labels = [class_label(names, i) for i in range(k)]
        ax.set_xticks(range(k), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(k), labels, fontsize=8)
    ax.set(xlabel="logit of class k", ylabel="test images of class l")
    ax.set_title(f"mean {numbers['mean']:.4f}, max {numbers['max']:.4f} (diagonal set to 0)", fontsize=10)
    fig.colorbar(image, ax=ax, label="|C_teacher - C_student| (mean logit)", fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.11, right=0.93, top=0.89, bottom=0.1 if k <= 20 else 0.07)
    return save_figure(fig, path)
