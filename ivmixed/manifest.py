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
import stat
from typing import Dict, List

from .errors import SettingError
from .export import OutputWriteError, describe_cause
from .stopping import uninterrupted

try:
    import fcntl
except ImportError:  # not POSIX: a single writer is assumed
    fcntl = None

MANIFEST_NAME = "manifest.jsonl"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # never append through a link
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

    def check_writable(self) -> None:
        """Refuse, before any model loads, a manifest no record could be appended to, or one that is a link (the
        records would land in the file it points to, outside the folder)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise SettingError(f"cannot read {self.path} ({describe_cause(exc, self.folder)}); choose another "
                               "{output_dir}") from None
        if stat.S_ISLNK(st.st_mode):
            raise SettingError(f"{self.path} is a symbolic link; records are only written inside the output folder: "
                               "replace it with a copy of the file it points to, or choose another {output_dir}")
        if not stat.S_ISREG(st.st_mode):
            raise SettingError(f"{self.path} is not a file (a folder?); move it away or choose another {{output_dir}}")
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW))
        except OSError as exc:
            raise SettingError(f"cannot append to {self.path} ({describe_cause(exc, self.folder)}); make it writable "
                               "or choose another {output_dir}") from None

    def records(self) -> Dict[str, dict]:
        out: Dict[str, dict] = {}
        try:
            if not stat.S_ISREG(os.stat(self.path).st_mode):  # a folder or a pipe: reading one could block
                raise IsADirectoryError(errno.EISDIR, "not a file")
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return out
        except OSError as exc:
            logger.warning("%s: cannot read it (%s); its records are not used", self.path,
                           describe_cause(exc, self.folder))
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
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o666)
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
