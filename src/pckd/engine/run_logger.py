"""Everything a run writes besides checkpoints: metrics.jsonl, TensorBoard events, summary.json.

Only rank 0 writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pckd.run_folder import METRICS, TENSORBOARD, Manifest, write_atomically, write_failed


def _clean(value: Any) -> Any:
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Append-only metrics log plus TensorBoard scalars/histograms, and the methods' EpochWriter.

    Every file it (or the trainer, through :meth:`record`) writes is recorded in the run folder's manifest, so an
    ``overwrite=true`` run later removes exactly these files.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb: Any = None
        self._manifest: Manifest | None = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._manifest = Manifest(self.run_dir)
            self.record(METRICS)
            try:
                self._metrics = open(self.run_dir / METRICS, "a", buffering=1)  # noqa: SIM115 (open for the run; closed in close())
            except OSError as exc:
                raise write_failed(self.run_dir / METRICS, exc) from None
            if tensorboard:
                self._open_tensorboard()

    def _open_tensorboard(self) -> None:
        folder = self.run_dir / TENSORBOARD
        if folder.is_symlink():  # never write through a link into someone else's folder
            return
        created = not folder.exists()
        before = set(os.listdir(folder)) if folder.is_dir() else set()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(folder))
        except ImportError:  # tensorboard is a dependency, but keep training if it is broken
            self._tb = None
            return
        if created:
            self.record(TENSORBOARD)
        else:  # a folder that existed: record only the event files this run adds
            for name in sorted(set(os.listdir(folder)) - before):
                self.record(f"{TENSORBOARD}/{name}")

    def record(self, name: str) -> None:
        """Note that this run wrote ``name`` (relative to the run folder)."""
        if self._manifest is not None:
            self._manifest.add(name)

    def log(self, record: dict[str, Any], step: int | None = None) -> None:
        """One JSON line; numeric entries also go to TensorBoard at ``step``."""
        if not self.enabled:
            return
        clean = {k: _clean(v) for k, v in record.items()}
        clean.setdefault("time", round(time.time(), 3))
        line = json.dumps(clean) + "\n"
        try:
            self._metrics.write(line)
            self._metrics.flush()
        except OSError as exc:  # disk full: the line is lost, the run stops naming the file
            self._drop_unwritten()
            raise write_failed(self.run_dir / METRICS, exc) from None
        if self._tb is not None and step is not None:
            for key, value in clean.items():
                if key in ("epoch", "step", "time", "kind") or not isinstance(value, (int, float)):
                    continue
                self._tb.add_scalar(key, value, step)

    # EpochWriter interface used by methods
    def scalar(self, name: str, value: float, epoch: int) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_scalar(name, float(value), epoch)

    def histogram(self, name: str, values: Tensor, epoch: int) -> None:
        if self.enabled and self._tb is not None and values.numel() > 0:
            self._tb.add_histogram(name, values.detach().float().cpu(), epoch)

    def write_text(self, name: str, text: str) -> None:
        """Write the run-folder file ``name`` atomically (temporary file, then rename) and record it."""
        if not self.enabled:
            return
        self.record(name)
        write_atomically(self.run_dir / name, text.encode())

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        """``payload`` as indented JSON (non-finite floats as strings), written like :meth:`write_text`."""
        self.write_text(name, json.dumps({k: _clean(v) for k, v in payload.items()}, indent=2) + "\n")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def _drop_unwritten(self) -> None:
        """Forget what a failed write left in the metrics file's buffer, so closing it does not fail again."""
        with contextlib.suppress(OSError, ValueError):
            os.close(self._metrics.fileno())
        with contextlib.suppress(OSError, ValueError):
            self._metrics.close()

    def close(self) -> None:
        """Close the metrics file and TensorBoard (a second call does nothing)."""
        if self.enabled and not self._metrics.closed:
            try:
                self._metrics.close()
            except OSError as exc:
                self._drop_unwritten()
                raise write_failed(self.run_dir / METRICS, exc) from None
            finally:
                if self._tb is not None:
                    self._tb.close()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
