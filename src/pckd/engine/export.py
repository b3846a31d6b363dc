"""`pckd export`: a checkpoint's student weights as ``.safetensors``, with what using them needs in the header.

The header carries the architecture, the number of classes, the input normalisation and the config the
student was trained with, so ``pckd eval model.safetensors`` needs no ``student.arch`` or ``data.*`` keys, and a
deployment outside pckd knows how to feed the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pckd.config import load_config
from pckd.config.yaml_source import parse_text
from pckd.models import export_safetensors, read_checkpoint

# Header keys (safetensors metadata holds strings only).
ARCH_KEY = "pckd_arch"
CLASSES_KEY = "pckd_num_classes"
NORMALISATION_KEY = "pckd_normalization"
CONFIG_KEY = "pckd_config"


def input_normalisation(data: dict[str, Any]) -> dict[str, Any] | None:
    """Mean, std (per RGB channel, on [0, 1] pixels) and input side of a stored ``data`` section."""
    from pckd.data.augment import NORMALIZATION

    name = str(data.get("name", ""))
    if name == "digits":
        from pckd.data.digits import IMAGE_SIZE, digits_normalization

        mean, std = digits_normalization()
        side = IMAGE_SIZE
    elif name == "imagefolder":
        mean, std = NORMALIZATION["imagenet"]
        side = int(data.get("image_size", 224))
    elif name in NORMALIZATION:
        mean, std = NORMALIZATION[name]
        side = 32
    else:
        return None
    return {"mean": list(mean), "std": list(std), "input_size": side}


def export_metadata(state: Any) -> dict[str, str]:
    """The header entries for a pckd checkpoint's content (empty for other weights files)."""
    if not (isinstance(state, dict) and state.get("format") == "pckd" and isinstance(state.get("config"), str)):
        return {}
    tree = parse_text(state["config"], "the config stored in the checkpoint")
    meta = {ARCH_KEY: str(state.get("arch")), CONFIG_KEY: state["config"]}
    if isinstance(state.get("num_classes"), int):
        meta[CLASSES_KEY] = str(state["num_classes"])
    data = tree.get("data") if isinstance(tree, dict) else None
    norm = input_normalisation(data) if isinstance(data, dict) else None
    if norm is not None:
        meta[NORMALISATION_KEY] = json.dumps(norm)
    return meta


def export_checkpoint(checkpoint: str | Path, output: str | Path, overrides: list[str] | None = None) -> Path:
    """Export ``checkpoint``'s student weights to ``output`` (see the module docstring); ``overrides`` may set
    ``student.trust_checkpoint``. Returns the written path."""
    cfg = load_config(None, overrides or [], base={"method": "ce"})
    trust = cfg.student.trust_checkpoint
    state = read_checkpoint(checkpoint, trust=trust, key_name="checkpoint")
    return export_safetensors(checkpoint, output, trust=trust, metadata=export_metadata(state))
