"""The local cache of fetched teachers (``$PCKD_HOME``, default ``~/.cache/pckd``) and ``zoo:NAME`` paths.

A teacher enters the cache only whole (written to a temporary file, fsynced, renamed). The SHA-256 of each file
is recorded when it is fetched (``teachers/sha256.json``) and checked whenever a ``zoo:`` path is used, so a
file changed or damaged since is never loaded silently. A leaf module: the model and engine layers import it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pckd.errors import UserError

PREFIX = "zoo:"
HOME_VARIABLE = "PCKD_HOME"
HASHES = "sha256.json"


def home() -> Path:
    """``$PCKD_HOME`` or ``~/.cache/pckd``."""
    return Path(os.environ.get(HOME_VARIABLE) or Path.home() / ".cache" / "pckd").expanduser()


def teachers_dir() -> Path:
    return home() / "teachers"


def downloads_dir() -> Path:
    return home() / "downloads"


def teacher_file(name: str) -> Path:
    """Where the cached file of teacher ``name`` lives."""
    return teachers_dir() / f"{name}.pth"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recorded_hashes() -> dict[str, str]:
    path = teachers_dir() / HASHES
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"'{path}' cannot be read ({exc}); delete it and fetch the teachers again") from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_hash(name: str, digest: str) -> None:
    """Store the SHA-256 of a freshly fetched teacher (atomically)."""
    hashes = {**recorded_hashes(), name: digest}
    path = teachers_dir() / HASHES
    tmp = path.with_name(f".{HASHES}.tmp")
    tmp.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def is_zoo(path: object) -> bool:
    """Whether a checkpoint path (str or PathLike) is ``zoo:NAME``."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(PREFIX)


def resolve(path: str | os.PathLike[str], key_name: str = "teacher.checkpoint") -> Path:
    """The cached file of ``zoo:NAME``, verified against the hash recorded when it was fetched; UserError with
    the fetch command when it is not cached or has changed."""
    from pckd.models.published.registry import TEACHERS

    path = str(os.fspath(path))
    name = path[len(PREFIX):]
    where = f"{key_name}={path}" if key_name else path
    if name not in TEACHERS or TEACHERS[name].archive is None:
        known = ", ".join(n for n, t in TEACHERS.items() if t.archive is not None)
        raise UserError(f"{where}: no published teacher '{name}'; known: {known} ('pckd teachers list')")
    file = teacher_file(name)
    if not file.is_file():
        raise UserError(f"{where}: the teacher is not in the cache ({teachers_dir()}); run "
                        f"'pckd teachers fetch {name}'")
    expected = recorded_hashes().get(name)
    if expected is not None and sha256_of(file) != expected:
        raise UserError(f"{where}: '{file}' changed since it was fetched (SHA-256 differs); run "
                        f"'pckd teachers fetch {name} --force'")
    return file
