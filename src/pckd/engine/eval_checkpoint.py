"""`pckd eval`: evaluate any checkpoint on the configured test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pckd.config import _deep_merge, parse_overrides, resolve_config
from pckd.data import build_data
from pckd.engine.build import build_network, resolve_device
from pckd.engine.evaluate import evaluate
from pckd.errors import UserError
from pckd.models import read_checkpoint


def evaluate_checkpoint(path: str, overrides: list[str]) -> dict[str, Any]:
    """Top-1/top-5 of the checkpoint's model on the test set. A pckd checkpoint brings its own config (arch,
    data); other files need ``student.arch=...`` and the data keys as overrides."""
    ckpt_path = Path(path)
    state = read_checkpoint(ckpt_path, trust=any(o.strip() == "student.trust_checkpoint=true" for o in overrides))
    base: dict[str, Any] = {}
    if isinstance(state, dict) and state.get("format") == "pckd":
        base = yaml.safe_load(state["config"])
        base = {k: base[k] for k in ("data", "train") if k in base}
        base["student"] = {"arch": state["arch"]}
    merged = _deep_merge(base, parse_overrides(overrides))
    if "arch" not in merged.get("student", {}):
        raise UserError(f"'{ckpt_path}' does not say its architecture; add student.arch=NAME (see 'pckd models')")
    merged["student"]["checkpoint"] = str(ckpt_path)
    merged["method"] = "ce"
    cfg = resolve_config(None, [], base=merged)
    device = resolve_device(cfg.train.device)
    data = build_data(cfg.data, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.seed, device)
    model = build_network(cfg.student, "student", data.num_classes, data.input_size).to(device)
    result = evaluate(model, data.test, data.augment)
    return {"checkpoint": str(ckpt_path), "arch": cfg.student.arch, "data": cfg.data.name, **result}


