"""Fig. 7: the easiest and hardest training images by the difficulty s_i of Eq. 5 (numbers only so far; the
image grid and the command are not written yet).

s_i = CE_i / mean CE. From ``preview_records.csv`` it is what training computed (the batch mean of Eq. 5, for
the last recorded epoch); recomputed with a student, the mean is taken over the whole training set.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

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
