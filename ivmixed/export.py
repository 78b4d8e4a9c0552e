"""Writing videos and run records to disk, atomically: a file either appears whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

import imageio.v3 as iio
import numpy as np

VIDEO_FORMATS = ("mp4", "gif")


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension) and move it into place on success."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem[:40]}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions a plain open would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames ``(f, h, w, 3)`` in [0, 1] (or already uint8) as uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_video(frames: np.ndarray, path: str, fps: int) -> str:
    """Write ``frames`` ``(f, h, w, 3)`` as an mp4 (H.264) or a looping gif, chosen by ``path``'s extension."""
    frames = to_uint8(frames)
    ext = os.path.splitext(path)[1].lower()
    with atomic_path(path) as tmp:
        if ext == ".mp4":
            iio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
        elif ext == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            raise ValueError(f"unsupported video format {ext!r}; use one of {', '.join(VIDEO_FORMATS)}")
    return path


def write_json(record: dict, path: str) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return path


def write_image(image: np.ndarray, path: str) -> str:
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, to_uint8(image), extension=os.path.splitext(path)[1])
    return path
