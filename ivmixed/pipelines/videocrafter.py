"""VideoCrafter2 (its UNet in Zeroscope's VAE/text-encoder frame) with a Realistic Vision image model."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from diffusers import DPMSolverMultistepScheduler

from ..loading import loading
from ..models import VideoCrafterUNet3DConditionModel
from .text_to_video import IVMixedTextToVideoPipeline, load_image_components

DEFAULT_VIDEO_MODEL = "cerspense/zeroscope_v2_576w"
DEFAULT_UNET = "adamdad/videocrafterv2_diffusers"
DEFAULT_IMAGE_MODEL = "SG161222/Realistic_Vision_V6.0_B1_noVAE"
DPM_SETTINGS = {"algorithm_type": "sde-dpmsolver++"}


class IVMixedVideoCrafterPipeline(IVMixedTextToVideoPipeline):
    """VideoCrafter2 text-to-video plus an SD 1.5-family image model with its own text encoder.

    The UNet is :class:`~ivmixed.models.VideoCrafterUNet3DConditionModel`, conditioned on the frame rate
    (``fps``). The main steps are the pipeline's scheduler (stochastic DPM-Solver++ by default, seeded by
    ``generator``); the zigzag moves stay deterministic DDIM over the same alphas. The image model sees frames
    at the video's own latent size, as in the reference implementation.
    """

    resize_image_latents = False
    # VideoCrafter2's training resolution; its converted UNet config has no sample_size.
    fallback_height = 320
    fallback_width = 512
    default_zz = 3

    @classmethod
    def from_checkpoints(
        cls,
        video_model: str = DEFAULT_VIDEO_MODEL,
        unet: str = DEFAULT_UNET,
        image_model: str = DEFAULT_IMAGE_MODEL,
        dtype: torch.dtype = torch.float32,
        scheduler_settings: Optional[Dict] = None,
    ) -> "IVMixedVideoCrafterPipeline":
        """Build the pipeline from hub ids or local folders: Zeroscope's VAE, text encoder and tokenizer, the
        VideoCrafter2 UNet (weights at the root or under ``unet/``) and an SD 1.5-family image model.

        The scheduler is DPM-Solver++ (SDE) from Zeroscope's scheduler config (``scheduler_settings`` override).
        """
        components = load_image_components(image_model, dtype)
        with loading("VideoCrafter2 UNet", unet, "--unet"):
            components["unet"] = VideoCrafterUNet3DConditionModel.from_pretrained(unet, dtype=dtype)
        with loading("video model", video_model, "--video-model"):
            pipe = cls.from_pretrained(video_model, dtype=dtype, **components)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, **{**DPM_SETTINGS, **(scheduler_settings or {})}
        )
        return pipe

    def _video_unet_kwargs(self) -> Dict:
        return {"fps": self._fps}

    @torch.no_grad()
    def __call__(self, *args, fps: int = 24, **kwargs):
        """:meth:`IVMixedTextToVideoPipeline.__call__` (guidance 9.0, ``zz=3`` by default) plus ``fps``, the
        frame rate the UNet is conditioned on (VideoCrafter2 default 24)."""
        self._fps = fps
        return super().__call__(*args, **kwargs)
