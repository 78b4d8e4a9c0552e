"""VideoCrafter2 (its UNet in Zeroscope's VAE/text-encoder frame) with a Realistic Vision image model."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import torch
from diffusers import DPMSolverMultistepScheduler

from ..loading import loading
from ..models import VideoCrafterUNet3DConditionModel
from ..registry import PIPELINES as SPECS
from ..single_file import ensure_sources, load_vae
from .text_to_video import IVMixedTextToVideoPipeline, load_image_components

SPEC = SPECS["VideoCrafter"]
DEFAULT_VIDEO_MODEL = SPEC.checkpoint("video_model").default
DEFAULT_UNET = SPEC.checkpoint("unet").default
DEFAULT_IMAGE_MODEL = SPEC.checkpoint("image_model").default
DEFAULT_FPS = SPEC.defaults["fps_condition"]
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
    default_zz = SPEC.defaults["zz"]
    # The published VideoCrafter code gave the video model the image weight where it took M's place, and stepped
    # the main scheduler on per-frame latents (which places the SDE noise of a seeded generator differently).
    reference_compat_options = SPECS["VideoCrafter"].reference_compat

    @classmethod
    def from_checkpoints(
        cls,
        video_model: str = DEFAULT_VIDEO_MODEL,
        unet: str = DEFAULT_UNET,
        image_model: str = DEFAULT_IMAGE_MODEL,
        dtype: torch.dtype = torch.float32,
        scheduler_settings: Optional[Dict] = None,
        *,
        image_model_config: Optional[str] = None,
        vae: Optional[str] = None,
    ) -> "IVMixedVideoCrafterPipeline":
        """Build the pipeline from hub ids or local folders: Zeroscope's VAE, text encoder and tokenizer, the
        VideoCrafter2 UNet (weights at the root or under ``unet/``) and an SD 1.5-family image model.

        The image model may also be a single-file SD 1.5 checkpoint (see :mod:`ivmixed.single_file`), built with
        the configs of ``image_model_config`` (default: the pipeline's default image model, from the local cache);
        ``vae`` (hub id, folder or single file) replaces Zeroscope's VAE. The scheduler is DPM-Solver++ (SDE) from
        Zeroscope's scheduler config (``scheduler_settings`` override). Missing folders, files that are not
        checkpoints of their kind and hub ids that are not cached while offline raise one
        :class:`~ivmixed.errors.ModelLoadError` before anything loads.
        """
        ensure_sources(SPEC, video_model=video_model, unet=unet, image_model=image_model,
                       image_model_config=image_model_config, vae=vae)
        components = load_image_components(image_model, dtype, SPEC, image_model_config)
        with loading("VideoCrafter2 UNet", unet, "unet"):
            components["unet"] = VideoCrafterUNet3DConditionModel.from_pretrained(unet, dtype=dtype)
        if vae is not None:
            with loading("VAE", vae, "vae"):
                components["vae"] = load_vae(vae, dtype, video_model)
        with loading("video model", video_model, "video_model"):
            pipe = cls.from_pretrained(video_model, dtype=dtype, **components)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, **{**DPM_SETTINGS, **(scheduler_settings or {})}
        )
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_frames: int = 16,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        negative_prompt: Union[str, List[str], None] = None,
        eta: float = 0.0,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "np",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict] = None,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        iv_mixed: bool = True,
        interval_begin: int = 0,
        interval_end: Optional[int] = None,
        zz: Optional[int] = None,
        i_sigma_begin: float = 4.0,
        i_sigma_end: float = 4.0,
        v_sigma_begin: float = 4.0,
        v_sigma_end: float = 4.0,
        rho: float = 7.0,
        image_batch_size: Optional[int] = None,
        reference_compat: bool = False,
        fps: int = DEFAULT_FPS,
        video=None,
        strength: float = 0.8,
    ):
        """:meth:`IVMixedTextToVideoPipeline.__call__` (guidance 9.0, ``zz=3`` by default) plus ``fps``, the
        frame rate every video UNet call is conditioned on (VideoCrafter2 default 24). ``reference_compat=True`` also
        changes the standard video (``iv_mixed=False``): its main steps run on per-frame latents, so such a call takes
        one generator, not a list (one video per call). ``video`` and ``strength``: video-to-video, as there."""
        return self._generate(
            prompt=prompt, num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, negative_prompt=negative_prompt, eta=eta, generator=generator,
            latents=latents, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            output_type=output_type, return_dict=return_dict, cross_attention_kwargs=cross_attention_kwargs,
            clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            settings=self._iv_mixed_settings(iv_mixed, interval_begin, interval_end, zz, i_sigma_begin, i_sigma_end,
                                             v_sigma_begin, v_sigma_end, rho),
            image_batch_size=image_batch_size, reference_compat=reference_compat, video_unet_kwargs={"fps": self._fps_tensor(fps)},
            video=video, strength=strength,
        )

    def _fps_tensor(self, fps: int) -> torch.Tensor:
        """The frame rate as one device tensor per call, so the UNet does not copy it to the device at every call."""
        return torch.full((1,), fps, dtype=torch.int64, device=self._execution_device)
