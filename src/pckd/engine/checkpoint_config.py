"""The config of a command that starts from a checkpoint (``pckd eval``, ``pckd probe``, ``pckd analyze``).

Two passes through the one config path (:func:`pckd.config.load_config`): the command line alone first, so keys
such as ``student.trust_checkpoint=yes`` are read exactly as ``pckd train`` reads them; then, once the file is
read, the command line over what a pckd checkpoint stored (its architecture and the chosen sections of the
config it was trained with).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pckd.config import load_config
from pckd.config.yaml_source import parse_override_layer, parse_text
from pckd.errors import UserError
from pckd.models import read_checkpoint, safetensors_metadata

CHECKPOINT_KEY = "student.checkpoint"


@dataclass
class CheckpointConfig:
    """A resolved config whose ``student`` is the checkpoint's network, the file's content, and the config the
    checkpoint was trained with (a raw tree; None for files other than pckd checkpoints)."""

    cfg: Any
    state: Any
    stored: dict[str, Any] | None


def stored_config(state: Any) -> dict[str, Any] | None:
    """The raw config tree a pckd checkpoint was trained with (None for other files)."""
    if not (isinstance(state, dict) and state.get("format") == "pckd" and isinstance(state.get("config"), str)):
        return None
    tree = parse_text(state["config"], "the config stored in the checkpoint")
    return tree if isinstance(tree, dict) else None


def _exported(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(stored config, architecture) that ``pckd export`` wrote into a ``.safetensors`` header, if any."""
    from pckd.engine.export import ARCH_KEY, CONFIG_KEY

    meta = safetensors_metadata(path)
    if CONFIG_KEY not in meta or ARCH_KEY not in meta:
        return None, None
    tree = parse_text(meta[CONFIG_KEY], f"the config in the header of '{path}'")
    return (tree if isinstance(tree, dict) else None), meta[ARCH_KEY]


def load_checkpoint_config(checkpoint: str | Path, overrides: list[str], *, keep: tuple[str, ...] = ("data", "train"),
                           sections: dict[str, type] | None = None) -> CheckpointConfig:
    """Read ``checkpoint`` (trusting it only if ``student.trust_checkpoint`` says so) and resolve the command's
    config: the overrides over the stored config's ``keep`` sections and the checkpoint's architecture.

    Files other than pckd checkpoints need ``student.arch=NAME`` on the command line.
    """
    path = Path(checkpoint)
    first = load_config(None, overrides, base={"method": "ce"}, sections=sections)
    state = read_checkpoint(path, trust=first.student.trust_checkpoint, key_name=CHECKPOINT_KEY)
    stored = stored_config(state)
    arch = state.get("arch") if isinstance(state, dict) and state.get("format") == "pckd" else None
    if stored is None:
        stored, exported_arch = _exported(path)
        arch = exported_arch or arch
    base: dict[str, Any] = {"method": "ce"}
    if stored is not None:
        base.update({k: stored[k] for k in keep if isinstance(stored.get(k), dict)})
    if isinstance(arch, str) and arch:
        base["student"] = {"arch": arch}
    given = parse_override_layer(overrides).get("student", {})
    if "arch" not in base.get("student", {}) and not (isinstance(given, dict) and "arch" in given):
        raise UserError(f"'{path}' does not say its architecture; add student.arch=NAME (see 'pckd models')")
    cfg = load_config(None, overrides, base=base, sections=sections)
    cfg.student.checkpoint = str(path)
    return CheckpointConfig(cfg, state, stored)
