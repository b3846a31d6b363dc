"""The paper's Fig. 6 from a PCKD run's ``preview_history.json``: how the preview weights of easy and hard
samples evolve over the epochs (drawn by ``pckd report``; training never imports matplotlib)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pckd.errors import UserError

HISTORY_JSON = "preview_history.json"


def read_history(run_dir: Path) -> dict[str, Any]:
    """The preview history of a PCKD run folder; UserError naming the file when it is missing or unreadable."""
    path = Path(run_dir) / HISTORY_JSON
    try:
        history = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"'{path}' not found: only PCKD runs record a preview history") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"'{path}' cannot be read ({exc}); it may be damaged") from None
    if not isinstance(history, dict) or not isinstance(history.get("epochs"), list):
        raise UserError(f"'{path}' is not a preview history (no 'epochs' list)")
    return history


def plot_preview_history(history: dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw the history: left, the weight of the 8 easiest and 8 hardest samples of the first recorded epoch;
    right, the mean weight of easy (s <= t) and hard samples, the hard fraction and the threshold t."""
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # Agg, without touching pyplot's state
    )
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    entries = sorted(history["epochs"], key=lambda e: e["epoch"])
    epochs = [e["epoch"] for e in entries]
    groups, indices = history.get("probe_groups", []), history.get("probe_indices", [])
    fig = Figure(figsize=(12, 4.4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    first = history.get("probe_epoch", epochs[0] if epochs else 1)
    mark = "o" if len(epochs) < 30 else None
    for n, (group, _index) in enumerate(zip(groups, indices)):
        ys = [e["probe_weights"][n] if n < len(e["probe_weights"]) else None for e in entries]
        color = "tab:red" if group == "hard" else "tab:blue"
        label = f"{group}est at epoch {first}" if n in (0, len(groups) // 2) else None
        ax1.plot(epochs, [math.nan if y is None else y for y in ys], color=color, alpha=0.6, lw=1,
                 marker="." if mark else None, label=label)
    ax1.set(title=f"preview weight of {len(groups)} probe samples", xlabel="epoch", ylabel="weight w_i",
            ylim=(-0.03, 1.05))
    ax1.legend(loc="lower right", fontsize=8, framealpha=0.9)

    def series(key: str) -> list[float]:
        return [math.nan if e.get(key) is None else e[key] for e in entries]

    ax2.plot(epochs, series("weight_easy"), color="tab:blue", marker=mark, label="mean weight, easy (s <= t)")
    ax2.plot(epochs, series("weight_hard"), color="tab:red", marker=mark, label="mean weight, hard (s > t)")
    ax2.plot(epochs, series("hard_fraction"), color="tab:gray", ls="--", marker=mark, label="fraction of hard samples")
    ax2.set(title="easy vs hard samples", xlabel="epoch", ylabel="weight / fraction", ylim=(-0.03, 1.05))
    twin = ax2.twinx()
    twin.plot(epochs, series("threshold"), color="tab:green", ls=":", label="threshold t (right axis)")
    twin.set_ylabel("threshold t = gamma^epoch")
    lines = ax2.get_lines() + twin.get_lines()
    ax2.legend(lines, [ln.get_label() for ln in lines], loc="center left", bbox_to_anchor=(1.12, 0.5), fontsize=8)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path
