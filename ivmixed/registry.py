"""The pipelines by name: what each loads, its defaults and its limits, without importing any of them.

The command line, the run configuration and the runner learn everything pipeline-specific here, so they
never reach into a pipeline's code; importing this module costs nothing (no torch, no diffusers).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .loading import cached_file
from .settings import ReferenceCompat


# The model families a pipeline's models belong to (what an image model, a LoRA or an IP-Adapter must match).
SD15_FAMILY, SDXL_FAMILY = "Stable Diffusion 1.5", "SDXL"


def unet_family(config) -> str:
    """The family of a UNet from its config (a model's ``config`` or a ``config.json`` dict): an SDXL UNet adds
    the pooled text embedding and six size numbers to its time embedding (``addition_embed_type="text_time"``)."""
    kind = config.get("addition_embed_type") if hasattr(config, "get") else getattr(config, "addition_embed_type", None)
    return SDXL_FAMILY if kind == "text_time" else SD15_FAMILY


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint a pipeline loads: its keyword (``from_checkpoints`` and the run setting), what it is
    called in messages, and the hub id used when none is given."""

    key: str
    what: str
    default: str
    # A file every complete download of it has, to look it up in the local hub cache without loading it.
    marker: str = "config.json"


@dataclass(frozen=True)
class PipelineSpec:
    """Everything the run layer knows of one pipeline."""

    name: str
    class_path: str  # "module:Class", imported on first use
    checkpoints: Tuple[Checkpoint, ...]
    # Run settings whose defaults differ from the built-in ones (height, width, guidance, zz, ...).
    defaults: Mapping[str, Any]
    # Settings only this pipeline takes (a value on another pipeline is refused).
    options: Tuple[str, ...] = ()
    # Whether a LoRA can go into the video model (its UNet is an SD 1.5 UNet).
    video_lora: bool = False
    scheduler: str = "DDIM"
    train_timesteps: int = 1000  # the schedulers' num_train_timesteps: at most this many inference steps
    # Whether prompts may change over the clip ({frame: prompt} schedules).
    prompt_schedules: bool = False
    # Settings that change the standard (baseline) video too, beyond the ones every pipeline shares.
    standard_options: Tuple[str, ...] = field(default=())
    # What --reference-compat reproduces of the published code for this pipeline (the pipeline class's
    # ``reference_compat_options``), as plain data so settings are checked against it without importing torch;
    # None where the published code has no such pipeline (--reference-compat is refused).
    reference_compat: Optional[ReferenceCompat] = field(default_factory=ReferenceCompat)
    # Frames the pipeline's VAE decodes at once (None: all of them), for the memory estimate.
    decode_chunk: Optional[int] = None
    # "module:function" writing the tiny random checkpoints of --tiny under a folder (see ivmixed.testing).
    tiny_builder: str = ""
    # The video model family an image model must belong to, in messages and single-file checks.
    family: str = SD15_FAMILY

    @property
    def is_sd15(self) -> bool:
        """Whether its models are of the Stable Diffusion 1.5 family (what single-file checkpoints here hold)."""
        return self.family == SD15_FAMILY

    def checkpoint(self, key: str) -> Checkpoint:
        return next(c for c in self.checkpoints if c.key == key)

    def takes(self, key: str) -> bool:
        """Whether ``key`` (a checkpoint or a pipeline-only option) is a setting of this pipeline."""
        return key in self.options or any(c.key == key for c in self.checkpoints)

    def pipeline_class(self):
        """The pipeline class (imports torch and diffusers)."""
        return _imported(self.class_path)

    def save_tiny_checkpoints(self, root: str) -> Dict[str, str]:
        """Write random tiny checkpoints of every model this pipeline loads under ``root``; returns the
        checkpoint arguments of ``from_checkpoints`` that load them (imports torch and diffusers)."""
        return _imported(self.tiny_builder)(root)

    def max_frames(self, sources: Mapping[str, str], tiny: bool = False) -> Optional[int]:
        """The most frames the video model takes in one window, when its config says so and can be read
        without loading it (``None`` when there is no limit or it cannot be known yet)."""
        if not self.takes("motion_adapter"):
            return None
        if tiny:
            return TINY_MOTION_FRAMES
        config = read_config(sources["motion_adapter"])  # None for a single file: its window is not known yet
        if config is None:
            return None
        return int(config.get("motion_max_seq_length", 32))


def _imported(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def read_config(source: str) -> Optional[Dict[str, Any]]:
    """A checkpoint's ``config.json`` from a local folder or the local hub cache, never from the network."""
    path = os.path.join(os.path.expanduser(source), "config.json")
    if not os.path.isfile(path):
        path = cached_file(source, "config.json")  # None for an invalid repo id: loading will say so
        if path is None:
            return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_MOTION_FRAMES = 32  # the tiny random motion adapter's window (ivmixed.testing)

ANIMATEDIFF = PipelineSpec(
    name="Animatediff",
    decode_chunk=16,  # diffusers' AnimateDiff decodes in chunks of 16 frames
    reference_compat=ReferenceCompat(swap_first_moves=True),
    class_path="ivmixed.pipelines.animatediff:IVMixedAnimateDiffPipeline",
    checkpoints=(
        Checkpoint("video_model", "video model", "SG161222/Realistic_Vision_V5.1_noVAE", "model_index.json"),
        Checkpoint("motion_adapter", "motion adapter", "guoyww/animatediff-motion-adapter-v1-5-3"),
        Checkpoint("image_model", "image model", SD15, "unet/config.json"),
    ),
    defaults={"height": 512, "width": 512, "guidance_scale": 7.5, "zz": 1000},
    options=("context_length", "context_stride", "motion_lora", "video_model_config", "controlnet", "controlnet_video",
             "controlnet_scale", "control_guidance_start", "control_guidance_end"),
    video_lora=True,
    prompt_schedules=True,
    tiny_builder="ivmixed.testing:save_tiny_animatediff",
)
MODELSCOPE = PipelineSpec(
    name="ModelScope",
    reference_compat=ReferenceCompat(image_model_every_step=True),
    class_path="ivmixed.pipelines.modelscope:IVMixedModelScopePipeline",
    checkpoints=(
        Checkpoint("video_model", "video model", "ali-vilab/text-to-video-ms-1.7b", "model_index.json"),
        Checkpoint("image_model", "image model", SD15, "unet/config.json"),
    ),
    defaults={"height": 256, "width": 256, "guidance_scale": 9.0, "zz": 1000},
    tiny_builder="ivmixed.testing:save_tiny_modelscope",
)
VIDEOCRAFTER = PipelineSpec(
    name="VideoCrafter",
    reference_compat=ReferenceCompat(video_model_image_weight=True, per_frame_main_step=True),
    class_path="ivmixed.pipelines.videocrafter:IVMixedVideoCrafterPipeline",
    checkpoints=(
        Checkpoint("video_model", "video model", "cerspense/zeroscope_v2_576w", "model_index.json"),
        Checkpoint("unet", "VideoCrafter2 UNet", "adamdad/videocrafterv2_diffusers"),
        Checkpoint("image_model", "image model", "SG161222/Realistic_Vision_V6.0_B1_noVAE", "unet/config.json"),
    ),
    defaults={"height": 320, "width": 512, "guidance_scale": 9.0, "zz": 3, "fps_condition": 24},
    options=("fps_condition",),
    scheduler="DPM-Solver++ (SDE)",
    standard_options=("fps_condition", "reference_compat"),
    tiny_builder="ivmixed.testing:save_tiny_videocrafter",
)
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
# AnimateDiff-SDXL: the beta motion adapter on SDXL base 1.0 and an SDXL image UNet. Defaults from diffusers'
# AnimateDiffSDXLPipeline example and the adapter's model card: 1024x1024, 16 frames, guidance 8, DDIM over
# linear betas (the pipeline module sets the scheduler). diffusers' SDXL pipeline has no FreeNoise, so a clip is
# at most one motion window; the published IV-mixed code has no SDXL pipeline, so no --reference-compat.
ANIMATEDIFF_SDXL = PipelineSpec(
    name="AnimatediffSDXL",
    family=SDXL_FAMILY,
    decode_chunk=None,  # diffusers' AnimateDiff-SDXL decodes every frame in one VAE call
    reference_compat=None,
    class_path="ivmixed.pipelines.animatediff_sdxl:IVMixedAnimateDiffSDXLPipeline",
    checkpoints=(
        Checkpoint("video_model", "video model", SDXL, "model_index.json"),
        Checkpoint("motion_adapter", "motion adapter", "guoyww/animatediff-motion-adapter-sdxl-beta"),
        Checkpoint("image_model", "image model", SDXL, "unet/config.json"),
    ),
    defaults={"height": 1024, "width": 1024, "guidance_scale": 8.0, "zz": 1000},
    tiny_builder="ivmixed.testing:save_tiny_animatediff_sdxl",
)

PIPELINES: Dict[str, PipelineSpec] = {spec.name: spec for spec in (ANIMATEDIFF, MODELSCOPE, VIDEOCRAFTER,
                                                                   ANIMATEDIFF_SDXL)}
# Every checkpoint keyword any pipeline takes, in a stable order.
CHECKPOINT_KEYS = ("video_model", "motion_adapter", "unet", "image_model")


def find_pipeline(name: str) -> Optional[PipelineSpec]:
    """The pipeline called ``name``, in any letter case."""
    for spec in PIPELINES.values():
        if spec.name.lower() == str(name).lower():
            return spec
    return None
