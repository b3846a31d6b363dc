"""Fig. 7: the easiest and hardest training images by the difficulty s_i of Eq. 5.

s_i = CE_i / mean CE. From ``preview_records.csv`` it is what training computed (the batch mean of Eq. 5, for
the last recorded epoch); recomputed with a student, the mean is taken over the whole training set.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pckd.analyze.output import class_label, new_figure, save_figure
from pckd.errors import UserError


def difficulty_scores(ce: np.ndarray) -> np.ndarray:
    """Eq. 5 with the mean over all given samples: s_i = CE_i / mean CE (0 everywhere when every CE is 0)."""
    x = np.asarray(ce, dtype=np.float64)
    mean = x.mean() if x.size else 0.0
    return x / mean if mean > 0 else np.zeros_like(x)


def read_records(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, label, difficulty) of a ``preview_records.csv``; UserError naming the file when it is missing
    (only PCKD runs write it) or malformed."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
        label = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        diff = np.array([float(r["difficulty"]) for r in rows], dtype=np.float64)
    except FileNotFoundError:
        raise UserError(f"'{path}' not found: only PCKD runs record the difficulty; use analyze.difficulty=student "
                        "or leave difficulty out of --figures") from None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"'{path}' cannot be read as preview records ({type(exc).__name__}: {exc}); it may be "
                        "damaged; use analyze.difficulty=student") from None
    if not rows:
        raise UserError(f"'{path}' holds no records; use analyze.difficulty=student")
    return index, label, diff


def extremes(difficulty: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``n`` easiest (ascending s) and the ``n`` hardest (descending s) samples; ties keep
    the dataset order; with fewer than 2n samples each side gets half."""
    s = np.asarray(difficulty, dtype=np.float64)
    n = min(n, s.size // 2)
    order = np.argsort(s, kind="stable")
    hardest = np.argsort(-s, kind="stable")
    return order[:n], hardest[:n]


GRID_COLUMNS = 8


def plot_difficulty(groups: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], names: list[str], path: Path,
                    title: str) -> Path:
    """One block of images per (heading, images uint8 [n, 3, H, W], labels [n], s [n]) group, up to 8 per row,
    each captioned with its class and its s_i."""
    rows = [(g, i) for g, (_, images, _, _) in enumerate(groups) for i in range(0, len(images), GRID_COLUMNS)]
    cols = min(GRID_COLUMNS, max(len(images) for _, images, _, _ in groups))
    fig = new_figure(1.45 * cols + 0.4, 1.6 * len(rows) + 0.9)
    grid = fig.add_gridspec(len(rows), cols, hspace=0.4, wspace=0.08)
    for r, (g, start) in enumerate(rows):
        heading, images, labels, scores = groups[g]
        for c in range(cols):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            k = start + c
            if k >= len(images):
                ax.set_axis_off()
                continue
            ax.imshow(np.transpose(np.asarray(images[k]), (1, 2, 0)), interpolation="nearest")
            ax.set_title(f"{class_label(names, int(labels[k]))}\ns = {float(scores[k]):.3g}", fontsize=8)
            if c == 0 and start == 0:
                ax.set_ylabel(heading, fontsize=10, fontweight="bold")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.75 / fig.get_figheight(), bottom=0.02)
    return save_figure(fig, path)


def difficulty_numbers(index: np.ndarray, labels: np.ndarray, scores: np.ndarray, n: int,
                       source: str) -> dict[str, Any]:
    """The easiest and hardest samples (dataset index, label, s_i) and the summary of s, for the JSON."""
    easy, hard = extremes(scores, n)
    def pick(pos: np.ndarray) -> dict[str, Any]:
        return {"index": index[pos], "label": labels[pos], "difficulty": scores[pos]}
    return {"source": source, "samples": int(scores.size), "mean": float(scores.mean()) if scores.size else None,
            "max": float(scores.max()) if scores.size else None, "easiest": pick(easy), "hardest": pick(hard)}
