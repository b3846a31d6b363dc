"""Graceful stop on SIGTERM/SIGINT: finish the current step, save, say how to resume.

A SIGINT after the first stop signal (SIGTERM or SIGINT) aborts at once (KeyboardInterrupt), for a user who
really means it. More SIGTERMs change nothing: the stop is already under way. Once a stop was requested and
the handlers are removed, SIGTERM stays ignored (``ignore_sigterm_after_stop``) so a scheduler repeating it
while the process exits cannot turn the clean exit into death by signal.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class StopRequest:
    """Installs handlers for the lifetime of a ``with`` block; ``requested`` names the first signal received.

    Re-entrant: entering an active request again (the launcher's around start-up, the trainer's around
    training) keeps the outer handlers and flag; only the outermost exit removes them.
    """

    def __init__(self, ignore_sigterm_after_stop: bool = False) -> None:
        self.requested: str | None = None
        self.ignore_sigterm_after_stop = ignore_sigterm_after_stop
        self._previous: dict[int, object] = {}
        self._depth = 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C after a stop signal: abort now
            return  # a repeated SIGTERM: the stop is already under way
        self.requested = name
        if os.environ.get("RANK", "0") == "0":  # every rank receives it; one says so
            print(f"\n{name} received: finishing the current step and saving a checkpoint (Ctrl-C again to abort "
                  "now)", flush=True)

    def __enter__(self) -> StopRequest:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for sig, handler in self._previous.items():
            if sig == signal.SIGTERM and self.requested is not None and self.ignore_sigterm_after_stop:
                handler = signal.SIG_IGN
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
