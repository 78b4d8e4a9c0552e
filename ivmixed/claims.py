"""Prompts claimed by one process at a time, so that independent processes sharing a prompt file and an output
folder (SLURM array tasks, two terminals, several machines on a shared filesystem) make every prompt once.

A claim is an exclusive ``flock`` on ``.<fingerprint>.claim`` in the output folder, held while the prompt is made
and removed, still locked, once its record is in the manifest. The kernel drops the lock when its holder dies,
however it dies, so the next process that asks takes over a killed process's prompt. Linux NFS clients emulate
``flock`` with NFS byte-range locks, so claims also hold between machines on NFS.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

try:
    import fcntl
except ImportError:  # not POSIX: no locks, every claim succeeds (one process per folder)
    fcntl = None

CLAIM_FILE = re.compile(r"^\.[0-9a-f]{16,64}\.claim$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def claim_path(folder: str, key: str) -> str:
    return os.path.join(folder, f".{key}.claim")


@dataclass
class Claim:
    """A held claim; :meth:`release` gives it up (the file goes, so a finished prompt leaves nothing behind)."""

    path: str
    fd: Optional[int]

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # while still locked: a process that locks this file next sees it gone
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def claim(folder: str, key: str) -> Optional[Claim]:
    """Claim ``key`` (a fingerprint) in ``folder``: a :class:`Claim`, or ``None`` when another process holds it."""
    path = claim_path(folder, key)
    if fcntl is None:
        return Claim(path, None)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if os.fstat(fd).st_nlink:  # not released (removed) by its holder between our open and our lock
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            return Claim(path, fd)
        os.close(fd)


def wait_for_claim(folder: str, key: str, should_stop: Optional[Callable[[], bool]] = None,
                   poll_s: float = 0.25) -> Optional[Claim]:
    """Claim ``key`` once its holder releases it or dies; ``None`` when ``should_stop()`` turns true first. Polls,
    so that a stop request is seen while waiting."""
    while True:
        held = claim(folder, key)
        if held is not None or (should_stop is not None and should_stop()):
            return held
        time.sleep(poll_s)


def holder(folder: str, key: str) -> str:
    """Who holds ``key``'s claim, as its file says (``pid N on HOST``), for messages; empty when unknown."""
    try:
        with open(claim_path(folder, key), "rb") as f:
            return f.read(200).decode("utf-8", "replace").strip()
    except OSError:
        return ""


__all__ = ["CLAIM_FILE", "Claim", "claim", "holder", "wait_for_claim"]
