"""Standard vs IV-mixed, side by side: a labelled video and a PNG contact sheet of frames of both."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .export import to_uint8


def label(frame: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` on a dark band in the frame's top-left corner (the frame keeps its size)."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((2, 1), text, font=font)
    draw.rectangle((0, 0, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def side_by_side(standard: np.ndarray, iv_mixed: np.ndarray, labels: Sequence[str] = ("standard", "IV-mixed")) -> np.ndarray:
    """Frames ``(f, h, w, 3)`` of both videos next to each other: width is the sum of both widths."""
    standard, iv_mixed = to_uint8(standard), to_uint8(iv_mixed)
    if standard.shape[:2] != iv_mixed.shape[:2]:
        raise ValueError(f"videos differ in frames or height: {standard.shape} vs {iv_mixed.shape}")
    return np.stack([
        np.concatenate([label(a, labels[0]), label(b, labels[1])], axis=1) for a, b in zip(standard, iv_mixed)
    ])


def contact_sheet(standard: np.ndarray, iv_mixed: np.ndarray, max_frames: int = 8) -> np.ndarray:
    """One image: a row of evenly spaced frames per video (standard on top), each row labelled."""
    standard, iv_mixed = to_uint8(standard), to_uint8(iv_mixed)
    picks = np.unique(np.linspace(0, len(standard) - 1, min(max_frames, len(standard))).round().astype(int))
    rows = []
    for video, name in ((standard, "standard"), (iv_mixed, "IV-mixed")):
        frames = [video[i] for i in picks]
        frames[0] = label(frames[0], name)
        rows.append(np.concatenate(frames, axis=1))
    return np.concatenate(rows, axis=0)
