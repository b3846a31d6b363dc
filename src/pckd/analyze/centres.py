"""Fig. 1: heatmaps of the category centres (the classifier weights) of the teacher and the student.

Each row is one class's centre w_k (a row of the classifier weight [K, d]); both heatmaps share one symmetric
colour scale [-m, m], m = the largest |w| over both, so their magnitudes compare at a glance. When the
dimensions match, the cosine similarity cos(w_k^t, w_k^s) of each class is drawn beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pckd.analyze.output import class_label, new_figure, save_figure


def centre_cosines(teacher: np.ndarray, student: np.ndarray) -> np.ndarray | None:
    """Cosine similarity of each class's centres, shape [K]; None when the two have different shapes. A zero
    centre has cosine 0."""
    if teacher.shape != student.shape:
        return None
    t, s = teacher.astype(np.float64), student.astype(np.float64)
    norms = np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)
    dots = (t * s).sum(axis=1)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def shared_scale(*matrices: np.ndarray) -> float:
    """The half-width m of the shared colour scale [-m, m]: the largest |entry| of the matrices (1 if all 0)."""
    m = max((float(np.abs(x).max()) for x in matrices if x.size), default=0.0)
    return m if m > 0 else 1.0


def centres_numbers(student: np.ndarray, teacher: np.ndarray | None, classes: list[int],
                    names: list[str]) -> dict[str, Any]:
    """The numbers behind the figure: the chosen classes, both centre matrices (rows = those classes), the
    colour scale and the per-class cosine (None when the dimensions differ or there is no teacher)."""
    s = student[classes]
    t = teacher[classes] if teacher is not None else None
    cos = centre_cosines(t, s) if t is not None else None
    return {
        "classes": classes, "class_names": [class_label(names, k) for k in classes],
        "student_shape": list(student.shape), "teacher_shape": list(teacher.shape) if teacher is not None else None,
        "scale": shared_scale(s, *([t] if t is not None else [])),
        "cosine": cos, "mean_cosine": float(cos.mean()) if cos is not None else None,
        "student": s, "teacher": t,
    }


def plot_centres(numbers: dict[str, Any], path: Path, title: str) -> Path:
    """Draw the heatmaps (teacher above the student) with one shared colour bar, and the cosine bars."""
    s, t, cos = np.asarray(numbers["student"]), numbers["teacher"], numbers["cosine"]
    panels = [("teacher", np.asarray(t)), ("student", s)] if t is not None else [("student", s)]
    names, scale = numbers["class_names"], numbers["scale"]
    rows = len(names)
    fig = new_figure(13.0 if cos is not None else 11.0, 1.2 + 0.32 * rows * len(panels) + 0.6 * len(panels))
    ratios = [10, 0.25] + ([2.2] if cos is not None else [])
    grid = fig.add_gridspec(len(panels), len(ratios), width_ratios=ratios, wspace=0.08 if cos is None else 0.3)
    image = None
    for n, (who, matrix) in enumerate(panels):
        ax = fig.add_subplot(grid[n, 0])
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
        ax.set_yticks(range(rows), names, fontsize=8)
        ax.set_ylabel(f"{who}: class")
        ax.set_title(f"{who} centres ({matrix.shape[0]} classes x {matrix.shape[1]} dims)", fontsize=10)
        if n == len(panels) - 1:
            ax.set_xlabel("feature dimension")
        if cos is not None and n == len(panels) - 1:  # one cosine panel, beside the student rows
            bars = fig.add_subplot(grid[n, 2])
            values = np.asarray(cos)
            bars.barh(range(rows), values, color=np.where(values >= 0, "tab:green", "tab:red"))
            bars.set_ylim(rows - 0.5, -0.5)
            bars.set_xlim(min(-0.05, float(values.min()) - 0.05), 1.0)
            bars.set_yticks(range(rows), [""] * rows)
            bars.axvline(0, color="black", lw=0.6)
            bars.grid(axis="x", alpha=0.3)
            bars.set_title(f"cosine(teacher, student)\nmean {numbers['mean_cosine']:.3f}", fontsize=9)
            bars.set_xlabel("cosine similarity")
    cbar_ax = fig.add_subplot(grid[:, 1])
    fig.colorbar(image, cax=cbar_ax, label="weight value (shared scale)")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.12, right=0.97, top=1 - 0.9 / fig.get_figheight(), bottom=0.55 / fig.get_figheight() + 0.05)
    return save_figure(fig, path)
