"""``manifest.jsonl``: one line per finished prompt, safe to append from several processes at once."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict

try:
    import fcntl
except ImportError:  # not POSIX: a single writer is assumed
    fcntl = None

MANIFEST_NAME = "manifest.jsonl"
logger = logging.getLogger("ivmixed")


class Manifest:
    """Append-only record of finished prompts in ``folder``; the last record of an id wins."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, MANIFEST_NAME)

    def records(self) -> Dict[str, dict]:
        out: Dict[str, dict] = {}
        if not os.path.exists(self.path):
            return out
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    out[record["id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s:%d is not a manifest record; ignoring it", self.path, n)
        return out

    def is_finished(self, record: dict) -> bool:
        """A prompt counts as finished when its record exists and every file it names is still there."""
        return all(os.path.exists(os.path.join(self.folder, p)) for p in record.get("files", {}).values())

    def append(self, record: dict) -> None:
        """Add one record as a single locked, synced write, so concurrent writers never interleave lines."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
