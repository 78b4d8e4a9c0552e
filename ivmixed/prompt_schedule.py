"""Prompt schedules (prompt travel) and FreeNoise context windows, as plain values for the command line.

A prompt schedule maps frame indices to prompts, ``{0: "a cat sitting", 24: "a cat jumping"}``: the frames
between two scheduled frames interpolate between the two prompts' embeddings, and the frames after the last
one keep its prompt (diffusers' AnimateDiff with a ``dict`` prompt). On the command line it is written
``"0: a cat sitting | 24: a cat jumping"``; in a prompt file it may be a mapping with string keys.

diffusers requires a schedule to start at frame 0. Here a schedule that starts later holds its first prompt
from frame 0 up to its first scheduled frame (as diffusers holds the last prompt after the last scheduled
frame): ``"8: a | 24: b"`` becomes ``{0: "a", 8: "a", 24: "b"}``.

No torch or diffusers import: this module is cheap to import from the command line.
"""

from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

SEPARATOR = "|"

# The windows FreeNoise uses when a video is longer than the motion adapter's window (diffusers' defaults).
DEFAULT_CONTEXT_LENGTH = 16
DEFAULT_CONTEXT_STRIDE = 4

_SCHEDULE_START = re.compile(r"^\s*-?\d+\s*:")


def is_prompt_schedule(text: str) -> bool:
    """Whether ``text`` is written as a prompt schedule: it starts with a frame index and a colon (``"0: ..."``).

    An ordinary prompt starting like that (``"3: a cat"``) would be read as a schedule; one like
    ``"3 cats: ..."`` or ``"1920s: ..."`` is not.
    """
    return isinstance(text, str) and bool(_SCHEDULE_START.match(text))


def _frame_index(raw, where: str) -> int:
    if isinstance(raw, str):
        raw = raw.strip()
    if isinstance(raw, bool):
        raise ValueError(f"{where}: the frame index must be a whole number, got {raw!r}")
    if isinstance(raw, int):
        frame = raw
    elif isinstance(raw, str) and re.fullmatch(r"[+-]?\d+", raw):
        frame = int(raw)
    else:
        raise ValueError(f"{where}: the frame index must be a whole number, got {raw!r}")
    if frame < 0:
        raise ValueError(f"{where}: the frame index must be 0 or more, got {frame}")
    return frame


def _validated(pairs, num_frames: Optional[int]) -> Dict[int, str]:
    """``pairs``: ``(raw_frame, raw_prompt, where)`` in the order given; returns the sorted, completed schedule."""
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"num_frames must be a positive whole number, got {num_frames!r}")
    schedule: Dict[int, str] = {}
    for raw_frame, raw_prompt, where in pairs:
        frame = _frame_index(raw_frame, where)
        if not isinstance(raw_prompt, str):
            raise ValueError(f"{where}: the prompt must be text, got {type(raw_prompt).__name__}")
        prompt = raw_prompt.strip()
        if not prompt:
            raise ValueError(f"{where}: the prompt for frame {frame} is empty")
        if frame in schedule:
            raise ValueError(f"{where}: frame {frame} is scheduled twice")
        if num_frames is not None and frame >= num_frames:
            raise ValueError(
                f"{where}: frame {frame} is past the video's last frame (num_frames={num_frames}: frames 0 to "
                f"{num_frames - 1})"
            )
        schedule[frame] = prompt
    if not schedule:
        raise ValueError("the prompt schedule is empty: give at least one 'FRAME: prompt'")
    schedule = dict(sorted(schedule.items()))
    if 0 not in schedule:
        schedule = {0: next(iter(schedule.values())), **schedule}
    return schedule


def parse_prompt_schedule(text: str, num_frames: Optional[int] = None) -> Dict[int, str]:
    """Parse ``"0: a cat sitting | 24: a cat jumping"`` into ``{0: "a cat sitting", 24: "a cat jumping"}``.

    Segments are separated by ``|``; each is a frame index (0-based), a colon and a prompt (the prompt may hold
    further colons, not ``|``). With ``num_frames`` given, every frame index must be below it. A schedule that
    does not start at frame 0 holds its first prompt from frame 0. Raises ``ValueError`` saying which segment
    is wrong: no colon, a frame index that is not a whole number or is negative, a frame scheduled twice, an
    empty prompt.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt schedule must be text, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the prompt schedule is empty: give at least one 'FRAME: prompt'")
    pairs = []
    for number, segment in enumerate(text.split(SEPARATOR), start=1):
        where = f"prompt schedule segment {number} ({segment.strip()!r})"
        if not segment.strip():
            raise ValueError(f"prompt schedule segment {number} is empty (a stray '{SEPARATOR}'?)")
        frame, colon, prompt = segment.partition(":")
        if not colon:
            raise ValueError(f"{where}: expected 'FRAME: prompt', with a colon after the frame index")
        pairs.append((frame, prompt, where))
    return _validated(pairs, num_frames)


def prompt_schedule_from_mapping(mapping: Mapping, num_frames: Optional[int] = None) -> Dict[int, str]:
    """Normalise a mapping such as JSON's ``{"0": "a cat sitting", "24": "a cat jumping"}`` to ``Dict[int, str]``.

    Keys may be whole numbers or text holding one; values must be non-empty text. Same checks and the same
    frame-0 rule as :func:`parse_prompt_schedule`.
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(f"a prompt schedule must be a mapping of frame index to prompt, got {type(mapping).__name__}")
    return _validated(((key, value, f"prompt schedule entry {key!r}") for key, value in mapping.items()), num_frames)


def describe_schedule(schedule: Mapping[int, str]) -> str:
    """The schedule in the command-line syntax, frames in order: ``"0: a cat sitting | 24: a cat jumping"``.

    :func:`parse_prompt_schedule` reads it back (when no prompt holds a ``|``); for a file name, pass it through
    a slug function such as :func:`ivmixed.prompts.slugify`.
    """
    return f" {SEPARATOR} ".join(f"{frame}: {' '.join(prompt.split())}" for frame, prompt in sorted(schedule.items()))


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def context_settings(
    num_frames: int,
    max_frames: int,
    context_length: Optional[int] = None,
    context_stride: Optional[int] = None,
) -> Optional[Tuple[int, int]]:
    """FreeNoise's ``(context_length, context_stride)`` for a video of ``num_frames`` on a motion adapter that
    takes ``max_frames`` frames at once (its ``motion_max_seq_length``), or ``None`` for no windows.

    A video longer than ``max_frames`` gets windows: ``context_length`` (default 16, at most ``max_frames``)
    frames, each starting ``context_stride`` (default 4) frames after the one before. A video that fits gets
    none unless ``context_length`` or ``context_stride`` is given. Raises ``ValueError`` for values FreeNoise
    cannot use: a window longer than ``max_frames`` or than the video, a stride below 1 or above the window.
    """
    num_frames = _positive_int(num_frames, "num_frames")
    max_frames = _positive_int(max_frames, "max_frames")
    if context_length is not None:
        context_length = _positive_int(context_length, "context_length")
    if context_stride is not None:
        context_stride = _positive_int(context_stride, "context_stride")
    if num_frames <= max_frames and context_length is None and context_stride is None:
        return None
    if context_length is None:
        length = min(DEFAULT_CONTEXT_LENGTH, max_frames, num_frames)
    else:
        length = context_length
        if length > max_frames:
            raise ValueError(
                f"context_length {length} is longer than the motion adapter's window of {max_frames} frames"
            )
        if length > num_frames:
            raise ValueError(f"context_length {length} is longer than the video (num_frames={num_frames})")
    stride = min(DEFAULT_CONTEXT_STRIDE, length) if context_stride is None else context_stride
    if stride > length:
        raise ValueError(
            f"context_stride {stride} is longer than context_length {length}: the windows would skip frames"
        )
    return length, stride
