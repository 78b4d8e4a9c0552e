"""CLIP scores of a finished run's videos: the prompt against each frame, and each frame against the next."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..export import read_video
from ..loading import loading
from ..manifest import MANIFEST_NAME, Manifest

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


def run_label(entry: Dict[str, Any]) -> str:
    """A name for one output set that is unique in its folder: its record's file stem (its id otherwise)."""
    record = entry["files"].get("record")
    return record[: -len(".json")] if isinstance(record, str) and record.endswith(".json") else entry["id"]


def evaluate(
    output_dir: str, clip_model: str = DEFAULT_CLIP_MODEL, device: str = "cpu", batch_size: Optional[int] = 32
) -> List[Dict[str, Any]]:
    """One row per readable video listed in the manifest (and per sweep baseline no record lists); unreadable
    videos are logged and left out. A video several records share (a sweep's standard video) is scored once."""
    from tqdm.auto import tqdm

    from ..sweep.files import sweep_baselines

    entries = read_manifest(output_dir)
    entries += sweep_baselines(output_dir, entries)
    jobs = [(entry, variant) for entry in entries for variant in VARIANTS if isinstance(entry["files"].get(variant), str)]
    from ..loading import ensure_available

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
