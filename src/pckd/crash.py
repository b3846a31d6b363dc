"""The last resort for a bug: an unexpected exception becomes one line on stderr and a traceback in a file.

The trainer tells this module its run folder once the folder exists (:func:`note_run_dir`); the CLI calls
:func:`write_crash_log` for any exception that is not a :class:`~pckd.errors.UserError`. The traceback goes to
``RUN/crash.log`` when a run folder is known, else to ``$PCKD_HOME/crash-<time>-<pid>.log``, else to a
temporary file; the first place that can be written wins.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile
import traceback
from pathlib import Path

from pckd.errors import UserError
from pckd.run_folder import CRASH_LOG, Manifest

_RUN_DIR: Path | None = None


def note_run_dir(run_dir: Path | None) -> None:
    """Remember the run folder this process writes (None forgets it): a crash's traceback goes there."""
    global _RUN_DIR
    _RUN_DIR = None if run_dir is None else Path(run_dir)


def noted_run_dir() -> Path | None:
    """The run folder :func:`note_run_dir` remembered, if any."""
    return _RUN_DIR


def _home() -> Path:
    from pckd.models.published.cache import home

    return home()


def _report(exc: BaseException) -> str:
    lines = [f"pckd crash report, {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
             f"command: {' '.join(sys.argv)}", f"python {sys.version.split()[0]}, pid {os.getpid()}", ""]
    lines += traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "\n".join(line.rstrip("\n") for line in lines) + "\n"


def _candidates() -> list[Path]:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"crash-{stamp}-{os.getpid()}.log"
    places = []
    if _RUN_DIR is not None and _RUN_DIR.is_dir():
        rank = os.environ.get("RANK", "0")  # under torchrun each rank keeps its own traceback
        places.append(_RUN_DIR / (CRASH_LOG if rank == "0" else f"crash.rank{rank}.log"))
    places.append(_home() / name)
    places.append(Path(tempfile.gettempdir()) / f"pckd-{name}")
    return places


def write_crash_log(exc: BaseException) -> Path | None:
    """Write ``exc``'s traceback to the first writable place (see the module docstring); returns the file, or
    None when nothing could be written (a full disk everywhere)."""
    text = _report(exc)
    for path in _candidates():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except OSError:
            continue
        if path.parent == _RUN_DIR:
            with contextlib.suppress(OSError, UserError):  # an overwrite=true run removes it with the run
                Manifest(path.parent).add(path.name)
        return path
    return None


def describe(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one short line: its type and its message with newlines folded."""
    text = " ".join(str(exc).split())
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return what if len(what) <= limit else what[: limit - 3] + "..."
