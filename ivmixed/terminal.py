"""The terminal: log lines that do not garble progress bars, and a stderr that never stops a run.

A run can take hours; a closed terminal or ``| head`` must not end it. Writes to a stderr that has gone away are
dropped (and file descriptor 2 is pointed at the null device, so nothing later fails on it either).
"""

from __future__ import annotations

import io
import logging
import os
import sys


class SafeStream(io.TextIOBase):
    """A text stream over another that swallows write and flush failures (closed or broken pipe)."""

    def __init__(self, stream):
        self._stream = stream
        self._broken = stream is None

    def _give_up(self) -> None:
        self._broken = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except OSError:
            pass

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                self._stream.write(text)
            except (OSError, ValueError):
                self._give_up()
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._give_up()

    def isatty(self) -> bool:
        try:
            return not self._broken and self._stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


class ProgressAwareHandler(logging.Handler):
    """Writes log records through tqdm, so lines appear above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        except Exception:  # a log line must never stop a run
            pass


def install_terminal(level: int = logging.INFO) -> None:
    """Make stderr safe and route the ``ivmixed`` logger through :class:`ProgressAwareHandler` (once).

    The command line configures no root handler, so each line is printed once; records still propagate, so an
    application's own logging configuration sees them too."""
    if not isinstance(sys.stderr, SafeStream):
        sys.stderr = SafeStream(sys.stderr)
    logger = logging.getLogger("ivmixed")
    if not any(isinstance(h, ProgressAwareHandler) for h in logger.handlers):
        handler = ProgressAwareHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
