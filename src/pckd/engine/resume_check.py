"""What may change when a run resumes: its settings must be the ones it was trained with.

A resumed run that silently took new hyper-parameters would mislabel every epoch of its history. Only the keys
of :data:`RUNTIME_KEYS` (how the run executes, not what it computes) may differ, and ``train.epochs`` may grow
(an explicit extension, recorded in the run folder); anything else is refused in one line listing the changes.
"""

from __future__ import annotations

from typing import Any

import yaml

from pckd.errors import UserError

RUNTIME_KEYS = frozenset({
    "output_dir", "resume", "overwrite", "data.root", "data.download", "data.num_workers", "train.device",
    "train.progress", "train.log_interval", "train.checkpoint_every", "train.eval_batch_size", "train.compile",
    "train.channels_last", "train.teacher_channels_last", "train.eval_teacher", "teacher.checkpoint",
    "teacher.trust_checkpoint", "student.trust_checkpoint",
})
EXTENSIBLE = "train.epochs"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved_yaml: str, current_yaml: str) -> dict[str, tuple[Any, Any]]:
    """``key -> (saved, current)`` for every setting that differs, runtime keys left out."""
    saved, current = _flatten(yaml.safe_load(saved_yaml) or {}), _flatten(yaml.safe_load(current_yaml) or {})
    # A key the saved config lacks was added to pckd after the run started: the run had its default.
    keys = sorted(k for k in current if k in saved)
    return {k: (saved[k], current[k]) for k in keys if k not in RUNTIME_KEYS and saved[k] != current[k]}


def check_resume(saved_yaml: str, current_yaml: str, epochs_done: int, run_config: str) -> dict[str, tuple[Any, Any]]:
    """Refuse changed settings (UserError listing them); return the allowed changes (an extension of
    ``train.epochs``), which the caller records."""
    changes = config_changes(saved_yaml, current_yaml)
    refused = {k: v for k, v in changes.items() if k != EXTENSIBLE}
    if EXTENSIBLE in changes:
        _, new = changes[EXTENSIBLE]
        if isinstance(new, int) and new < epochs_done:
            refused[EXTENSIBLE] = changes[EXTENSIBLE]
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise UserError(f"resume=true with settings that differ from the run's: {listed}. Resume with "
                        f"'{run_config}' as it is (only train.epochs may grow), or start a new run in another "
                        f"output_dir")
    return {k: v for k, v in changes.items() if k == EXTENSIBLE}
