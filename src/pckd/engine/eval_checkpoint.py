"""`pckd eval`: evaluate any checkpoint on the configured test set."""

from __future__ import annotations

from typing import Any

from pckd.data import build_data
from pckd.engine.build import build_network, resolve_device
from pckd.engine.checkpoint_config import load_checkpoint_config
from pckd.engine.evaluate import evaluate


def evaluate_checkpoint(path: str, overrides: list[str]) -> dict[str, Any]:
    """Top-1/top-5 of the checkpoint's model on the test set. A pckd checkpoint brings its own config (arch,
    data); other files need ``student.arch=...`` and the data keys as overrides."""
    cfg = load_checkpoint_config(path, overrides).cfg
    device = resolve_device(cfg.train.device)
    data = build_data(cfg.data, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.seed, device)
    model = build_network(cfg.student, "student", data.num_classes, data.input_size).to(device)
    result = evaluate(model, data.test, data.augment)
    return {"checkpoint": str(path), "arch": cfg.student.arch, "data": str(cfg.data.name), **result}
