"""``python -m ivmixed.evaluate OUTPUT_DIR``: score a finished run, write the tables, plot its sweeps."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from ..loading import ModelLoadError
from .plot import plot_sweeps
from .scores import DEFAULT_CLIP_MODEL, DIFFERENCE, VARIANTS, UsageError, evaluate
from .summary import score_text, summarize, write_csv, write_markdown, write_summary_csv

logger = logging.getLogger("ivmixed")


def build_parser() -> argparse.ArgumentParser:
    from ..flags import Parser

    parser = Parser(
        prog="python -m ivmixed.evaluate",
        usage="%(prog)s OUTPUT_DIR [options]",
        description="Score the videos listed in OUTPUT_DIR/manifest.jsonl with CLIP; writes metrics.csv "
        "(per video), metrics_summary.csv (means) and metrics.md there.",
        allow_abbrev=False,
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the --output-dir a generation wrote to")
    parser.add_argument("--clip-model", "--clip_model", default=DEFAULT_CLIP_MODEL,
                        help="hub id or local folder (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true",
                        help="a random tiny CLIP, offline: checks the scoring path; the scores mean nothing")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=32,
                        help="most frames per CLIP forward pass (default: %(default)s)")
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def main(argv: Optional[List[str]] = None) -> int:
    from ..terminal import install_terminal

    install_terminal()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    import tempfile

    import torch

    from ..runtime import quiet_libraries

    quiet_libraries()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device '{device}' is not a torch device (e.g. cpu, cuda, cuda:1, mps)")
    if device_type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: this torch has no CUDA device; use --device cpu")
    with tempfile.TemporaryDirectory(prefix="ivmixed-tiny-clip-") as tiny_folder:
        clip_model = args.clip_model
        if args.tiny:
            from ..testing import save_tiny_clip

            logger.warning("--tiny: a random tiny CLIP; the scores only check the scoring path")
            clip_model = save_tiny_clip(tiny_folder)
        try:
            rows = evaluate(args.output_dir, clip_model, device, args.batch_size)
        except UsageError as exc:
            parser.exit(2, f"{parser.prog}: error: {exc}\n")
        except ModelLoadError as exc:
            print(f"{parser.prog}: error: {exc.render(_flag)}", file=sys.stderr)
            return 1
    summary = summarize(rows)
    for path in (
        write_csv(rows, os.path.join(args.output_dir, "metrics.csv")),
        write_summary_csv(summary, os.path.join(args.output_dir, "metrics_summary.csv")),
        write_markdown(rows, summary, os.path.join(args.output_dir, "metrics.md"),
                       "tiny random CLIP" if args.tiny else args.clip_model),
        *(p for plot in plot_sweeps(args.output_dir, rows) for p in (plot.path, plot.table)),
    ):
        logger.info("wrote %s", path)
    for variant in VARIANTS + (DIFFERENCE,):
        means = summary[variant]
        logger.info("%-22s CLIP score %s, consistency %s", variant, score_text(means["clip_score"]), score_text(means["frame_consistency"]))
    return 0
