"""What a job's outputs are called, and the fingerprints that make a name mean one configuration.

A fingerprint is a hash of everything that changes a video's frames (and its file's frame rate). File names
keep a readable prefix, ``<prompt slug or id>_<seed>_<pipeline>``, then a short fingerprint: two
configurations never share a file name, so nothing made with other settings, models or prompts is ever replaced
or passed off as finished. The standard video's fingerprint leaves out the IV-mixed settings, so runs that differ
only in those share one standard video.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from .config import EXTRA_MODEL_SOURCES, RunConfig
from .digests import file_digest
from .prompts import Job, check_job

SHORT = 10  # hex digits of the fingerprint in file names
TINY_MODELS = "tiny-random-v1"  # the --tiny models' identity; change it when their builders change


def lora_identity(config: RunConfig) -> Optional[Dict[str, Any]]:
    """The LoRA as it changes frames: a file's content hash (or a converted folder's path), scale and target."""
    if not config.lora:
        return None
    from .lora_paths import DEFAULT_SCALE, resolve_lora

    kind, path = resolve_lora(config.lora)
    if kind == "file":
        scale = DEFAULT_SCALE if config.lora_scale is None else config.lora_scale
        return {"sha256": file_digest(path), "scale": scale, "target": config.lora_target}
    return {"folder": os.path.abspath(path), "target": config.lora_target}


def source_identity(source: str) -> str:
    """A model source as it changes frames: a file by its content hash, a folder by its path, a hub id as given."""
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return "sha256:" + file_digest(path)
    return os.path.abspath(path) if os.path.isdir(path) else source


SCHEDULER_SETTINGS = ("scheduler", "timestep_spacing", "beta_schedule")


def model_identity(config: RunConfig) -> Dict[str, str]:
    if config.tiny:
        return {"tiny": TINY_MODELS}
    models = {key: source_identity(source) for key, source in config.model_sources().items()}
    # given only: the fingerprints of runs without them stay as they were
    models.update({key: source_identity(getattr(config, key)) for key in EXTRA_MODEL_SOURCES
                   if getattr(config, key) is not None})
    return models


def guide_identity(config: RunConfig) -> Dict[str, Any]:
    """The guiding inputs as they change frames: files by content, with their strengths (given ones only, so the
    fingerprints of runs without them stay as they were)."""
    from .guide_files import file_identity

    out: Dict[str, Any] = {}
    if config.init_video is not None:
        out["init_video"] = {"file": file_identity(config.init_video, frames=config.num_frames),
                             "strength": config.strength}
    if config.ip_adapter is not None:
        out["ip_adapter"] = {"weights": source_identity(config.ip_adapter), "image": file_identity(config.ip_adapter_image),
                             "scale": config.ip_adapter_scale}
    if config.controlnet:
        from .controlnets import controlnet_inputs

        out["controlnet"] = {
            "nets": [{"model": source_identity(net.source), "video": file_identity(net.video, frames=config.num_frames),
                      "scale": net.scale}
                     for net in controlnet_inputs(config)],
            "guidance": [config.control_guidance_start, config.control_guidance_end],
        }
    return out


def identities(config: RunConfig, job: Job, lora: Optional[Dict[str, Any]],
               context: Optional[Tuple[int, int]] = None) -> Dict[str, Dict[str, Any]]:
    """What the standard and the IV-mixed video of ``job`` are made from (``config`` resolved: dtype set)."""
    standard = {
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "pipeline": config.pipeline,
        "models": model_identity(config),
        "lora": lora,
        "num_frames": config.num_frames,
        "height": config.height,
        "width": config.width,
        "inference_step": config.inference_step,
        "guidance_scale": config.guidance_scale,
        "dtype": config.dtype,
        "scheduler": config.spec.scheduler,
        "fps": config.fps,
        **{key: getattr(config, key) for key in config.spec.standard_options},
    }
    if context is not None:
        standard["context_windows"] = list(context)
    scheduler = {key: getattr(config, key) for key in SCHEDULER_SETTINGS if getattr(config, key) is not None}
    if scheduler:
        standard["scheduler_settings"] = scheduler
    if config.motion_lora:
        from .motion_lora import loaded_motion_loras, motion_lora_identity

        standard["motion_lora"] = motion_lora_identity(loaded_motion_loras(config.motion_lora, config.tiny))
    guides = guide_identity(config)
    if guides:
        standard["guides"] = guides
    iv_mixed = {**standard, "iv_mixed": asdict(config.iv_mixed.resolved(config.steps_run)),
                "reference_compat": config.reference_compat}
    return {"standard": standard, "iv_mix": iv_mixed}


def fingerprint(identity: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


@dataclass(frozen=True)
class OutputSet:
    """The files of one job under one configuration. ``fingerprint`` identifies the set (the IV-mixed video's
    identity); ``files`` maps each wanted kind (``iv_mix``, ``standard``, ``side_by_side``, ``contact_sheet``,
    ``record``) to its file name in the output folder."""

    job: Job
    fingerprint: str
    standard_fingerprint: str
    files: Dict[str, str]


def output_set(config: RunConfig, job: Job, lora: Optional[Dict[str, Any]],
               context: Optional[Tuple[int, int]] = None) -> OutputSet:
    """The file names of ``job`` under ``config``; a job whose text could not name a file or go into a UTF-8 record
    is refused here, whoever made it (see :func:`ivmixed.prompts.check_job`)."""
    check_job(job)
    ids = identities(config, job, lora, context)
    full, standard = fingerprint(ids["iv_mix"]), fingerprint(ids["standard"])
    prefix, fmt = job.prefix(config.pipeline), config.format
    stem = f"{prefix}_{full[:SHORT]}"
    files = {"iv_mix": f"{stem}_iv_mix.{fmt}"}
    if not config.no_standard:
        files["standard"] = f"{prefix}_{standard[:SHORT]}_standard.{fmt}"
    if config.side_by_side:
        files["side_by_side"] = f"{stem}_side_by_side.{fmt}"
        files["contact_sheet"] = f"{stem}_frames.png"
    files["record"] = f"{stem}.json"
    return OutputSet(job, full, standard, files)
