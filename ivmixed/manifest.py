"""``manifest.jsonl``: one line per finished output set, safe to append from several processes at once.

An append is all-or-nothing: it is one locked write, and a failed or short write is cut back off. A line left
cut off by a crash never has a new record glued onto it. Reading skips lines that are cut off, not UTF-8 or not
shaped like a record, and says once which lines of which file it skipped, so a rerun still works.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from typing import Dict, List

from .export import OutputWriteError, describe_cause
from .stopping import uninterrupted

try:
    import fcntl
except ImportError:  # not POSIX: a single writer is assumed
    fcntl = None

MANIFEST_NAME = "manifest.jsonl"
logger = logging.getLogger("ivmixed")


def is_record(record) -> bool:
    """Whether a parsed line has the shape of a manifest record."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("fingerprint"), str)
        and isinstance(record.get("id"), str)
        and isinstance(record.get("files"), dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in record["files"].items())
    )


class Manifest:
    """Append-only record of finished output sets in ``folder``, by fingerprint; the last record of one wins."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, MANIFEST_NAME)

    def records(self) -> Dict[str, dict]:
        out: Dict[str, dict] = {}
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return out
        skipped: List[int] = []
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                record = None
            if not is_record(record):
                skipped.append(n)
                continue
            out[record["fingerprint"]] = record
        if skipped:
            lines = ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else "")
            logger.warning("%s: skipped line(s) %s (cut off, not UTF-8 or not a record); the outputs they "
                           "describe count as unfinished", self.path, lines)
        return out

    def append(self, record: dict) -> None:
        """Add one record as a single locked, synced write; on failure the file is cut back to its old end. A stop
        signal waits for the append to finish; the caller then sees it by polling (the record counts as made)."""
        with uninterrupted(stop_after=False):
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            except OSError as exc:
                raise OutputWriteError(self.path, describe_cause(exc, self.folder)) from exc
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                end = os.fstat(fd).st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    line = b"\n" + line  # a line cut off by a crash stays a line of its own (and is skipped)
                try:
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(errno.ENOSPC if written else errno.EIO, "short write")
                    os.fsync(fd)
                except BaseException as exc:
                    os.ftruncate(fd, end)
                    if isinstance(exc, Exception):
                        raise OutputWriteError(self.path, describe_cause(exc, self.folder)) from exc
                    raise
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
