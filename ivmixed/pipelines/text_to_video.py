"""What the 3D-UNet text-to-video pipelines (ModelScope, VideoCrafter2) share.

diffusers keeps ``TextToVideoSDPipeline`` under ``diffusers.pipelines.deprecated``; nothing here imports it.
Its pieces are diffusers' Stable Diffusion ones (the methods below are borrowed from non-deprecated pipelines
that carry identical copies), so a call with ``iv_mixed=False`` is the stock text-to-video sampling.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import torch
from diffusers import AnimateDiffSparseControlNetPipeline, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.video_processor import VideoProcessor
from transformers import CLIPTextModel, CLIPTokenizer

from ..loading import is_single_file, loading
from .common import IVMixedSamplingMixin, guided_predictor, per_frame_predictor


def load_image_components(image_model: str, dtype: torch.dtype, spec=None,
                          image_model_config: Optional[str] = None) -> Dict:
    """The image model's UNet, text encoder and tokenizer from an SD 1.5-layout hub id or folder, or from a
    single-file SD 1.5 checkpoint built with the configs of ``image_model_config`` (default: the default image
    model of pipeline ``spec``, a :class:`~ivmixed.registry.PipelineSpec`; ModelScope's without one)."""
    with loading("image model", image_model, "image_model"):
        if is_single_file(image_model):
            from ..registry import PIPELINES
            from ..single_file import load_sd_file

            parts = load_sd_file(image_model, spec or PIPELINES["ModelScope"], "image_model", image_model_config,
                                 dtype, ("unet", "text_encoder"))
            return {"image_unet": parts["unet"], "image_text_encoder": parts["text_encoder"],
                    "image_tokenizer": parts["tokenizer"]}
        return {
            "image_unet": UNet2DConditionModel.from_pretrained(image_model, subfolder="unet", dtype=dtype),
            "image_text_encoder": CLIPTextModel.from_pretrained(image_model, subfolder="text_encoder", dtype=dtype),
            "image_tokenizer": CLIPTokenizer.from_pretrained(image_model, subfolder="tokenizer"),
        }


class _ImagePromptEncoder(TextualInversionLoaderMixin):
    """The image model's own text encoder and tokenizer behind diffusers' Stable Diffusion prompt encoding."""

    encode_prompt = StableDiffusionPipeline.encode_prompt
    unet = None

    def __init__(self, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer


class IVMixedTextToVideoPipeline(
    IVMixedSamplingMixin, DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin,
    StableDiffusionLoraLoaderMixin
):
    """A 3D-UNet text-to-video pipeline (diffusers' ``TextToVideoSDPipeline``) plus an image model and IV-mixed sampling.

    The image model (``image_unet``) conditions on its own text encoder and tokenizer. Latents are
    ``(batch, channels, frames, height, width)``; the image model sees every frame as an image. The image
    components are optional: without them only ``iv_mixed=False`` or a video-only zigzag (``zz=1``) runs.
    """

    # Model offload: calling a component offloads the one before it here. offload="model-swap" uses the whole
    # chain; IV-mixed alternates the two UNets, so the one listed first crosses to the GPU on every switch (the
    # image UNet, the smaller). offload="model" leaves both UNets out of it, on the GPU (performance.enable_offload).
    model_cpu_offload_seq = "text_encoder->image_text_encoder->image_unet->unet->vae"
    _optional_components = ["image_unet", "image_text_encoder", "image_tokenizer"]
    # As diffusers' Stable Diffusion pipelines: the video UNet's embeddings, not the image model's own.
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    # Resize frames to the image UNet's native sample size for its predictions (and back).
    resize_image_latents = True

    # diffusers' Stable Diffusion prompt encoding, input checks and scheduler keywords.
    encode_prompt = StableDiffusionPipeline.encode_prompt
    check_inputs = StableDiffusionPipeline.check_inputs
    prepare_extra_step_kwargs = StableDiffusionPipeline.prepare_extra_step_kwargs
    # diffusers' text-to-video latents (b, c, f, h, w) and decoding, as copied into the SparseCtrl pipeline.
    prepare_latents = AnimateDiffSparseControlNetPipeline.prepare_latents
    decode_latents = AnimateDiffSparseControlNetPipeline.decode_latents

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        image_unet: Optional[UNet2DConditionModel] = None,
        image_text_encoder: Optional[CLIPTextModel] = None,
        image_tokenizer: Optional[CLIPTokenizer] = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_unet=image_unet,
            image_text_encoder=image_text_encoder,
            image_tokenizer=image_tokenizer,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. from a step callback) to end the sampling loop early."""
        return self._interrupt

    def encode_image_prompt(
        self,
        prompt: Union[str, List[str]],
        negative_prompt: Union[str, List[str], None],
        num_frames: int,
        with_uncond: bool,
        device,
        clip_skip: Optional[int] = None,
    ) -> torch.Tensor:
        """The image model's embeddings, ``[uncond; cond]`` when guided, one per frame: each half in ``(b f)``
        order (video 0's frames, then video 1's), as the per-frame view lays out the frames."""
        encoder = _ImagePromptEncoder(self.image_text_encoder, self.image_tokenizer)
        embeds, negative_embeds = encoder.encode_prompt(
            prompt, device, 1, with_uncond, negative_prompt, clip_skip=clip_skip
        )
        if with_uncond:
            embeds = torch.cat([negative_embeds, embeds])
        return embeds.repeat_interleave(num_frames, dim=0).to(self.image_unet.dtype)

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
        video=None,
        strength: float = 0.8,
    ):
        """Generate a video; the IV-mixed keywords are those of :class:`ivmixed.IVMixedSettings`.

        ``video`` (a list of PIL frames at ``height`` x ``width``, or one list per prompt) with ``strength`` makes
        it video-to-video, as in diffusers' AnimateDiff video-to-video (the VAE encodes frame by frame): the last
        ``int(num_inference_steps * strength)`` steps run, and the interval, ``zz`` and guidance schedules count them.

        ``image_batch_size`` caps the frames per image-UNet call (default: all frames in one call); a smaller
        value bounds memory and gives the same result within float tolerance.

        Several videos in one call: ``prompt`` may be a list, one video per prompt, with ``generator`` a list of
        as many generators, each video's noise (the initial latents and a stochastic scheduler's step noise)
        drawn from its own, so that every video equals its own call with that generator within float tolerance.
        ``negative_prompt`` is then a list of the same length (``None`` entries: no negative prompt) or one text
        for all. Not with ``reference_compat`` on a pipeline whose main step runs on per-frame latents.

        ``height``/``width`` default to the UNet's sample size (times the VAE's scale), ``zz`` to the pipeline's
        preset ``default_zz``. ``callback_on_step_end`` may read and replace ``latents``, ``prompt_embeds`` (the
        video UNet's ``[uncond; cond]`` embeddings) and ``negative_prompt_embeds``; setting
        ``pipe._interrupt = True`` ends the loop early. ``reference_compat=True`` reproduces the published code
        where it departs from the design (see :class:`ivmixed.sampler.ReferenceCompat`; at most 50 steps; with
        ``guidance_scale <= 1`` every prediction, zigzag included, is the plain conditional one). Returns
        :class:`IVMixedPipelineOutput` (``frames`` as
        ``output_type``, plus the number of guided network calls per model), or ``(frames, network_calls)`` when
        ``return_dict=False``.
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
            image_batch_size=image_batch_size, reference_compat=reference_compat, video=video, strength=strength,
        )

    def _check_image_model(self, prompt) -> None:
        if self.image_unet is None or self.image_text_encoder is None or self.image_tokenizer is None:
            raise ValueError(
                "this zz and interval use the image model, but the pipeline has no image_unet/image_text_encoder/"
                "image_tokenizer; load them (e.g. with from_checkpoints), or pass iv_mixed=False or zz=1"
            )
        if prompt is None:
            raise ValueError("the image model encodes `prompt` with its own text encoder: pass `prompt`, not only embeddings")

    def _image_predictor(self, *, prompt, negative_prompt, num_frames, with_uncond, device, clip_skip, image_batch_size,
                         cross_attention_kwargs, **_):
        """The image model conditions on its own text encoder; frames go to its native size when asked."""
        image_embeds = self.encode_image_prompt(prompt, negative_prompt, num_frames, with_uncond, device, clip_skip)
        return per_frame_predictor(
            guided_predictor(self.image_unet, image_embeds, with_uncond, max_batch=image_batch_size,
                             cross_attention_kwargs=cross_attention_kwargs),
            sample_size=self.image_unet.config.sample_size if self.resize_image_latents else None,
        )
