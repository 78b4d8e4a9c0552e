"""Standard vs IV-mixed, side by side: a labelled video and a PNG contact sheet of frames of both.

Labels scale with the frame size (about 1/20 of the frame height, at least 10 px), so they stay readable on
512 px frames and still fit on the tiny models' 64 px frames. Text on the sheets is drawn word by word with a gap
of at least 0.4 of the font size: at the smallest sizes the default font's space is 2 px wide, which reads
as no space at all.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .export import to_uint8

BACKGROUND = (255, 255, 255)
CAPTION_LINES = 12  # a longer caption ends in an ellipsis: a prompt of any length keeps the sheet small and quick
ELLIPSIS = "\u2026"
CAPTION_PROMPT = 300  # characters of a prompt in a caption: a long prompt leaves room for the settings after it


def caption_prompt(prompt: str) -> str:
    """``prompt`` as a caption shows it: at most :data:`CAPTION_PROMPT` characters, cut with an ellipsis."""
    return prompt if len(prompt) <= CAPTION_PROMPT else prompt[: CAPTION_PROMPT - 1].rstrip() + ELLIPSIS


def font_for(height: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, height // 20))


def label(frame: np.ndarray, text: str, font: Optional[ImageFont.ImageFont] = None) -> np.ndarray:
    """Write ``text`` on a dark band in the frame's top-left corner (the frame keeps its size)."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = font or font_for(frame.shape[0])
    pad = max(1, frame.shape[0] // 100)
    left, top, right, bottom = draw.textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def side_by_side(standard: np.ndarray, iv_mixed: np.ndarray, labels: Sequence[str] = ("standard", "IV-mixed")) -> np.ndarray:
    """Frames ``(f, h, w, 3)`` of both videos next to each other: width is the sum of both widths."""
    standard, iv_mixed = to_uint8(standard), to_uint8(iv_mixed)
    if standard.shape[:2] != iv_mixed.shape[:2]:
        raise ValueError(f"videos differ in frames or height: {standard.shape} vs {iv_mixed.shape}")
    font = font_for(standard.shape[1])
    return np.stack([
        np.concatenate([label(a, labels[0], font), label(b, labels[1], font)], axis=1)
        for a, b in zip(standard, iv_mixed)
    ])


def frame_picks(count: int, max_frames: int) -> np.ndarray:
    """Evenly spaced frame indices, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(max_frames, count)).round().astype(int))


def grid_image(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], column_labels: Sequence[str],
               caption: Optional[str] = None) -> np.ndarray:
    """Tiles ``rows[r][c]`` (uint8 ``(h, w, 3)``, all one size) with gaps, a label over each row and a number
    over each column, and a wrapped caption on top."""
    h, w = rows[0][0].shape[:2]
    font = font_for(h)
    size = font.size if hasattr(font, "size") else 10
    gap = max(2, h // 32)
    line = size + gap
    width = len(column_labels) * (w + gap) + gap
    caption_lines = _wrap(caption, font, width - 2 * gap) if caption else []
    top = len(caption_lines) * line + (gap if caption_lines else 0)
    height = top + len(rows) * (h + 2 * line) + gap
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for n, text in enumerate(caption_lines):
        draw_words(draw, (gap, gap + n * line), text, font, (0, 0, 0))
    y = top
    for row, name in zip(rows, row_labels):
        draw_words(draw, (gap, y + gap // 2), name, font, (0, 0, 0))
        y += line
        for c, tile in enumerate(row):
            x = gap + c * (w + gap)
            draw_words(draw, (x, y), column_labels[c], font, (90, 90, 90))
            sheet.paste(Image.fromarray(tile), (x, y + line))
        y += h + line
    return np.asarray(sheet)


def word_gap(font) -> float:
    """Pixels between two words: the font's space, or 0.4 of its size where that is wider."""
    return max(font.getlength(" "), round(getattr(font, "size", 10) * 0.4))


def text_width(text: str, font) -> float:
    """The width of ``text`` as :func:`draw_words` draws it."""
    words = text.split()
    return sum(font.getlength(word) for word in words) + word_gap(font) * max(0, len(words) - 1)


def draw_words(draw: ImageDraw.ImageDraw, xy, text: str, font, fill) -> None:
    """Draw ``text`` one word at a time, :func:`word_gap` apart, so words stay apart at any font size."""
    x, y = xy
    gap = word_gap(font)
    for word in text.split():
        draw.text((x, y), word, fill=fill, font=font)
        x += font.getlength(word) + gap


def _pieces(word: str, font, width: float, most_pieces: int) -> List[str]:
    """The first ``most_pieces`` pieces of ``word`` cut to fit ``width`` pixels (at least one character each)."""
    pieces = []
    most = int(width) + 1  # characters a piece can hold (none is narrower than 1 px): bounds every measure
    while word and len(pieces) < most_pieces:
        chunk = word[:most]
        length = font.getlength(chunk)
        if length <= width:
            n = len(chunk)
        else:  # start from the proportional guess, then step to the longest prefix that fits
            n = max(1, min(len(chunk) - 1, int(len(chunk) * width / length)))
            while n > 1 and font.getlength(word[:n]) > width:
                n -= 1
            while n + 1 < len(chunk) and font.getlength(word[:n + 1]) <= width:
                n += 1
        pieces.append(word[:n])
        word = word[n:]
    return pieces


def _wrap(text: str, font, width: int, max_lines: int = CAPTION_LINES) -> List[str]:
    """``text`` in at most ``max_lines`` lines no wider than ``width`` pixels as :func:`draw_words` draws them:
    words joined by single spaces, a word wider than a line cut over lines, and the last line ending in an
    ellipsis when text is left out. Only as much of ``text`` as the lines can hold is looked at."""
    width = max(1, width)
    limit = max_lines * (width + 1)  # no character is drawn narrower than 1 px (a few zero-width ones aside)
    cut = len(text) > limit
    text = text[:limit]
    gap = word_gap(font)
    lines: List[str] = []
    current: List[str] = []
    used = 0.0
    for match in re.finditer(r"\S+", text):
        word = match.group()
        length = font.getlength(word)
        for piece in [word] if length <= width else _pieces(word, font, width, max_lines - len(lines) + 1):
            size = length if piece is word else font.getlength(piece)
            if current and used + gap + size > width:
                lines.append(" ".join(current))
                current, used = [], 0.0
            used += size + (gap if current else 0)
            current.append(piece)
        if len(lines) >= max_lines:  # and more in ``current``
            break
    if current:
        lines.append(" ".join(current))
    if len(lines) > max_lines:
        cut, lines = True, lines[:max_lines]
    if not cut:
        return lines
    last = lines[-1] if lines else ""
    while last and text_width(last + ELLIPSIS, font) > width:
        last = last[:-1].rstrip()
    return lines[:-1] + [last + ELLIPSIS]


def contact_sheet(standard: np.ndarray, iv_mixed: np.ndarray, max_frames: int = 8,
                  caption: Optional[str] = None) -> np.ndarray:
    """One image: a row of evenly spaced, numbered frames per video (standard on top), each row labelled, with
    the run's settings as a caption."""
    standard, iv_mixed = to_uint8(standard), to_uint8(iv_mixed)
    picks = frame_picks(len(standard), max_frames)
    rows = [[video[i] for i in picks] for video in (standard, iv_mixed)]
    return grid_image(rows, ("standard", "IV-mixed"), [f"frame {i + 1}" for i in picks], caption)
