"""Stopping a run on Ctrl-C, SIGTERM or SIGHUP without cutting a file write short.

While :class:`StopSignals` is installed, a stop signal raises :class:`RunStopped` at once, except inside
:func:`uninterrupted` blocks (file writes), where it is held until the block ends. The signal is also remembered,
because code running when it arrives can swallow the exception: Python ignores exceptions raised in at-fork hooks
(starting ffmpeg runs them) and in finalizers. The runner therefore polls :meth:`StopSignals.received` as well.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class RunStopped(KeyboardInterrupt):
    """A run was asked to stop (Ctrl-C, a signal, a stop button); files already complete are kept."""

    def __init__(self, message: str = "interrupted", signum: Optional[int] = None):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """A context that turns stop signals into :class:`RunStopped` and restores the old handlers on exit."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
    installed: Optional["StopSignals"] = None

    def __init__(self):
        self.signum: Optional[int] = None
        self.held = 0
        self.previous = {}

    def received(self) -> bool:
        return self.signum is not None

    def stopped(self) -> RunStopped:
        return RunStopped(f"signal {self.signum}", self.signum)

    def _handle(self, signum, frame):
        self.signum = signum
        if not self.held:
            raise self.stopped()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
            StopSignals.installed = self
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        if StopSignals.installed is self:
            StopSignals.installed = None
        return False


@contextmanager
def uninterrupted(stop_after: bool = True) -> Iterator[None]:
    """Hold stop signals until the block ends: a file being written is finished or removed, and no helper process
    (ffmpeg) is left half started. Then stop, unless ``stop_after`` is false (the caller polls instead)."""
    stop = StopSignals.installed
    if stop is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    stop.held += 1
    try:
        yield
    finally:
        stop.held -= 1
    if stop_after and not stop.held and stop.received():
        raise stop.stopped()


__all__ = ["RunStopped", "StopSignals", "uninterrupted"]
