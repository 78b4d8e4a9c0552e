"""Score a finished run: CLIP text-frame alignment and frame-to-frame consistency, standard vs IV-mixed.

``python -m ivmixed.evaluate OUTPUT_DIR`` reads ``OUTPUT_DIR/manifest.jsonl`` and writes ``metrics.csv``
(one row per video), ``metrics_summary.csv`` (the means) and ``metrics.md`` beside it. Both metrics are cosine similarities of CLIP embeddings
times 100: the prompt against each frame (the "CLIP score"), and each frame against the next.
For a sweep's output folder it also plots every cell's frame consistency against its text alignment.

The package: :mod:`.scores` (CLIP scores per video), :mod:`.summary` (means and the tables), :mod:`.plot` (the
sweep trade-off plot) and :mod:`.command` (the command line).
"""

from .command import build_parser, main
from .plot import SweepPlot, plot_sweep, plot_sweeps, sweep_points
from .scores import (CSV_COLUMNS, DEFAULT_CLIP_MODEL, DIFFERENCE, MANIFEST_NAME, METRICS, VARIANTS, UsageError,
                     clip_scores, embed_frames, embed_text, evaluate, load_clip, read_manifest)
from .summary import distinct_videos, finite_mean, summarize, write_csv, write_markdown, write_summary_csv

__all__ = ["CSV_COLUMNS", "DEFAULT_CLIP_MODEL", "DIFFERENCE", "MANIFEST_NAME", "METRICS", "SweepPlot", "UsageError",
           "VARIANTS", "build_parser", "clip_scores", "distinct_videos", "embed_frames", "embed_text", "evaluate",
           "finite_mean", "load_clip", "main", "plot_sweep", "plot_sweeps", "read_manifest", "summarize",
           "sweep_points", "write_csv", "write_markdown", "write_summary_csv"]
