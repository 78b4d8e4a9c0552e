"""ModelScope text-to-video (``ali-vilab/text-to-video-ms-1.7b``) with a Stable Diffusion 1.5 image model."""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional

import torch
from diffusers import DDIMScheduler
from diffusers.utils import logging

from ..loading import loading
from ..registry import PIPELINES as SPECS
from ..sampler import ReferenceCompat
from ..single_file import ensure_sources, load_vae
from .animatediff import DDIM_SETTINGS
from .text_to_video import IVMixedTextToVideoPipeline, load_image_components

logger = logging.get_logger(__name__)

SPEC = SPECS["ModelScope"]
DEFAULT_VIDEO_MODEL = SPEC.checkpoint("video_model").default
DEFAULT_IMAGE_MODEL = SPEC.checkpoint("image_model").default


class IVMixedModelScopePipeline(IVMixedTextToVideoPipeline):
    """ModelScope's ``TextToVideoSDPipeline`` plus an SD 1.5 image model with its own text encoder.

    ModelScope runs at 256x256 (32x32 latents) while SD 1.5 is native at 64x64 latents, so the image model's
    predictions are made on frames resized (nearest) to its sample size and resized back.
    With ``iv_mixed=False`` a call is diffusers' stock text-to-video sampling.
    """

    default_zz = SPEC.defaults["zz"]
    # The published ModelScope code had no zz (the image model on every zigzag step) and moved the whole latent
    # at the image model's size; the size is the loaded image UNet's (see _reference_compat).
    reference_compat_options = SPECS["ModelScope"].reference_compat

    def _reference_compat(self) -> ReferenceCompat:
        size = self.image_unet.config.sample_size if self.image_unet is not None and self.resize_image_latents else None
        return replace(self.reference_compat_options, image_move_size=size)

    @classmethod
    def from_checkpoints(
        cls,
        video_model: str = DEFAULT_VIDEO_MODEL,
        image_model: str = DEFAULT_IMAGE_MODEL,
        dtype: torch.dtype = torch.float32,
        scheduler_settings: Optional[Dict] = None,
        *,
        image_model_config: Optional[str] = None,
        vae: Optional[str] = None,
    ) -> "IVMixedModelScopePipeline":
        """Build the pipeline from hub ids or local folders: a ModelScope checkpoint and an SD 1.5 image model.

        The image model may also be a single-file SD 1.5 checkpoint (see :mod:`ivmixed.single_file`), built with
        the configs of ``image_model_config`` (default: the pipeline's default image model, from the local cache);
        ``vae`` (hub id, folder or single file) replaces the video model's VAE. In fp16 the video model's ``fp16``
        variant is loaded when it has one. Its scheduler is replaced by DDIM over the same betas
        (``scheduler_settings`` override). Missing folders, files that are not checkpoints of their kind and hub
        ids that are not cached while offline raise one :class:`~ivmixed.errors.ModelLoadError` before anything
        loads.
        """
        ensure_sources(SPEC, video_model=video_model, image_model=image_model, image_model_config=image_model_config,
                       vae=vae)
        components = load_image_components(image_model, dtype, SPEC, image_model_config)
        if vae is not None:
            with loading("VAE", vae, "vae"):
                components["vae"] = load_vae(vae, dtype, video_model)
        pipe = None
        with loading("video model", video_model, "video_model"):
            if dtype == torch.float16:
                try:
                    pipe = cls.from_pretrained(video_model, variant="fp16", dtype=dtype, **components)
                except (OSError, ValueError):
                    logger.info(f"{video_model} has no fp16 variant; loading its default weights as {dtype}")
            if pipe is None:
                pipe = cls.from_pretrained(video_model, dtype=dtype, **components)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **{**DDIM_SETTINGS, **(scheduler_settings or {})})
        return pipe
