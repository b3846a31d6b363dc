"""Folder names of sweep runs: readable, stable, and different for every (config, seed, overrides).

``<output_root>/<config id>/seed<N>[-<key=value>...-<hash>]``. The config id is the config's path relative to
the current directory without ``.yaml`` (and without a leading ``configs/``), so the folder tree mirrors
configs/. The last part holds the seed, then the overrides in short form (last key component) while they fit
in READABLE_LIMIT characters, then the first 8 hex digits of the SHA-256 of all overrides in canonical form:
the readable part may leave overrides out to keep names short, the hash never does. A run without overrides is
plain ``seed<N>``; a name with overrides always ends in a hash, so the two kinds never meet.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from pckd.config.yaml_source import Plain

HASH_LENGTH = 8
READABLE_LIMIT = 60  # characters of key=value text kept in a folder name
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def format_value(value: Any) -> str:
    """A value as ``pckd train`` must read it back from ``key=<text>``. Text read from a spec or the command line
    without quotes (:class:`~pckd.config.yaml_source.Plain`) stays as written, so it means what it would mean in
    a config file (``off`` for a text key is the word, for a flag it is false); lists and mappings are written in
    YAML flow style around their items; other values as YAML writes them (``0.05``, ``'10'``, ``true``)."""
    if isinstance(value, Plain):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text.removesuffix("...").rstrip()


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """``{"pckd.fa_weight": 10}`` -> ``["pckd.fa_weight=10"]``, sorted by key (the canonical form)."""
    return [f"{key}={format_value(overrides[key])}" for key in sorted(overrides)]


def overrides_hash(overrides: dict[str, Any]) -> str:
    """First HASH_LENGTH hex digits of the SHA-256 of the canonical override list."""
    canonical = json.dumps(override_strings(overrides), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def config_id(config: Path, cwd: Path) -> str:
    """``configs/cifar100/kd/a-b.yaml`` -> ``cifar100/kd/a-b``. A config outside ``cwd`` gets
    ``external/<parent>/<stem>-<hash of its absolute path>``."""
    absolute = Path(os.path.abspath(cwd / config))
    try:
        relative = absolute.relative_to(Path(os.path.abspath(cwd)))
    except ValueError:
        digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:6]
        return f"external/{absolute.parent.name or 'root'}/{absolute.stem}-{digest}"
    parts = list(relative.parts)
    if len(parts) > 1 and parts[0] == "configs":
        parts = parts[1:]
    last = parts[-1]
    for suffix in (".yaml", ".yml"):
        if last.endswith(suffix):
            last = last[: -len(suffix)]
            break
    parts[-1] = last
    return "/".join(_UNSAFE.sub("_", part) for part in parts)


def _short(key: str, value: Any) -> str:
    """``pckd.fa_weight``, 10 -> ``fa_weight=10``; a path keeps only its last part (``data.root=/a/b`` ->
    ``root=b``); characters unsafe in folder names become ``_``."""
    text = format_value(value).replace("'", "")
    if isinstance(value, str) and "/" in value.rstrip("/"):
        text = value.rstrip("/").rsplit("/", 1)[-1]
    item = f"{key.rsplit('.', 1)[-1]}={text}"
    return _UNSAFE.sub("_", item).replace("=_", "=").strip("_")


def run_leaf(seed: int, overrides: dict[str, Any]) -> str:
    """The last folder of a run: ``seed0`` or ``seed0-fa_weight=10-1a2b3c4d``. The readable part keeps whole
    overrides while they fit in READABLE_LIMIT characters (the first one is cut if it alone is longer)."""
    if not overrides:
        return f"seed{seed}"
    items = [_short(key, overrides[key]) for key in sorted(overrides)]
    kept: list[str] = []
    for item in items:
        if len("-".join([*kept, item])) > READABLE_LIMIT:
            break
        kept.append(item)
    readable = "-".join(kept) if kept else items[0][:READABLE_LIMIT].rstrip("-_=")
    return f"seed{seed}-{readable}-{overrides_hash(overrides)}"


def run_folder(output_root: Path, config: Path, seed: int, overrides: dict[str, Any], cwd: Path) -> Path:
    """Where the run of ``config`` with ``seed`` and ``overrides`` lives."""
    return Path(output_root) / config_id(config, cwd) / run_leaf(seed, overrides)
