"""The grid video and the grid PNG of a sweep: every cell tiled and labelled with its values, the baseline in a
tile of its own."""

from __future__ import annotations

import math
import textwrap
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .grid import Grid, cell_label, format_value

MIN_TILE = 192  # grid video tiles narrower than this are enlarged (whole multiples: pixels stay sharp)
MAX_GRID_SIDE = 3840  # grid video tiles shrink so that the video stays within this many pixels a side
SHEET_TILE = (128, 256)  # grid PNG tiles are enlarged to at least / shrunk to at most this width
SHEET_FRAMES = 6  # frames per row of the grid PNG
CAPTION_LINES = 12  # lines of the grid video's caption, the last ending in an ellipsis when cut


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(lines: Sequence[str], width: int, size: int):
    """The largest font up to ``size`` (at least 9 px) in which every line fits ``width`` pixels."""
    while True:
        font = _font(size)
        if size <= 9 or all(font.getlength(line) <= width for line in lines):
            return font
        size -= 1


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    whole = height % frames.shape[1] == 0 and width % frames.shape[2] == 0
    method = Image.NEAREST if whole else Image.LANCZOS
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), method)) for f in frames])


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def grid_tile_size(height: int, width: int, columns: int, rows: int) -> Tuple[int, int]:
    """Tile size in the grid video: small frames enlarged by a whole factor, large grids shrunk to fit."""
    scale = float(math.ceil(MIN_TILE / width)) if width < MIN_TILE else 1.0
    scale = min(scale, MAX_GRID_SIDE / (columns * width), MAX_GRID_SIDE / (rows * height * 1.25))
    return _even(height * scale), _even(width * scale)


def grid_video(grid: Grid, videos: Sequence[np.ndarray], baseline: Optional[np.ndarray],
               baseline_lines: Sequence[str], caption: str = "") -> np.ndarray:
    """Frames ``(f, H, W, 3)``: the cells' videos in the grid's layout (the first axis across, the others down),
    each under a label with its values; the baseline in a column of its own on the left."""
    from PIL import Image, ImageDraw

    from ..export import to_uint8

    videos = [to_uint8(v) for v in videos]
    frames, h0, w0 = videos[0].shape[:3]
    lead = 1 if baseline is not None else 0
    columns, rows = grid.columns + lead, grid.rows
    th, tw = grid_tile_size(h0, w0, columns, rows)
    gap = max(4, tw // 24)
    labels = [[f"{k} = {format_value(v)}" for k, v in values.items()] for values in grid.cells()]
    all_lines = [line for tile in labels for line in tile] + list(baseline_lines if baseline is not None else [])
    font = _fit(all_lines, tw, max(12, min(28, tw // 12)))
    line = int(font.size * 1.3)
    band = line * max(len(t) for t in labels + ([list(baseline_lines)] if baseline is not None else [])) + gap // 2
    width = columns * tw + (columns + 1) * gap + (gap if lead else 0)
    cap_font = _font(max(12, min(24, width // 60)))
    cap_line = int(cap_font.size * 1.3)
    chars = max(20, int(width / (0.55 * cap_font.size)))
    cap_lines = textwrap.wrap(caption[: chars * CAPTION_LINES + 1], chars, max_lines=CAPTION_LINES,
                              placeholder=" \u2026") if caption else []
    top = gap + len(cap_lines) * cap_line + (gap if cap_lines else 0)
    height = top + rows * (band + th + gap)
    height, width = _even(height + 1), _even(width + 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, text in enumerate(cap_lines):
        draw.text((gap, gap + n * cap_line), text, fill=(0, 0, 0), font=cap_font)
    places: List[Tuple[int, int]] = []
    for index, tile_lines in enumerate(labels):
        r, c = divmod(index, grid.columns)
        x = gap + (c + lead) * (tw + gap) + (gap if lead else 0)
        y = top + r * (band + th + gap)
        for k, text in enumerate(tile_lines):
            draw.text((x, y + k * line), text, fill=(0, 0, 0), font=font)
        places.append((y + band, x))
    if lead:
        for k, text in enumerate(baseline_lines):
            draw.text((gap, top + k * line), text, fill=(160, 0, 0), font=font)
        sep = gap + tw + gap + gap // 2
        draw.line([(sep, top), (sep, height - gap)], fill=(170, 170, 170), width=max(1, gap // 4))
        places.append((top + band, gap))
        videos = videos + [to_uint8(baseline)]
    background = np.asarray(canvas)
    out = np.repeat(background[None], frames, axis=0)
    for (y, x), video in zip(places, videos):
        out[:, y:y + th, x:x + tw] = _resize(video[:frames], th, tw)
    return out


def grid_sheet(grid: Grid, videos: Sequence[np.ndarray], baseline: Optional[np.ndarray], baseline_label: str,
               caption: str = "", max_frames: int = SHEET_FRAMES) -> np.ndarray:
    """One PNG-ready image, contact-sheet style: a row of evenly spaced frames per cell, the baseline first,
    each row labelled with its values."""
    from ..compare import frame_picks, grid_image
    from ..export import to_uint8

    rows_videos = ([to_uint8(baseline)] if baseline is not None else []) + [to_uint8(v) for v in videos]
    names = ([baseline_label] if baseline is not None else []) + [cell_label(v) for v in grid.cells()]
    h, w = rows_videos[0].shape[1:3]
    if w < SHEET_TILE[0]:
        scale = float(math.ceil(SHEET_TILE[0] / w))
    else:
        scale = min(1.0, SHEET_TILE[1] / w)
    th, tw = _even(h * scale), _even(w * scale)
    picks = frame_picks(len(rows_videos[0]), max_frames)
    rows = [list(_resize(video[picks], th, tw)) for video in rows_videos]
    return grid_image(rows, names, [f"frame {i + 1}" for i in picks], caption)
