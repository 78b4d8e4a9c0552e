"""Writing videos, images and records: a file under its final name is complete, or it is not there.

Each writer writes to a hidden temporary file beside the target, checks what it wrote (a video must decode with
the expected frame count), and only then renames it into place. On any failure the temporary file is removed
and :class:`OutputWriteError` names the file and the cause.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from .config import VIDEO_FORMATS
from .leftovers import held_temp_file
from .stopping import uninterrupted

LOW_SPACE_BYTES = 1 << 20


class OutputWriteError(OSError):
    """A file could not be written completely; nothing was left under its name."""

    def __init__(self, path: str, cause: str):
        self.path, self.cause = path, cause
        super().__init__(f"could not write {path}: {cause}; nothing was recorded for it")


def describe_cause(exc: BaseException, folder: str) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    try:
        if shutil.disk_usage(folder).free < LOW_SPACE_BYTES:
            return "no space left on device"
    except OSError:
        pass
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a hidden temporary path beside ``path`` (same extension); move it into place when the block ends
    without error. The temporary file is removed on any exit that does not complete; a stop signal waits for the
    block to end (see :func:`ivmixed.stopping.uninterrupted`)."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    with uninterrupted():
        try:
            # held while written: a later run's sweep removes it only once this process is gone
            fd, tmp = held_temp_file(folder, prefix=f".{stem[:40]}.", suffix=f".partial{ext}")
        except OSError as exc:
            raise OutputWriteError(path, describe_cause(exc, folder)) from exc
        try:
            try:
                yield tmp
                os.chmod(tmp, _file_mode())  # mkstemp creates 0600; give the file the permissions a plain open would
                os.replace(tmp, path)
            except OutputWriteError:
                raise
            except Exception as exc:
                raise OutputWriteError(path, describe_cause(exc, folder)) from exc
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
            os.close(fd)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames ``(f, h, w, 3)`` in [0, 1] (or already uint8) as uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def encode_video(frames: np.ndarray, path: str, fps: int, ext: str) -> None:
    """Encode ``frames`` to ``path``: H.264 mp4 or a looping gif."""
    import imageio.v3 as iio

    if ext == ".mp4":
        iio.imwrite(path, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    elif ext == ".gif":
        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    else:
        raise ValueError(f"unsupported video format {ext!r}; use one of {', '.join(VIDEO_FORMATS)}")


def read_video(path: str) -> np.ndarray:
    """All frames of a video file as ``(f, h, w, 3)`` uint8; a still image counts as one frame and an alpha
    channel is dropped."""
    import imageio.v3 as iio

    frames = np.asarray(iio.imread(path, index=None, extension=os.path.splitext(path)[1].lower()))
    if frames.ndim == 3:  # a single frame
        frames = frames[None]
    return frames[..., :3]


def check_video(path: str, expected_frames: int) -> None:
    """Raise unless ``path`` decodes to ``expected_frames`` frames."""
    try:
        count = len(read_video(path))
    except Exception as exc:
        raise IOError(f"the written video does not decode ({type(exc).__name__})") from exc
    if count != expected_frames:
        raise IOError(f"the written video has {count} frame(s), expected {expected_frames} (a short write)")


def write_video(frames: np.ndarray, path: str, fps: int) -> str:
    """Write ``frames`` ``(f, h, w, 3)`` as an mp4 or gif (by ``path``'s extension), checked before it is named."""
    frames = to_uint8(frames)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mp4", ".gif"):
        raise ValueError(f"unsupported video format {ext!r}; use one of {', '.join(VIDEO_FORMATS)}")
    with atomic_path(path) as tmp:
        encode_video(frames, tmp, fps, ext)
        check_video(tmp, len(frames))
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def write_bytes(data: bytes, path: str) -> str:
    """Write ``data`` to ``path`` atomically, synced to disk before the rename."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.getsize(tmp) != len(data):
            raise OSError(errno.EIO, "short write")
    return path


def write_json(record: dict, path: str) -> str:
    # backslashreplace: text that is not UTF-8 (checked for before sampling) can never lose a finished video
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    return write_bytes(text.encode("utf-8", "backslashreplace"), path)


def write_image(image: np.ndarray, path: str) -> str:
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, to_uint8(image), extension=os.path.splitext(path)[1])
        if iio.imread(tmp).shape[:2] != image.shape[:2]:
            raise OSError(errno.EIO, "short write")
    return path
