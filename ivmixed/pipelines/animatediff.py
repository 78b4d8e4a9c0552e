"""AnimateDiff (SD 1.5 + motion adapter) with an SD 1.5 image UNet lifting every frame."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

from ..loading import loading
from .common import IVMixedSamplingMixin, call_arguments, guided_predictor, per_frame_predictor
from .long_video import check_free_noise_frames, encode_frame_prompts, frames_per_image_call, uses_frame_prompts

DEFAULT_VIDEO_MODEL = "SG161222/Realistic_Vision_V5.1_noVAE"
DEFAULT_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-3"
DEFAULT_IMAGE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DDIM_SETTINGS = {"clip_sample": False, "timestep_spacing": "linspace", "steps_offset": 1}


class IVMixedAnimateDiffPipeline(IVMixedSamplingMixin, AnimateDiffPipeline):
    """diffusers' ``AnimateDiffPipeline`` plus a registered ``image_unet`` and IV-mixed sampling.

    The image UNet shares the video model's CLIP-L text encoder, so it takes the same prompt embeddings.
    With ``iv_mixed=False`` a call is diffusers' stock AnimateDiff sampling.
    """

    # With model offload, calling a component offloads the one before it. IV-mixed alternates the two UNets,
    # so the one listed first moves on every switch: the image UNet, the smaller of the two.
    model_cpu_offload_seq = "text_encoder->image_encoder->image_unet->unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        motion_adapter: MotionAdapter,
        scheduler,
        image_unet: UNet2DConditionModel,
        feature_extractor=None,
        image_encoder=None,
    ):
        super().__init__(vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor, image_encoder)
        self.register_modules(image_unet=image_unet)

    @classmethod
    def from_checkpoints(
        cls,
        video_model: str = DEFAULT_VIDEO_MODEL,
        motion_adapter: str = DEFAULT_MOTION_ADAPTER,
        image_model: str = DEFAULT_IMAGE_MODEL,
        dtype: torch.dtype = torch.float32,
        scheduler_settings: Optional[Dict] = None,
    ) -> "IVMixedAnimateDiffPipeline":
        """Build the pipeline from hub ids or local folders: an SD 1.5 base, a motion adapter, an SD 1.5 image model.

        The base's scheduler is replaced by DDIM over the same betas (``scheduler_settings`` override).
        """
        with loading("motion adapter", motion_adapter, "--motion-adapter"):
            adapter = MotionAdapter.from_pretrained(motion_adapter, dtype=dtype)
        with loading("image model", image_model, "--image-model"):
            image_unet = UNet2DConditionModel.from_pretrained(image_model, subfolder="unet", dtype=dtype)
        with loading("video model", video_model, "--video-model"):
            pipe = cls.from_pretrained(video_model, motion_adapter=adapter, image_unet=image_unet, dtype=dtype)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **{**DDIM_SETTINGS, **(scheduler_settings or {})})
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str], Dict[int, str], None] = None,
        num_frames: int = 16,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Union[str, List[str], Dict[int, str], None] = None,
        eta: float = 0.0,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict] = None,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        decode_chunk_size: int = 16,
        iv_mixed: bool = True,
        interval_begin: int = 0,
        interval_end: Optional[int] = None,
        zz: int = 1000,
        i_sigma_begin: float = 4.0,
        i_sigma_end: float = 4.0,
        v_sigma_begin: float = 4.0,
        v_sigma_end: float = 4.0,
        rho: float = 7.0,
        image_batch_size: Optional[int] = None,
    ):
        """Generate a video; the IV-mixed keywords are those of :class:`ivmixed.IVMixedSettings`.

        ``image_batch_size`` caps the frames per image-UNet call; a smaller value bounds memory and gives the same
        result within float tolerance. The default is all frames in one call up to 32 frames, and calls of 16
        frames above that (long videos).

        Long videos and prompt travel: with ``pipe.enable_free_noise(context_length, context_stride)`` the motion
        modules run over sliding windows (diffusers' FreeNoise), and ``prompt`` (and ``negative_prompt``) may be a
        schedule ``{frame_index: prompt}`` starting at frame 0, as in diffusers' AnimateDiff; a schedule also works
        without FreeNoise. Every frame gets its own interpolated embedding, and the image model conditions each
        frame on the same embedding as the video model. One guided video call covers all windows, so the network
        call counts are those of :func:`ivmixed.count_network_calls` whatever the windows.
        """
        return self._generate(**call_arguments(locals()))

    def _encode_video_prompt(self, prompt, negative_prompt, num_frames, device, with_uncond, prompt_embeds,
                             negative_prompt_embeds, lora_scale, clip_skip) -> torch.Tensor:
        """Prompt schedules and FreeNoise calls get diffusers' per-frame encoding; the rest the ordinary one."""
        check_free_noise_frames(self, num_frames)
        if uses_frame_prompts(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds):
            return encode_frame_prompts(self, prompt, negative_prompt, num_frames, device, with_uncond, lora_scale,
                                        clip_skip)
        return super()._encode_video_prompt(
            prompt, negative_prompt, num_frames, device, with_uncond, prompt_embeds, negative_prompt_embeds,
            lora_scale, clip_skip,
        )

    def _video_embeds(self, embeds: torch.Tensor, num_frames: int) -> torch.Tensor:
        # One embedding per frame: the motion UNet expects it, and the image UNet sees frames as images.
        return embeds.repeat_interleave(repeats=num_frames, dim=0)

    def _image_predictor(self, *, video_embeds, with_uncond, image_batch_size, cross_attention_kwargs, **_):
        """The image UNet shares the video model's CLIP-L text encoder, so it takes the same embeddings: each half
        of ``video_embeds`` is laid out ``(b f)`` like the frames of the per-frame view, one embedding per frame."""
        frames = video_embeds.shape[0] // (2 if with_uncond else 1)
        return per_frame_predictor(
            guided_predictor(self.image_unet, video_embeds.to(self.image_unet.dtype), with_uncond,
                             max_batch=frames_per_image_call(image_batch_size, frames),
                             cross_attention_kwargs=cross_attention_kwargs)
        )

    def _decode_latents(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        return self.decode_latents(latents, decode_chunk_size)
