"""Standard vs IV-mixed, side by side: a labelled video and a PNG contact sheet of frames of both.

Labels scale with the frame size (about 1/20 of the frame height, at least 10 px), so they stay readable on
512 px frames and still fit on the tiny models' 64 px frames.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .export import to_uint8

BACKGROUND = (255, 255, 255)


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
        draw.text((gap, gap + n * line), text, fill=(0, 0, 0), font=font)
    y = top
    for row, name in zip(rows, row_labels):
        draw.text((gap, y + gap // 2), name, fill=(0, 0, 0), font=font)
        y += line
        for c, tile in enumerate(row):
            x = gap + c * (w + gap)
            draw.text((x, y), column_labels[c], fill=(90, 90, 90), font=font)
            sheet.paste(Image.fromarray(tile), (x, y + line))
        y += h + line
    return np.asarray(sheet)


def _wrap(text: str, font, width: int) -> list:
    """``text`` in lines no wider than ``width`` pixels (a word longer than that gets a line of its own)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and measure.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + ([current] if current else [])


def contact_sheet(standard: np.ndarray, iv_mixed: np.ndarray, max_frames: int = 8,
                  caption: Optional[str] = None) -> np.ndarray:
    """One image: a row of evenly spaced, numbered frames per video (standard on top), each row labelled, with
    the run's settings as a caption."""
    standard, iv_mixed = to_uint8(standard), to_uint8(iv_mixed)
    picks = frame_picks(len(standard), max_frames)
    rows = [[video[i] for i in picks] for video in (standard, iv_mixed)]
    return grid_image(rows, ("standard", "IV-mixed"), [f"frame {i + 1}" for i in picks], caption)
