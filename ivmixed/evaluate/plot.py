"""The trade-off plot of a sweep: every cell's frame consistency against its text alignment (the mean over the
sweep's prompts), the baseline as a star, and the points as a table beside it."""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..sweep.files import SWEEP_SUFFIX, read_sweeps
from ..sweep.grid import Values, format_value
from .summary import finite_mean


@dataclass
class SweepPlot:
    """A written plot: its file, the points table beside it, and the points as plotted, read back from the
    figure: ``(label, text alignment, frame consistency)``, the baseline last when there is one."""

    path: str
    table: str
    points: List[Tuple[str, float, float]]


def sweep_points(data: Dict[str, Any],
                 rows: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """Each cell's scores (the mean over the sweep's prompts) from evaluation rows, and the baseline's."""
    scores = {(r["variant"], r["file"]): r for r in rows}

    def point(label: str, variant: str, files: List[str], values: Values) -> Optional[Dict[str, Any]]:
        found = [scores[(variant, f)] for f in files if (variant, f) in scores]
        if not found:
            return None
        return {"label": label, **values, "clip_score": finite_mean([r["clip_score"] for r in found]),
                "frame_consistency": finite_mean([r["frame_consistency"] for r in found]), "videos": len(found)}

    points = []
    for index, cell in enumerate(data["cells"]):
        files = [p["cells"][index]["iv_mix"] for p in data["prompts"]]
        found = point(cell["label"], "iv_mix", files, cell["values"])
        if found is not None:
            points.append(found)
    baseline = None
    if data.get("baseline"):
        files = [p["baseline"] for p in data["prompts"] if p.get("baseline")]
        baseline = point("baseline", "standard", files, {})
    return points, baseline


# label offsets (points) and alignments tried in turn, so that labels do not cover each other
LABEL_PLACES = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
                (-6, -4, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
                (10, 14, "left", "bottom"), (10, -14, "left", "top"), (-10, 14, "right", "bottom"),
                (-10, -14, "right", "top")]


def _place_labels(ax, renderer, groups: List[Tuple[Tuple[float, float], str]]) -> None:
    """Annotate each point with its text at the first of :data:`LABEL_PLACES` that covers no earlier label and
    stays inside the axes (else the first place)."""
    inside = ax.get_window_extent(renderer)
    taken = []
    for xy, text in groups:
        for n, (dx, dy, ha, va) in enumerate(LABEL_PLACES):
            note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                               zorder=4)
            box = note.get_window_extent(renderer)
            fits = inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
            if fits and not any(box.overlaps(other) for other in taken):
                break
            note.remove()
        else:
            dx, dy, ha, va = LABEL_PLACES[0]
            note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                               zorder=4)
            box = note.get_window_extent(renderer)
        taken.append(box)


def plot_sweep(data: Dict[str, Any], rows: Sequence[Dict[str, Any]], path: str) -> Optional[SweepPlot]:
    """Plot frame consistency (y) against text alignment (x), one labelled point per cell (coloured by the first
    axis's value) and the baseline marked; write the points as a CSV beside it. ``None`` when no cell has scores
    yet. Cells with equal scores share one label."""
    import csv

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..export import atomic_path

    points, baseline = sweep_points(data, rows)
    drawn = [p for p in points + ([baseline] if baseline else [])
             if not (math.isnan(p["clip_score"]) or math.isnan(p["frame_consistency"]))]
    if not any(p is not baseline for p in drawn):
        return None
    figure = Figure(figsize=(8, 6), dpi=110)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    keys = [a["key"] for a in data["axes"]]
    first = data["axes"][0]
    cmap = matplotlib.colormaps["viridis"]

    def colour(value) -> Any:
        return cmap(0.1 + 0.8 * first["values"].index(value) / max(1, len(first["values"]) - 1))

    groups: Dict[Tuple[float, float], List[str]] = {}
    for p in drawn:
        xy = (p["clip_score"], p["frame_consistency"])
        if p is baseline:
            ax.scatter(*([v] for v in xy), marker="*", s=260, color="#c0392b", edgecolor="black", linewidth=0.6,
                       zorder=3)
        else:
            ax.scatter(*([v] for v in xy), s=55, color=colour(p[first["key"]]), edgecolor="black", linewidth=0.5,
                       zorder=2)
        groups.setdefault((round(xy[0], 6), round(xy[1], 6)), []).append(p["label"])
    prompts = data["prompts"]
    if len(prompts) == 1:
        about = f"\"{textwrap.shorten(prompts[0]['prompt'], 70)}\""
    else:
        about = f"mean over {len(prompts)} prompts"
    ax.set_title(f"Sweep {' x '.join(keys)}: quality vs coherence\n{about}", fontsize=10)
    ax.set_xlabel("text alignment (CLIP score: prompt vs frames, x100)")
    ax.set_ylabel("frame consistency (CLIP: frame vs next, x100)")
    ax.grid(True, alpha=0.3)
    ax.margins(0.2)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour(v), markeredgecolor="black",
                      label=f"{first['key']}={format_value(v)}") for v in first["values"]]
    if baseline:
        handles.append(Line2D([], [], marker="*", markersize=12, linestyle="", color="#c0392b",
                              markeredgecolor="black", label="baseline (standard sampler)"))
    ax.legend(handles=handles, loc="best", fontsize=8)
    figure.tight_layout()
    canvas.draw()  # fixes the limits and the layout, so label boxes can be measured
    _place_labels(ax, canvas.get_renderer(), [(xy, "\n".join(labels)) for xy, labels in groups.items()])
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plotted = [(p["label"], float(c.get_offsets()[0][0]), float(c.get_offsets()[0][1]))
               for p, c in zip(drawn, ax.collections)]
    table = os.path.splitext(path)[0].rsplit("_plot", 1)[0] + "_points.csv"
    with atomic_path(table) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["label", *keys, "clip_score", "frame_consistency", "videos"],
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(points + ([baseline] if baseline else []))
    return SweepPlot(path, table, plotted)


def plot_sweeps(output_dir: str, rows: Sequence[Dict[str, Any]]) -> List[SweepPlot]:
    """A plot (``<sweep>_plot.png``) and points table (``<sweep>_points.csv``) per sweep file in ``output_dir``."""
    plots = []
    for name, data in read_sweeps(output_dir):
        stem = name[: -len(SWEEP_SUFFIX)]
        plot = plot_sweep(data, rows, os.path.join(output_dir, f"{stem}_plot.png"))
        if plot is not None:
            plots.append(plot)
    return plots
