"""PCKD's per-sample records: each training sample's difficulty and preview weight, per epoch.

Steps append (index, label, difficulty, weight) on the device (no host sync); at the epoch's end the records
are gathered over ranks and summarised into the preview history (the data of the paper's Fig. 6, drawn by
``pckd report``) and the epoch's CSV (the data of Fig. 7, drawn by ``pckd analyze``).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import torch
from torch import Tensor

from pckd.distributed import all_gather_cat

RECORDS_CSV = "preview_records.csv"
HISTORY_JSON = "preview_history.json"
PROBES_PER_GROUP = 8  # Fig. 6 follows the 8 easiest and 8 hardest samples of the first recorded epoch
COLUMNS = ("index", "label", "difficulty", "weight")


class PreviewRecords:
    """The current epoch's per-sample records and the history of every finished epoch."""

    def __init__(self) -> None:
        self.steps: dict[str, list[Tensor]] = {k: [] for k in COLUMNS}
        self.history: dict[str, Any] = {"probe_indices": [], "probe_groups": [], "epochs": []}

    def add(self, index: Tensor, labels: Tensor, s: Tensor, w: Tensor) -> None:
        """Keep one step's (index, label, difficulty, weight) on the device; no host sync."""
        rec = self.steps
        rec["index"].append(index.detach().to(device=s.device, dtype=torch.long, non_blocking=True))
        rec["label"].append(labels.detach().long())
        rec["difficulty"].append(s.detach().float())
        rec["weight"].append(w.detach().float())

    def clear(self) -> None:
        """Forget the current epoch's steps."""
        for values in self.steps.values():
            values.clear()

    def gathered(self) -> dict[str, Tensor] | None:
        """This epoch's records gathered over ranks (collective), on the CPU, sorted by index, one row per
        index (DistributedSampler pads with repeated samples: the last seen is kept); None without steps."""
        if not self.steps["index"]:
            return None
        cols = {k: all_gather_cat(torch.cat(v)).cpu() for k, v in self.steps.items()}
        order = torch.argsort(cols["index"], stable=True)
        cols = {k: v[order] for k, v in cols.items()}
        idx = cols["index"]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[:-1] = idx[1:] != idx[:-1]
        return {k: v[keep] for k, v in cols.items()}

    def update_history(self, epoch: int, threshold: float, rec: dict[str, Tensor]) -> dict[str, Any]:
        """Add (or replace, for a re-run epoch) the summary of ``epoch``; returns that entry."""
        s, w, idx = rec["difficulty"].double(), rec["weight"].double(), rec["index"]
        hard = s > threshold

        def mean_or_none(x: Tensor) -> float | None:
            return float(x.mean()) if x.numel() else None

        h = self.history
        if not h["probe_indices"]:  # pick the probes once, at the first recorded epoch
            order = torch.argsort(s, stable=True)
            k = min(PROBES_PER_GROUP, idx.numel() // 2)
            easy, hardest = order[:k], order[order.numel() - k:].flip(0)
            h["probe_indices"] = [int(i) for i in idx[easy]] + [int(i) for i in idx[hardest]]
            h["probe_groups"] = ["easy"] * k + ["hard"] * k
            h["probe_epoch"] = int(epoch)
        position = {int(i): n for n, i in enumerate(idx.tolist())}
        entry = {
            "epoch": int(epoch),
            "threshold": float(threshold),
            "samples": int(idx.numel()),
            "hard_fraction": float(hard.double().mean()),
            "weight_mean": float(w.mean()),
            "weight_min": float(w.min()),
            "weight_easy": mean_or_none(w[~hard]),
            "weight_hard": mean_or_none(w[hard]),
            "probe_weights": [float(w[position[i]]) if i in position else None for i in h["probe_indices"]],
            "probe_difficulty": [float(s[position[i]]) if i in position else None for i in h["probe_indices"]],
        }
        h["epochs"] = [e for e in h["epochs"] if e["epoch"] != epoch] + [entry]
        return entry

    def history_json(self) -> str:
        """The history as the text of ``preview_history.json``."""
        return json.dumps(self.history, indent=1) + "\n"

    @staticmethod
    def csv_text(rec: dict[str, Tensor]) -> str:
        """One epoch's records as the text of ``preview_records.csv``."""
        buf = io.StringIO(newline="")
        out = csv.writer(buf)
        out.writerow(COLUMNS)
        rows = zip(rec["index"].tolist(), rec["label"].tolist(), rec["difficulty"].tolist(), rec["weight"].tolist())
        out.writerows((i, y, f"{d:.6g}", f"{w:.6g}") for i, y, d, w in rows)
        return buf.getvalue()

    # ---- checkpointed state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The history (plain lists/dicts/floats, loadable with ``weights_only``) and, when saved mid-epoch,
        this rank's records of the epoch so far (CPU tensors)."""
        state: dict[str, Any] = {"preview_history": json.loads(json.dumps(self.history))}
        if self.steps["index"]:
            state["epoch_records"] = {k: torch.cat(v).detach().cpu() for k, v in self.steps.items()}
        return state

    def load_state(self, state: dict[str, Any], device: torch.device) -> None:
        """Inverse of :meth:`state`."""
        history = state.get("preview_history")
        if history is not None:
            self.history = json.loads(json.dumps(history))
        records = state.get("epoch_records")
        if records:
            self.steps = {k: [records[k].to(device)] for k in COLUMNS}
