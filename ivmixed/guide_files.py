"""The input files that guide a video: an init video (video-to-video), an IP-Adapter image prompt, later control
videos. Each is checked before any model loads (:func:`check_video`, :func:`check_image`: the header and as few
frames as the run needs, never the whole file) and read into frames at the run's size (:func:`read_video`,
:func:`read_image`). A file that cannot serve is refused with a one-line :class:`~ivmixed.errors.SettingError`
naming the setting, never a traceback.

A video is an .mp4, .webm, .mov, .mkv or .avi file (decoded by ffmpeg, through imageio-ffmpeg), a .gif (Pillow),
or a folder of frame images (.png, .jpg, .jpeg, .webp, .bmp) taken in name order with numbers compared as numbers
(``frame2`` before ``frame10``); other files and hidden files in the folder are ignored. Its first frames are used.

Resize rule: each frame (and the image prompt, when a size is asked for) is scaled, keeping its aspect ratio, to
the smallest size that covers the run's width x height (Lanczos), then cropped to width x height around its
centre (when the excess is odd, the extra pixel comes off the right or bottom). Nothing is stretched or padded: a
frame of another shape loses its edges along its longer side. Frames are made RGB (an alpha channel is dropped,
16-bit greyscale is scaled to 8 bits); an image's EXIF orientation and a video's rotation are applied first.
Nothing wider or taller than :data:`MAX_SIDE` (8192) pixels is read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import subprocess
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from .digests import file_digest
from .errors import SettingError, quote_message

# The largest width or height accepted, in pixels. Headers are read before anything is decoded: a 40000x40000
# image is a 70-byte PNG that would take 4.8 GB to decode, and a frame this size would be scaled down to the run's
# size anyway. 8192 x 8192 is 67 million pixels (200 MB as RGB, one frame at a time), under Pillow's own
# decompression-bomb limits, so no separate pixel-count cap is needed.
MAX_SIDE = 8192

VIDEO_EXTENSIONS: Tuple[str, ...] = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS: Tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Image formats read, by content (whatever the name says; a camera's JPEG may open as MPO, through JPEG); others
# Pillow knows (EPS runs Ghostscript, ...) are not.
IMAGE_FORMATS: Tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_FORMAT_NAMES = "a PNG, JPEG, WebP, BMP, GIF or TIFF image"

_FFMPEG_TIMEOUT_S = 600  # counting a run's frames; a stuck ffmpeg becomes a refusal, not a hang
_VIDEO_LIST = ", ".join(VIDEO_EXTENSIONS[:-1]) + " or " + VIDEO_EXTENSIONS[-1]
_IMAGE_LIST = ", ".join(IMAGE_EXTENSIONS[:-1]) + " or " + IMAGE_EXTENSIONS[-1]


@dataclass(frozen=True)
class VideoInfo:
    """A checked video. ``frames`` is its exact frame count where that is known without decoding it all (a frames
    folder, a gif), else ``None``: the video was decoded up to the frames checked for and has at least those.
    ``kind`` is ``"video"`` (a file) or ``"frames"`` (a folder, whose frame files in order are ``files``)."""

    path: str
    frames: Optional[int]
    width: int
    height: int
    kind: str
    key: str = "init_video"
    files: Tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class ImageInfo:
    """A checked image: its size as shown (EXIF orientation applied) and its format (``"PNG"``, ``"JPEG"``, ...)."""

    path: str
    width: int
    height: int
    format: str
    key: str = "ip_adapter_image"


# ----- messages


def _shown(path: str) -> str:
    """``path`` for a one-line message: whole, with unprintable characters (a newline) escaped."""
    return quote_message(path if path.isprintable() else repr(path), None)


def _refuse(key: str, path: str, problem: str) -> SettingError:
    return SettingError(f"{{{key}}} {_shown(path)} {problem}")


def _missing(key: str, path: str) -> SettingError:
    where = "" if os.path.isabs(path) else f" (relative to the current folder {_shown(os.getcwd())})"
    return _refuse(key, path, f"does not exist{where}")


def _too_large(key: str, path: str, width: int, height: int) -> SettingError:
    return _refuse(key, path, f"is {width}x{height}, larger than {MAX_SIDE} pixels on a side: scale it down first "
                              "(it is resized to the run's size anyway)")


def _too_few(key: str, path: str, have: int, need: int) -> SettingError:
    return _refuse(key, path, f"has {have} frame{'s' if have != 1 else ''} and the run needs {need}: give a longer "
                              "video or fewer frames with {num_frames}")


def _reason(exc: BaseException, limit: int = 100) -> str:
    text = " ".join(str(exc).split())
    return quote_message(text or type(exc).__name__, limit)


# ----- paths


def _stat(path: str, key: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise _missing(key, path) from None
    except (OSError, ValueError) as exc:  # permission, a name too long, a NUL byte
        raise _refuse(key, path, f"cannot be read ({_reason(exc)})") from None


def _file_size(path: str, key: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(key, path, "is not a file")
    if st.st_size == 0:
        raise _refuse(key, path, "is empty (0 bytes)")


def natural_key(name: str) -> Tuple:
    """Sort key comparing the runs of digits in ``name`` as numbers: ``frame2`` before ``frame10``."""
    parts = re.split(r"([0-9]+)", name)
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def frame_files(folder: str) -> List[str]:
    """The frame images of ``folder`` in order: names ending in one of :data:`IMAGE_EXTENSIONS` (any case), not
    hidden, that are files; sorted by :func:`natural_key`."""
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                if entry.is_file():
                    names.append(entry.name)
            except OSError:
                continue
    return sorted(names, key=natural_key)


# ----- images (Pillow)


_ORIENTATION = 0x0112
_SWAPS = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter


def _open_image(path: str, key: str, shown: Optional[str] = None):
    """``path`` opened by Pillow, its header read and nothing decoded; a one-line refusal for what is not an image
    this reads or is larger than :data:`MAX_SIDE`. Returns ``(image, width, height)``, the size as shown."""
    from PIL import Image, UnidentifiedImageError

    shown = path if shown is None else shown
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = re.search(r"\(([0-9]+) pixels\)", str(exc))
        count = f" ({int(pixels.group(1)):,} pixels)" if pixels else ""
        raise _refuse(key, shown, f"is larger than {MAX_SIDE} pixels on a side{count}: scale it down first "
                                  "(it is resized to the run's size anyway)") from None
    except UnidentifiedImageError:
        raise _refuse(key, shown, f"is not {_FORMAT_NAMES}") from None
    except FileNotFoundError:
        raise _missing(key, shown) from None
    except OSError as exc:
        if exc.filename is None:  # a header Pillow chokes on
            raise _refuse(key, shown, f"is not a readable image ({_reason(exc)})") from None
        raise _refuse(key, shown, f"cannot be read ({quote_message(exc.strerror or type(exc).__name__, 100)})") from None
    except Exception as exc:  # a header Pillow chokes on (a damaged PNG chunk, a bad TIFF tag)
        raise _refuse(key, shown, f"is not a readable image ({_reason(exc)})") from None
    width, height = image.size
    try:
        if image.format in ("JPEG", "MPO", "WEBP", "TIFF", "PNG") and image.getexif().get(_ORIENTATION) in _SWAPS:
            width, height = height, width
    except Exception:  # damaged EXIF: shown as stored
        pass
    if max(width, height) > MAX_SIDE:
        image.close()
        raise _too_large(key, shown, width, height)
    if width < 1 or height < 1:
        image.close()
        raise _refuse(key, shown, f"is {width}x{height}, an image with no pixels")
    return image, width, height


def _rgb(image):
    """A loaded image as RGB: EXIF orientation applied, 16-bit greyscale scaled (not clipped) to 8 bits, alpha
    dropped."""
    from PIL import Image, ImageOps

    try:
        image = ImageOps.exif_transpose(image)  # a copy: the result outlives the file's image
    except Exception:  # damaged EXIF: as stored
        image = image.copy()
    if image.mode.startswith("I") or image.mode == "F":
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (values.size and values.max() > 255):
            values = values / 257.0
        image = Image.fromarray(np.clip(values.round(), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _load_rgb(image, key: str, shown: str):
    try:
        image.load()
        return _rgb(image)
    except Exception as exc:  # pixel data cut short or damaged
        raise _refuse(key, shown, f"does not decode ({_reason(exc)}); it may be cut short") from None


def cover_and_crop(image, width: int, height: int):
    """``image`` scaled with Lanczos, keeping its aspect ratio, to the smallest size covering ``width`` x
    ``height``, then cropped to that around its centre (an odd excess loses its extra pixel on the right/bottom)."""
    from PIL import Image

    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1, got {width}x{height}")
    w, h = image.size
    if (w, h) == (width, height):
        return image
    if w * height >= h * width:  # wider than the target: the height fits, the width is cropped
        new_w, new_h = max(width, (2 * w * height + h) // (2 * h)), height
    else:
        new_w, new_h = width, max(height, (2 * h * width + w) // (2 * w))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.LANCZOS)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def check_image(path: str, key: str) -> ImageInfo:
    """Refuse, in one line naming ``{key}``, an image file that is missing, empty, not an image this reads
    (:data:`IMAGE_FORMATS`, by content) or larger than :data:`MAX_SIDE` on a side; from its header only."""
    path = os.path.expanduser(path)
    st = _stat(path, key)
    if stat.S_ISDIR(st.st_mode):
        raise _refuse(key, path, "is a folder; give an image file")
    _file_size(path, key, st)
    image, width, height = _open_image(path, key)
    image.close()
    return ImageInfo(path, width, height, image.format or "", key)


def read_image(image: Union[ImageInfo, str], width: Optional[int] = None, height: Optional[int] = None,
               key: Optional[str] = None):
    """The image as an RGB ``PIL.Image.Image`` (an animated one: its first frame), checked as :func:`check_image`
    does; with ``width`` and ``height``, scaled to cover them and centre-cropped (see the module's resize rule)."""
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    info = image if isinstance(image, ImageInfo) else check_image(image, key or "ip_adapter_image")
    key = key or info.key
    opened, _, _ = _open_image(info.path, key)
    try:
        rgb = _load_rgb(opened, key, info.path)
    finally:
        opened.close()
    return rgb if width is None else cover_and_crop(rgb, width, height)


# ----- videos


def _folder_frames(path: str, key: str) -> List[str]:
    try:
        names = frame_files(path)
    except OSError as exc:
        raise _refuse(key, path, f"cannot be read ({_reason(exc)})") from None
    if not names:
        raise _refuse(key, path, f"is a folder with no frame images ({_IMAGE_LIST} files) in it")
    return names


def _check_frames(path: str, names: Sequence[str], key: str, first: Optional[Tuple[str, int, int]] = None):
    """The headers of the frames ``names`` of folder ``path``: each an image within :data:`MAX_SIDE`, all the size
    of the first (or of ``first``: ``(name, width, height)``). Yields ``(name, opened image, width, height)``; the
    caller closes each image."""
    for name in names:
        file = os.path.join(path, name)
        st = _stat(file, key)
        _file_size(file, key, st)
        image, width, height = _open_image(file, key)
        if first is None:
            first = (name, width, height)
        elif (width, height) != first[1:]:
            image.close()
            raise _refuse(key, path, f"holds frames of different sizes ({_shown(first[0])} is {first[1]}x{first[2]}, "
                                     f"{_shown(name)} is {width}x{height}): make all its frames one size")
        yield name, image, width, height


def _ffmpeg_input(path: str) -> str:
    # file: so that a name like "concat:a|b" or "http:x" is only ever a local file
    return "file:" + os.path.abspath(path)


class _RotatedSizeNote(logging.Filter):
    """imageio-ffmpeg logs a warning whenever the frames come out another size than stored: for every rotated
    phone video, where that is the point. Not worth a line on the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The frame size for reading")


_NOTE = _RotatedSizeNote()


def _ffmpeg_problem(text: str) -> str:
    """What ffmpeg says is wrong with a file, in a few words, to follow "does not decode as a video"."""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    if any(re.search(r"does not contain any stream|matches no streams", line) for line in lines):
        return "(ffmpeg finds no video stream in it); it may be cut short, or hold only audio"
    known = [line for line in lines if re.search(r"moov atom not found|Invalid data found", line)]
    errors = known or [line for line in lines if re.search(r"error|invalid|could not", line, re.IGNORECASE)]
    said = re.sub(r"^(\[[^\]]*\]\s*)+", "", (errors or lines or ["no output"])[0])
    return f"(ffmpeg: {quote_message(said, 100)}); it may be cut short, or not be a video"


@lru_cache(maxsize=None)
def _passthrough(exe: str) -> Tuple[str, ...]:
    """ffmpeg's option for every decoded frame once, none duplicated or dropped to a frame rate (the default for a
    pipe of raw frames, so a variable-frame-rate phone video would gain frames): ``-fps_mode`` since ffmpeg 5.1,
    where ``-vsync`` (gone in 9) was before."""
    import imageio_ffmpeg

    try:
        version = re.match(r"n?([0-9]+)\.([0-9]+)", imageio_ffmpeg.get_ffmpeg_version())
    except Exception:
        version = None
    old = version is not None and (int(version.group(1)), int(version.group(2))) < (5, 1)
    return ("-vsync", "passthrough") if old else ("-fps_mode", "passthrough")


def _ffmpeg_frames(path: str, count: int) -> Iterator:
    """A generator: ffmpeg's header meta dict of ``path``'s video stream, then its first ``count`` frames as RGB
    bytes, one per decoded frame (no frames duplicated or dropped to a frame rate)."""
    import imageio_ffmpeg

    logging.getLogger("imageio_ffmpeg").addFilter(_NOTE)  # once: a logger keeps one of each filter object
    params = ["-map", "0:V:0", *_passthrough(imageio_ffmpeg.get_ffmpeg_exe()), "-frames:v", str(max(count, 1))]
    return imageio_ffmpeg.read_frames(_ffmpeg_input(path), output_params=params)


def _ffmpeg_size(path: str, key: str) -> Tuple[int, int]:
    """The size ffmpeg will decode ``path``'s frames at (rotation applied), from its header."""
    frames = _ffmpeg_frames(path, 1)
    try:
        meta = next(frames)
    except Exception as exc:  # OSError from imageio-ffmpeg with ffmpeg's log, or a header it cannot parse
        raise _refuse(key, path, f"does not decode as a video {_ffmpeg_problem(str(exc))}") from None
    finally:
        frames.close()
    width, height = (int(v) for v in meta.get("size") or (0, 0))
    if width < 1 or height < 1:
        raise _refuse(key, path, "does not decode as a video (its frames have no size)")
    return width, height


def _ffmpeg_count(path: str, key: str, limit: int) -> int:
    """How many frames of ``path`` decode, counting up to ``limit`` (decoded and thrown away, nothing kept)."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    cmd = [exe, "-nostdin", "-hide_banner", "-nostats", "-v", "error", "-progress", "pipe:1",
           "-i", _ffmpeg_input(path), "-map", "0:V:0", *_passthrough(exe), "-frames:v", str(limit), "-f", "null", "-"]
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=_FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _refuse(key, path, f"took over {_FFMPEG_TIMEOUT_S} s to decode {limit} frames; give a "
                                 "smaller video") from None
    counts = re.findall(rb"^frame=\s*([0-9]+)", done.stdout, re.MULTILINE)
    count = int(counts[-1]) if counts else 0
    if count == 0 and done.returncode != 0:
        problem = _ffmpeg_problem(done.stderr.decode("utf-8", "replace"))
        raise _refuse(key, path, f"does not decode as a video {problem}")
    return count


def check_video(path: str, key: str, min_frames: int) -> VideoInfo:
    """Refuse, in one line naming ``{key}``, a video that is missing, empty, of an unknown kind, does not decode,
    has fewer than ``min_frames`` frames or frames larger than :data:`MAX_SIDE` on a side; a frames folder that is
    empty or holds frames of different sizes. Reads only the header and, where it gives no frame count, decodes up
    to ``min_frames`` frames (a folder: the headers of its first ``min_frames`` images)."""
    path = os.path.expanduser(path)
    need = max(int(min_frames), 1)
    st = _stat(path, key)
    if stat.S_ISDIR(st.st_mode):
        names = _folder_frames(path, key)
        if len(names) < need:
            raise _too_few(key, path, len(names), need)
        width = height = 0
        for index, (_, image, w, h) in enumerate(_check_frames(path, names[:need], key)):
            image.close()
            if index == 0:
                width, height = w, h
        return VideoInfo(path, len(names), width, height, "frames", key, tuple(names))
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_EXTENSIONS:
        raise _refuse(key, path, f"is not a video this reads ({quote_message(ext, 20) or 'no extension'}): give a "
                                 f"{_VIDEO_LIST} file, or a folder of {_IMAGE_LIST} frames")
    _file_size(path, key, st)
    if ext == ".gif":
        image, width, height = _open_image(path, key)
        try:
            frames = int(getattr(image, "n_frames", 1))  # walks the frame headers, decodes none
        except Exception as exc:  # a damaged frame header further on
            raise _refuse(key, path, f"does not decode as a gif ({_reason(exc)})") from None
        finally:
            image.close()
        if frames < need:
            raise _too_few(key, path, frames, need)
        return VideoInfo(path, frames, width, height, "video", key)
    width, height = _ffmpeg_size(path, key)
    if max(width, height) > MAX_SIDE:
        raise _too_large(key, path, width, height)
    count = _ffmpeg_count(path, key, need)
    if count == 0:
        raise _refuse(key, path, "has no frames that decode")
    if count < need:
        raise _too_few(key, path, count, need)
    return VideoInfo(path, None, width, height, "video", key)


def read_video(video: Union[VideoInfo, str], num_frames: int, width: int, height: int,
               key: Optional[str] = None) -> List:
    """The first ``num_frames`` frames of ``video`` (a path, checked first, or a :class:`VideoInfo`) as RGB
    ``PIL.Image.Image`` of exactly ``width`` x ``height`` (see the module's resize rule). Frames are decoded and
    resized one at a time; a file that changed since its check, or whose pixel data does not decode, is refused
    in one line like :func:`check_video`'s."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1, got {width}x{height}")
    info = video if isinstance(video, VideoInfo) else check_video(video, key or "init_video", num_frames)
    key, path = key or info.key, info.path
    if info.frames is not None and info.frames < num_frames:
        raise _too_few(key, path, info.frames, num_frames)
    if info.kind == "frames":
        return _read_folder(info, key, num_frames, width, height)
    if os.path.splitext(path)[1].lower() == ".gif":
        return _read_gif(info, key, num_frames, width, height)
    return _read_ffmpeg(info, key, num_frames, width, height)


def _read_folder(info: VideoInfo, key: str, num_frames: int, width: int, height: int) -> List:
    names = list(info.files) or _folder_frames(info.path, key)
    if len(names) < num_frames:
        raise _too_few(key, info.path, len(names), num_frames)
    out, first = [], (names[0], info.width, info.height) if info.files else None
    for name, image, _, _ in _check_frames(info.path, names[:num_frames], key, first):
        try:
            out.append(cover_and_crop(_load_rgb(image, key, os.path.join(info.path, name)), width, height))
        finally:
            image.close()
    return out


def _read_gif(info: VideoInfo, key: str, num_frames: int, width: int, height: int) -> List:
    image, _, _ = _open_image(info.path, key)
    out = []
    try:
        for index in range(num_frames):
            try:
                image.seek(index)
            except EOFError:
                raise _too_few(key, info.path, index, num_frames) from None
            out.append(cover_and_crop(_load_rgb(image, key, info.path), width, height))
    except SettingError:
        raise
    except Exception as exc:  # a frame that does not decode
        raise _refuse(key, info.path, f"does not decode as a gif ({_reason(exc)})") from None
    finally:
        image.close()
    return out


def _read_ffmpeg(info: VideoInfo, key: str, num_frames: int, width: int, height: int) -> List:
    from PIL import Image

    path, out = info.path, []
    frames = _ffmpeg_frames(path, num_frames)
    try:
        meta = next(frames)
        w, h = (int(v) for v in meta["size"])
        if max(w, h) > MAX_SIDE:
            raise _too_large(key, path, w, h)
        for raw in frames:
            out.append(cover_and_crop(Image.frombytes("RGB", (w, h), raw), width, height))
            if len(out) == num_frames:
                break
    except SettingError:
        raise
    except Exception as exc:
        raise _refuse(key, path, f"does not decode as a video {_ffmpeg_problem(str(exc))}") from None
    finally:
        frames.close()
    if not out:
        raise _refuse(key, path, "has no frames that decode")
    if len(out) < num_frames:
        raise _too_few(key, path, len(out), num_frames)
    return out


# ----- identity


def file_identity(path: str, frames: Optional[int] = None) -> str:
    """What a guiding input holds, for fingerprints: ``"sha256:<hex>"`` of a file's bytes; for a frames folder
    ``"frames-sha256:<hex>"``, a SHA-256 over the (name, SHA-256) of its frame files in order (the first
    ``frames`` of them, if given), so renaming, reordering or editing a frame changes it and other files do not."""
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        return "sha256:" + file_digest(path)
    names = frame_files(path)
    if frames is not None:
        names = names[:frames]
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(file_digest(os.path.join(path, name)).encode("ascii") + b"\n")
    return "frames-sha256:" + digest.hexdigest()


__all__ = ["IMAGE_EXTENSIONS", "IMAGE_FORMATS", "ImageInfo", "MAX_SIDE", "VIDEO_EXTENSIONS", "VideoInfo",
           "check_image", "check_video", "cover_and_crop", "file_identity", "frame_files", "natural_key",
           "read_image", "read_video"]
