"""Writing a figure and its numbers: a fresh Agg figure (pyplot's global state is never touched), atomic PNG and
JSON writes, and numbers made JSON-safe."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pckd.errors import UserError


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write '{path}' ({exc.strerror}); set analyze.output_dir=...") from None


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
    except OSError as exc:
        raise UserError(f"cannot write '{path}' ({exc.strerror}); set analyze.output_dir=...") from None
    _replace(tmp, path)
    return path


def plain(value: Any, digits: int = 6) -> Any:
    """``value`` as JSON-safe Python: arrays and tensors to (nested) lists, floats rounded to ``digits``
    significant digits, NaN and infinities to None."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), digits)
    if isinstance(value, dict):
        return {str(k): plain(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        x = float(value)
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    return value


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Write ``plain(data)`` as indented JSON at ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(plain(data), indent=1) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write '{path}' ({exc.strerror}); set analyze.output_dir=...") from None
    _replace(tmp, path)
    return path


def class_label(names: list[str], k: int) -> str:
    """The name of class ``k`` (its id when the data has no names)."""
    return names[k] if 0 <= k < len(names) and names[k] else str(k)
