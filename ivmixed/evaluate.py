"""Score a finished run: CLIP text-frame alignment and frame-to-frame consistency, standard vs IV-mixed.

``python -m ivmixed.evaluate OUTPUT_DIR`` reads ``OUTPUT_DIR/manifest.jsonl`` and writes ``metrics.csv``
(one row per video), ``metrics_summary.csv`` (the means) and ``metrics.md`` beside it. Both metrics are cosine similarities of CLIP embeddings
times 100: the prompt against each frame (the "CLIP score"), and each frame against the next.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .export import atomic_path, read_video
from .loading import ModelLoadError, loading
from .manifest import MANIFEST_NAME, Manifest

logger = logging.getLogger("ivmixed")

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
VARIANTS = ("standard", "iv_mix")  # CSV order: the baseline first
DIFFERENCE = "iv_mix_minus_standard"
METRICS = ("clip_score", "frame_consistency")
CSV_COLUMNS = ("id", "prompt", "seed", "variant", "num_frames") + METRICS + ("file",)


class UsageError(ValueError):
    """The output folder or its manifest cannot be evaluated; the message says what to run first."""


def read_manifest(output_dir: str) -> List[Dict[str, Any]]:
    """The manifest's records, one per prompt id (the last line for an id wins), each checked for the
    fields scoring needs; lines that are not records are skipped with a warning by :class:`Manifest`."""
    if not os.path.isdir(output_dir):
        raise UsageError(f"no such folder '{output_dir}'; pass the --output-dir that inference.py wrote to")
    manifest = Manifest(output_dir)
    if not os.path.isfile(manifest.path):
        raise UsageError(f"no {MANIFEST_NAME} in '{output_dir}'; run a generation with this --output-dir first")
    records = list(manifest.records().values())
    if not records:
        raise UsageError(f"{manifest.path} lists no videos; run a generation with this --output-dir first")
    for record in records:
        files = record.get("files")
        fields = (record["id"], record.get("prompt"), files.get("iv_mix") if isinstance(files, dict) else None)
        if not all(isinstance(field, str) for field in fields):
            raise UsageError(
                f"the record for id {record['id']!r} in {manifest.path} lacks a string 'id', 'prompt' or "
                "'files.iv_mix'; fix or delete that line"
            )
    return records


def load_clip(clip_model: str, device: str):
    """``(model, processor)`` in eval mode on ``device``; any failure becomes a :class:`ModelLoadError`."""
    from transformers import CLIPModel, CLIPProcessor

    with loading("CLIP model", clip_model, "clip_model"):
        processor = CLIPProcessor.from_pretrained(clip_model)
        model = CLIPModel.from_pretrained(clip_model)
    return model.to(device).eval(), processor


def _projected(output):
    """transformers 5 returns a model output whose pooler output is the projection; 4.x the tensor itself."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def embed_frames(model, processor, frames: Sequence[np.ndarray], batch_size: Optional[int] = None):
    """Unit-norm CLIP image embeddings ``(frames, dim)``, in forward passes of at most ``batch_size`` frames."""
    import torch

    step = batch_size or len(frames)
    chunks = []
    for start in range(0, len(frames), step):
        pixels = processor(images=list(frames[start : start + step]), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            pixels = pixels.to(device=model.device, dtype=model.dtype)
            chunks.append(_projected(model.get_image_features(pixel_values=pixels)))
    embeddings = torch.cat(chunks).double()
    return embeddings / embeddings.norm(dim=-1, keepdim=True)


def embed_text(model, processor, prompt: str):
    """The unit-norm CLIP text embedding ``(dim,)`` of ``prompt``, cut to CLIP's context length."""
    import torch

    tokens = processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
    with torch.inference_mode():
        features = _projected(
            model.get_text_features(
                input_ids=tokens["input_ids"].to(model.device), attention_mask=tokens["attention_mask"].to(model.device)
            )
        )
    embedding = features[0].double()
    return embedding / embedding.norm()


def clip_scores(model, processor, frames: Sequence[np.ndarray], prompt: str, batch_size: Optional[int] = None) -> Tuple[float, float]:
    """``(alignment, consistency)`` ×100: mean prompt-frame cosine, and mean cosine of consecutive frames
    (NaN for a single frame, which has no neighbour)."""
    images = embed_frames(model, processor, frames, batch_size)
    text = embed_text(model, processor, prompt)
    alignment = float((images @ text).mean()) * 100.0
    consistency = float((images[:-1] * images[1:]).sum(dim=-1).mean()) * 100.0 if len(images) > 1 else math.nan
    return alignment, consistency


def evaluate(
    output_dir: str, clip_model: str = DEFAULT_CLIP_MODEL, device: str = "cpu", batch_size: Optional[int] = 32
) -> List[Dict[str, Any]]:
    """One row per readable video listed in the manifest (and per sweep baseline no record lists); unreadable
    videos are logged and left out. A video several records share (a sweep's standard video) is scored once."""
    from tqdm.auto import tqdm

    from .sweep import sweep_baselines

    entries = read_manifest(output_dir)
    entries += sweep_baselines(output_dir, entries)
    jobs = [(entry, variant) for entry in entries for variant in VARIANTS if isinstance(entry["files"].get(variant), str)]
    from .loading import ensure_available

    ensure_available([("CLIP model", clip_model, "clip_model", "config.json")])
    model, processor = load_clip(clip_model, device)
    rows, scored = [], {}
    for entry, variant in tqdm(jobs, desc="evaluating", unit="video", disable=None):
        path = os.path.join(output_dir, entry["files"][variant])
        key = (path, entry["prompt"])
        if key not in scored:
            try:
                frames = read_video(path)
            except Exception as exc:  # imageio raises OSError, ValueError or plugin errors for missing or broken files
                logger.warning("skipping %s: cannot read it (%s)", path, exc)
                continue
            scored[key] = len(frames), clip_scores(model, processor, frames, entry["prompt"], batch_size)
        count, (alignment, consistency) = scored[key]
        rows.append(
            {
                "id": run_label(entry),
                "prompt": entry["prompt"],
                "seed": entry.get("seed"),
                "variant": variant,
                "num_frames": count,
                "clip_score": alignment,
                "frame_consistency": consistency,
                "file": entry["files"][variant],
                "record": entry["fingerprint"],
            }
        )
    if not rows:
        raise UsageError(f"none of the {len(jobs)} videos listed in {os.path.join(output_dir, MANIFEST_NAME)} could be read")
    return rows


def finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Mean of each metric per variant, and the mean IV-mixed minus standard difference over the prompts
    that have both videos (equal to the difference of the means when every prompt has both)."""
    summary: Dict[str, Dict[str, float]] = {}
    for variant in VARIANTS:
        chosen = [r for r in rows if r["variant"] == variant]
        summary[variant] = {m: finite_mean([r[m] for r in chosen]) for m in METRICS}
        summary[variant]["videos"] = len(chosen)
    by_key = {(r.get("record", r["id"]), r["variant"]): r for r in rows}  # by record: a sweep's cells share an id
    pairs = [(by_key[(i, "iv_mix")], by_key[(i, "standard")]) for i, v in by_key if v == "standard" and (i, "iv_mix") in by_key]
    summary[DIFFERENCE] = {m: finite_mean([iv[m] - std[m] for iv, std in pairs]) for m in METRICS}
    summary[DIFFERENCE]["videos"] = len(pairs)
    return summary


def run_label(entry: Dict[str, Any]) -> str:
    """A name for one output set that is unique in its folder: its record's file stem (its id otherwise)."""
    record = entry["files"].get("record")
    return record[: -len(".json")] if isinstance(record, str) and record.endswith(".json") else entry["id"]


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> str:
    """One row per video."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return path


def write_summary_csv(summary: Dict[str, Dict[str, float]], path: str) -> str:
    """One row per variant with the means, and one for the IV-mixed minus standard difference."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=("variant", "videos") + METRICS)
            writer.writeheader()
            for variant, means in summary.items():
                writer.writerow({"variant": variant, **means})
    return path


def _cell(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    if value is None:
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_markdown(rows: Sequence[Dict[str, Any]], summary: Dict[str, Dict[str, float]], path: str, clip_model: str) -> str:
    """A per-prompt table (standard beside IV-mixed) and an averages table, for a README or a PR."""
    by_key = {(r.get("record", r["id"]), r["variant"]): r for r in rows}
    ids = list(dict.fromkeys(r.get("record", r["id"]) for r in rows))
    lines = [
        "# IV-mixed vs standard sampling",
        "",
        f"CLIP model: `{clip_model}`. Scores are cosine similarities ×100: *CLIP score* is the prompt against "
        "each frame, *consistency* each frame against the next, both averaged over the video.",
        "",
        "## Per video",
        "",
        "| id | prompt | seed | CLIP score (standard) | CLIP score (IV-mixed) | consistency (standard) | consistency (IV-mixed) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for i in ids:
        std, iv = by_key.get((i, "standard"), {}), by_key.get((i, "iv_mix"), {})
        first = iv or std
        cells = [first["id"], first["prompt"], first["seed"]]
        cells += [row.get(m, math.nan) for m in METRICS for row in (std, iv)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "## Averages",
        "",
        "| metric | standard | IV-mixed | IV-mixed − standard |",
        "|---|---:|---:|---:|",
    ]
    for metric, label in zip(METRICS, ("CLIP score", "frame consistency")):
        cells = [label] + [summary[v][metric] for v in VARIANTS + (DIFFERENCE,)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    counts = ", ".join(f"{summary[v]['videos']} {name}" for v, name in (("standard", "standard"), ("iv_mix", "IV-mixed")))
    lines += ["", f"Videos: {counts}; the difference is over the {summary[DIFFERENCE]['videos']} prompts with both.", ""]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
    return path


def build_parser() -> argparse.ArgumentParser:
    from .cli import Parser

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
    from .terminal import install_terminal

    install_terminal()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    import tempfile

    import torch

    from .runtime import quiet_libraries

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
            from .testing import save_tiny_clip

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
    from .sweep import plot_sweeps

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
        logger.info("%-22s CLIP score %s, consistency %s", variant, _cell(means["clip_score"]), _cell(means["frame_consistency"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
