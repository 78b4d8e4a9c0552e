"""AnimateDiff (SD 1.5 + motion adapter) with an SD 1.5 image UNet lifting every frame."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel

from .. import single_file
from ..loading import is_single_file, loading
from ..registry import PIPELINES as SPECS
from ..registry import read_config
from .common import IVMixedSamplingMixin, guided_predictor, per_frame_predictor, per_frame_rows
from .control import MultiControlNetModel, controlnet_of
from .long_video import check_free_noise_frames, encode_frame_prompts, frames_per_image_call, uses_frame_prompts

SPEC = SPECS["Animatediff"]
DEFAULT_VIDEO_MODEL = SPEC.checkpoint("video_model").default
DEFAULT_MOTION_ADAPTER = SPEC.checkpoint("motion_adapter").default
DEFAULT_IMAGE_MODEL = SPEC.checkpoint("image_model").default
DDIM_SETTINGS = {"clip_sample": False, "timestep_spacing": "linspace", "steps_offset": 1}


class IVMixedAnimateDiffPipeline(IVMixedSamplingMixin, AnimateDiffPipeline):
    """diffusers' ``AnimateDiffPipeline`` plus a registered ``image_unet`` and IV-mixed sampling.

    The image UNet shares the video model's CLIP-L text encoder, so it takes the same prompt embeddings.
    With ``iv_mixed=False`` a call is diffusers' stock AnimateDiff sampling.
    """

    # Model offload: calling a component offloads the one before it here. offload="model-swap" uses the whole
    # chain; IV-mixed alternates the two UNets, so the one listed first crosses to the GPU on every switch (the
    # image UNet, the smaller). offload="model" leaves both UNets out of it, on the GPU (performance.enable_offload).
    model_cpu_offload_seq = "text_encoder->image_encoder->image_unet->controlnet->unet->vae"
    _optional_components = AnimateDiffPipeline._optional_components + ["controlnet"]
    default_zz = SPEC.defaults["zz"]
    # The published AnimateDiff code let M see x_t labelled t1 and the video model x_t1 labelled t.
    reference_compat_options = SPECS["Animatediff"].reference_compat

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
        controlnet=None,
    ):
        super().__init__(vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor, image_encoder)
        self.register_modules(image_unet=image_unet, controlnet=controlnet_of(controlnet) if controlnet else None)

    @classmethod
    def from_checkpoints(
        cls,
        video_model: str = DEFAULT_VIDEO_MODEL,
        motion_adapter: str = DEFAULT_MOTION_ADAPTER,
        image_model: str = DEFAULT_IMAGE_MODEL,
        dtype: torch.dtype = torch.float32,
        scheduler_settings: Optional[Dict] = None,
        *,
        video_model_config: Optional[str] = None,
        image_model_config: Optional[str] = None,
        vae: Optional[str] = None,
    ) -> "IVMixedAnimateDiffPipeline":
        """Build the pipeline from hub ids or local folders: an SD 1.5 base, a motion adapter, an SD 1.5 image model.

        Each of the three may also be a single file (``.safetensors``/``.ckpt``, or ``owner/repo/name.safetensors``
        on the hub; see :mod:`ivmixed.single_file`): a Civitai-style SD 1.5 checkpoint for the base and the image
        model, built with the configs of ``video_model_config`` / ``image_model_config`` (default: the pipeline's
        default checkpoints, from the local cache), and AnimateDiff motion modules. ``vae`` (hub id, folder or
        single file) replaces the base's VAE. The base's scheduler is replaced by DDIM over the same betas
        (``scheduler_settings`` override). Missing folders, files that are not checkpoints of their kind and hub
        ids that are not cached while offline raise one :class:`~ivmixed.errors.ModelLoadError` before anything
        loads.
        """
        single_file.ensure_sources(SPEC, video_model=video_model, motion_adapter=motion_adapter, image_model=image_model,
                                   video_model_config=video_model_config, image_model_config=image_model_config, vae=vae)
        with loading("motion adapter", motion_adapter, "motion_adapter"):
            if is_single_file(motion_adapter):
                adapter = single_file.load_motion_adapter(motion_adapter, dtype, read_config(DEFAULT_MOTION_ADAPTER))
            else:
                adapter = MotionAdapter.from_pretrained(motion_adapter, dtype=dtype)
        with loading("image model", image_model, "image_model"):
            if is_single_file(image_model):
                image_unet = single_file.load_sd_file(image_model, SPEC, "image_model", image_model_config, dtype,
                                                      ("unet",))["unet"]
            else:
                image_unet = UNet2DConditionModel.from_pretrained(image_model, subfolder="unet", dtype=dtype)
        replaced = {}
        if vae is not None:
            with loading("VAE", vae, "vae"):
                replaced["vae"] = single_file.load_vae(
                    vae, dtype, single_file.video_vae_config(SPEC, video_model, video_model_config))
        with loading("video model", video_model, "video_model"):
            if is_single_file(video_model):
                parts = ("unet", "text_encoder") + (() if replaced else ("vae",))
                base = single_file.load_sd_file(video_model, SPEC, "video_model", video_model_config, dtype, parts,
                                                scheduler=True)
                pipe = cls(**base, **replaced, motion_adapter=adapter, image_unet=image_unet)
                pipe.register_to_config(_name_or_path=video_model)
            else:
                pipe = cls.from_pretrained(video_model, motion_adapter=adapter, image_unet=image_unet, dtype=dtype,
                                           **replaced)
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
        zz: Optional[int] = None,
        i_sigma_begin: float = 4.0,
        i_sigma_end: float = 4.0,
        v_sigma_begin: float = 4.0,
        v_sigma_end: float = 4.0,
        rho: float = 7.0,
        image_batch_size: Optional[int] = None,
        reference_compat: bool = False,
        video=None,
        strength: float = 0.8,
        ip_adapter_image=None,
        ip_adapter_image_embeds: Optional[List[torch.Tensor]] = None,
        conditioning_frames=None,
        controlnet_conditioning_scale: Union[float, List[float]] = 1.0,
        control_guidance_start: Union[float, List[float]] = 0.0,
        control_guidance_end: Union[float, List[float]] = 1.0,
    ):
        """Generate a video; the IV-mixed keywords are those of :class:`ivmixed.IVMixedSettings` (``zz=None``: the
        pipeline's preset, ``default_zz``).

        Guiding inputs, as in diffusers: ``video`` (a list of PIL frames, or one list per prompt) with ``strength``
        makes it video-to-video (diffusers' ``AnimateDiffVideoToVideoPipeline``: the last
        ``int(num_inference_steps * strength)`` steps run, from the encoded frames noised to the first of them; the
        interval, ``zz`` and the guidance schedules count the steps that run). ``ip_adapter_image`` (or
        ``ip_adapter_image_embeds``) is an IP-Adapter image prompt, for a pipeline with an IP-Adapter loaded in
        both UNets (:func:`ivmixed.ip_adapter.load_ip_adapter`): both models see its embeddings.
        ``conditioning_frames`` (one control image per frame; for several ControlNets one such list each), with
        ``controlnet_conditioning_scale`` and ``control_guidance_start/end``, as diffusers'
        ``AnimateDiffControlNetPipeline`` takes them, for a pipeline with ``controlnet`` set (a ControlNetModel,
        or a list of them): the ControlNet runs on every guided call of both UNets, each on its own input.

        ``image_batch_size`` caps the frames per image-UNet call; a smaller value bounds memory and gives the same
        result within float tolerance. The default is all frames in one call up to 32 frames, and calls of 16
        frames above that (long videos). ``callback_on_step_end`` may read and replace ``latents``,
        ``prompt_embeds`` (the ``[uncond; cond]`` per-frame embeddings both UNets take) and
        ``negative_prompt_embeds``, as in diffusers' AnimateDiff; setting ``pipe._interrupt = True`` ends the loop
        early. ``reference_compat=True`` reproduces the published code where it departs from the design (see
        :class:`ivmixed.sampler.ReferenceCompat`; at most 50 steps; with ``guidance_scale <= 1`` every prediction,
        zigzag included, is the plain conditional one). Returns :class:`IVMixedPipelineOutput`, or
        ``(frames, network_calls)`` when ``return_dict=False``.

        Several videos in one call: ``prompt`` may be a list, one video per prompt, with ``generator`` a list of
        as many generators, each video's noise drawn from its own (diffusers' convention), so that every video
        equals its own call with that generator within float tolerance. ``negative_prompt`` is then a list of the
        same length (``None`` entries: no negative prompt) or one text for all. Prompt schedules and FreeNoise
        take one video per call.

        Long videos and prompt travel: with ``pipe.enable_free_noise(context_length, context_stride)`` the motion
        modules run over sliding windows (diffusers' FreeNoise), and ``prompt`` (and ``negative_prompt``) may be a
        schedule ``{frame_index: prompt}`` starting at frame 0, as in diffusers' AnimateDiff; a schedule also works
        without FreeNoise. Every frame gets its own interpolated embedding, and the image model conditions each
        frame on the same embedding as the video model. One guided video call covers all windows, so the network
        call counts are those of :func:`ivmixed.count_network_calls` whatever the windows.
        """
        return self._generate(
            prompt=prompt, num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, negative_prompt=negative_prompt, eta=eta, generator=generator,
            latents=latents, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            output_type=output_type, return_dict=return_dict, cross_attention_kwargs=cross_attention_kwargs,
            clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            settings=self._iv_mixed_settings(iv_mixed, interval_begin, interval_end, zz, i_sigma_begin, i_sigma_end,
                                             v_sigma_begin, v_sigma_end, rho),
            image_batch_size=image_batch_size, reference_compat=reference_compat, decode_chunk_size=decode_chunk_size,
            video=video, strength=strength, ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds, conditioning_frames=self._control_frames(conditioning_frames),
            controlnet_conditioning_scale=controlnet_conditioning_scale, control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
        )

    def _control_frames(self, conditioning_frames):
        """diffusers' layout: one ControlNet takes one list of frames, several take one list per ControlNet."""
        if conditioning_frames is None or isinstance(getattr(self, "controlnet", None), MultiControlNetModel):
            return conditioning_frames
        return [conditioning_frames]

    def _encode_video_prompt(self, prompt, negative_prompt, num_frames, device, with_uncond, prompt_embeds,
                             negative_prompt_embeds, lora_scale, clip_skip):
        """Prompt schedules and FreeNoise calls get diffusers' per-frame encoding; the rest the ordinary one."""
        check_free_noise_frames(self, num_frames)
        if uses_frame_prompts(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds):
            embeds = encode_frame_prompts(self, prompt, negative_prompt, num_frames, device, with_uncond, lora_scale,
                                          clip_skip)
            return {"prompt_embeds": embeds, "negative_prompt_embeds": embeds.chunk(2)[0] if with_uncond else None}
        return super()._encode_video_prompt(
            prompt, negative_prompt, num_frames, device, with_uncond, prompt_embeds, negative_prompt_embeds,
            lora_scale, clip_skip,
        )

    def _video_embeds(self, embeds: torch.Tensor, num_frames: int) -> torch.Tensor:
        # One embedding per frame: the motion UNet expects it, and the image UNet sees frames as images.
        return embeds.repeat_interleave(repeats=num_frames, dim=0)

    def _image_predictor(self, *, video_embeds, num_frames, batch_size, with_uncond, image_batch_size,
                         cross_attention_kwargs, image_embeds, residuals, **_):
        """The image UNet shares the video model's CLIP-L text encoder, so it takes the same embeddings: each half
        of ``video_embeds()`` is laid out ``(b f)`` like the frames of the per-frame view, one embedding per frame;
        so are the IP-Adapter image embeddings, repeated per frame. The automatic cap on frames per call counts the
        frames of every video of the call."""
        added = None
        if image_embeds is not None:
            frame_embeds = {"image_embeds": per_frame_rows(image_embeds, num_frames)}
            added = lambda: frame_embeds  # noqa: E731
        return per_frame_predictor(
            guided_predictor(self.image_unet, lambda: video_embeds().to(self.image_unet.dtype), with_uncond,
                             max_batch=frames_per_image_call(image_batch_size, batch_size * num_frames),
                             added_cond=added, residuals=residuals, cross_attention_kwargs=cross_attention_kwargs)
        )

    def _decode_latents(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        return self.decode_latents(latents, decode_chunk_size)
