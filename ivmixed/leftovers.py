"""Temporary files and folders that a killed run leaves behind, told apart from those a live run is using.

Whoever creates one holds an exclusive ``flock`` on it (a temporary file itself, or a ``.lock`` file inside a
temporary folder) for as long as it works. The kernel drops the lock when the process dies, however it dies, so a
later run that can take the lock knows the thing is a leftover and removes it. Only names of our own patterns are
ever looked at, and only things owned by this user.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Pattern, Tuple

try:
    import fcntl
except ImportError:  # not POSIX: nothing is swept
    fcntl = None

LOCK_NAME = ".lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a link of our pattern is never followed, nor removed
# A folder without its lock file may be one whose creator has not yet locked it: swept only when older than this.
UNLOCKED_GRACE_S = 60.0
# The hidden temporary files of export.atomic_path: ".<stem>.<8 random characters of mkstemp>.partial.<ext>".
PARTIAL_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.partial\.[A-Za-z0-9]+$")
logger = logging.getLogger("ivmixed")


def _lock(fd: int, wait: bool) -> bool:
    if fcntl is None:
        return not wait  # without locks, nothing is ever taken for a leftover
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


def held_temp_file(folder: str, prefix: str, suffix: str) -> Tuple[int, str]:
    """``tempfile.mkstemp`` whose file stays locked while ``fd`` is open; a sweep never removes it."""
    while True:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        _lock(fd, wait=True)
        if os.fstat(fd).st_nlink:  # not removed by a sweep between its creation and the lock
            return fd, path
        os.close(fd)


@contextmanager
def held_temp_folder(prefix: str, parent: Optional[str] = None, remove: bool = True) -> Iterator[str]:
    """A new temporary folder, locked for the block; removed at its end unless ``remove`` is false (the caller
    renamed it into place)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    fd = os.open(os.path.join(path, LOCK_NAME + ".new"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _lock(fd, wait=True)
        os.rename(os.path.join(path, LOCK_NAME + ".new"), os.path.join(path, LOCK_NAME))  # named only once held
        yield path
    finally:
        os.close(fd)
        if remove:
            shutil.rmtree(path, ignore_errors=True)


def _owned(st: os.stat_result) -> bool:
    return not hasattr(os, "getuid") or st.st_uid == os.getuid()


def _free(path: str) -> bool:
    """Whether nobody holds ``path``'s lock (taken and released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return False
    try:
        return _lock(fd, wait=False)
    finally:
        os.close(fd)


def sweep_files(folder: str, pattern: Pattern[str] = PARTIAL_FILE) -> int:
    """Remove the leftover temporary files of ``pattern`` in ``folder``; returns how many."""
    if fcntl is None:
        return 0
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not pattern.match(name):
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            # removed while locked, so a writer that locks it next sees it gone (see held_temp_file)
            if _owned(st) and os.path.isfile(path) and _lock(fd, wait=False):
                os.remove(path)
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d unfinished temporary file(s) left in %s by a run that was killed", removed, folder)
    return removed


def sweep_folders(parent: str, prefix: str) -> int:
    """Remove the leftover temporary folders named ``prefix*`` in ``parent``; returns how many."""
    if fcntl is None:
        return 0
    removed = 0
    try:
        names = [name for name in os.listdir(parent) if name.startswith(prefix)]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not os.path.isdir(path) or os.path.islink(path) or not _owned(st):
            continue
        lock = os.path.join(path, LOCK_NAME)
        if os.path.exists(lock):
            stale = _free(lock)
        else:
            stale = time.time() - st.st_mtime > UNLOCKED_GRACE_S
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed += not os.path.exists(path)
    if removed:
        logger.info("removed %d temporary folder(s) named %s* left in %s by a run that was killed", removed,
                    prefix, parent)
    return removed


__all__ = ["held_temp_file", "held_temp_folder", "sweep_files", "sweep_folders"]
