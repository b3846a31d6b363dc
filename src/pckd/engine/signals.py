"""Graceful stop on SIGTERM/SIGINT: finish the current step, save, say how to resume.

A second SIGINT aborts at once (KeyboardInterrupt), for a user who really means it.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class StopRequest:
    """Installs handlers for the lifetime of a ``with`` block; ``requested`` names the signal received."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        self.requested = name
        if os.environ.get("RANK", "0") == "0":  # every rank receives it; one says so
            print(f"\n{name} received: finishing the current step and saving a checkpoint (Ctrl-C again to abort "
                  "now)", flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
