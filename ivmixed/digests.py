"""Content hashes of files (LoRAs, single-file checkpoints), computed once per version of a file."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Tuple

_DIGESTS: Dict[Tuple[Any, ...], str] = {}


def file_digest(path: str) -> str:
    """SHA-256 of a file's content, hashed once per version of the file (its inode, size and change times):
    a sweep's runners and the app's runs all fingerprint the same LoRA."""
    st = os.stat(path)
    version = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if version not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[version] = digest.hexdigest()
    return _DIGESTS[version]


__all__ = ["file_digest"]
