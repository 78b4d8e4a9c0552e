"""AnimateDiff-SDXL (SDXL base + the SDXL motion adapter) with an SDXL image UNet lifting every frame.

AnimateDiff-SDXL decodes every frame with the SDXL VAE, without temporal compression, so an SDXL image UNet can
step each frame on its own. Every SDXL UNet call takes, besides the prompt embeddings of both text encoders, the
second encoder's pooled embedding and six size numbers (``time_ids``: original size, crop corner, target size);
the image UNet gets them per frame, in the same ``[uncond; cond]`` layout as the embeddings.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from diffusers import AnimateDiffSDXLPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from diffusers.loaders import TextualInversionLoaderMixin
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..loading import loading
from ..registry import PIPELINES as SPECS
from ..single_file import ensure_sources, load_vae
from .animatediff import DDIM_SETTINGS
from .common import IVMixedSamplingMixin, guided_predictor, per_frame_predictor, per_frame_rows
from .long_video import frames_per_image_call

SPEC = SPECS["AnimatediffSDXL"]
DEFAULT_VIDEO_MODEL = SPEC.checkpoint("video_model").default
DEFAULT_MOTION_ADAPTER = SPEC.checkpoint("motion_adapter").default
DEFAULT_IMAGE_MODEL = SPEC.checkpoint("image_model").default
# diffusers' AnimateDiff-SDXL example and the adapter's model card: DDIM over linear betas, linspace spacing.
SDXL_DDIM_SETTINGS = {**DDIM_SETTINGS, "beta_schedule": "linear"}
TEXT_PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


class _SDXLPromptEncoder(TextualInversionLoaderMixin):
    """An image model's own two text encoders behind diffusers' SDXL prompt encoding."""

    encode_prompt = AnimateDiffSDXLPipeline.encode_prompt

    def __init__(self, text_encoder, text_encoder_2, tokenizer, tokenizer_2, force_zeros_for_empty_prompt: bool):
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.config = type("Config", (), {"force_zeros_for_empty_prompt": force_zeros_for_empty_prompt})()


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    """Whether two modules hold equal tensors under equal names (then one can stand for both)."""
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)


def load_image_text_parts(image_model: str, video: Dict, dtype: torch.dtype) -> Dict:
    """The image model's own text encoders and tokenizers (``image_*`` keywords), or none where they equal the
    video model's (``video``: its ``text_encoder``, ``text_encoder_2``, ...), so one copy serves both."""
    parts = {
        "text_encoder": CLIPTextModel.from_pretrained(image_model, subfolder="text_encoder", dtype=dtype),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(image_model, subfolder="text_encoder_2",
                                                                      dtype=dtype),
        "tokenizer": CLIPTokenizer.from_pretrained(image_model, subfolder="tokenizer"),
        "tokenizer_2": CLIPTokenizer.from_pretrained(image_model, subfolder="tokenizer_2"),
    }
    shared = all(same_weights(parts[k], video[k]) for k in ("text_encoder", "text_encoder_2")) and all(
        parts[k].get_vocab() == video[k].get_vocab() for k in ("tokenizer", "tokenizer_2"))
    return {} if shared else {f"image_{k}": v for k, v in parts.items()}


class IVMixedAnimateDiffSDXLPipeline(IVMixedSamplingMixin, AnimateDiffSDXLPipeline):
    """diffusers' ``AnimateDiffSDXLPipeline`` plus a registered SDXL ``image_unet`` and IV-mixed sampling.

    The image UNet shares the video model's two text encoders (their prompt embeddings, pooled embedding and size
    conditioning) unless it comes with encoders of its own (``image_text_encoder``, ``image_text_encoder_2`` and
    their tokenizers), which then encode its prompts. With ``iv_mixed=False`` a call is diffusers' stock
    AnimateDiff-SDXL sampling.
    """

    # Model offload: see IVMixedAnimateDiffPipeline; the image UNet is listed first, the one that crosses on every
    # switch under offload="model-swap".
    model_cpu_offload_seq = ("text_encoder->text_encoder_2->image_text_encoder->image_text_encoder_2->image_encoder->"
                             "image_unet->unet->vae")
    _optional_components = AnimateDiffSDXLPipeline._optional_components + [f"image_{k}" for k in TEXT_PARTS]
    default_zz = SPEC.defaults["zz"]
    reference_compat_options = SPEC.reference_compat  # None: the published code has no SDXL pipeline

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        motion_adapter: MotionAdapter,
        scheduler,
        image_unet: UNet2DConditionModel,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt: bool = True,
        image_text_encoder: Optional[CLIPTextModel] = None,
        image_text_encoder_2: Optional[CLIPTextModelWithProjection] = None,
        image_tokenizer: Optional[CLIPTokenizer] = None,
        image_tokenizer_2: Optional[CLIPTokenizer] = None,
    ):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, motion_adapter, scheduler,
                         image_encoder, feature_extractor, force_zeros_for_empty_prompt)
        self.register_modules(image_unet=image_unet, image_text_encoder=image_text_encoder,
                              image_text_encoder_2=image_text_encoder_2, image_tokenizer=image_tokenizer,
                              image_tokenizer_2=image_tokenizer_2)

    @classmethod
    def from_checkpoints(
        cls,
        video_model: str = DEFAULT_VIDEO_MODEL,
        motion_adapter: str = DEFAULT_MOTION_ADAPTER,
        image_model: str = DEFAULT_IMAGE_MODEL,
        dtype: torch.dtype = torch.float32,
        scheduler_settings: Optional[Dict] = None,
        *,
        vae: Optional[str] = None,
    ) -> "IVMixedAnimateDiffSDXLPipeline":
        """Build the pipeline from hub ids or local folders: an SDXL base, an SDXL motion adapter, an SDXL image model.

        The image model's UNet is loaded from ``image_model``; its text encoders are loaded too when it is another
        checkpoint than the base, and kept only where they differ from the base's. ``vae`` (hub id, folder or
        single file, e.g. an fp16-safe SDXL VAE) replaces the base's VAE. The base's scheduler is replaced by DDIM
        over linear betas (``scheduler_settings`` override). Missing folders and hub ids that are not cached while
        offline raise one :class:`~ivmixed.errors.ModelLoadError` before anything loads.
        """
        ensure_sources(SPEC, video_model=video_model, motion_adapter=motion_adapter, image_model=image_model, vae=vae)
        with loading("motion adapter", motion_adapter, "motion_adapter"):
            adapter = MotionAdapter.from_pretrained(motion_adapter, dtype=dtype)
        with loading("image model", image_model, "image_model"):
            image_unet = UNet2DConditionModel.from_pretrained(image_model, subfolder="unet", dtype=dtype)
        replaced = {}
        if vae is not None:
            with loading("VAE", vae, "vae"):
                replaced["vae"] = load_vae(vae, dtype, video_model)
        with loading("video model", video_model, "video_model"):
            pipe = cls.from_pretrained(video_model, motion_adapter=adapter, image_unet=image_unet, dtype=dtype,
                                       **replaced)
        if image_model != video_model:
            with loading("image model", image_model, "image_model"):
                own = load_image_text_parts(image_model, {k: getattr(pipe, k) for k in TEXT_PARTS}, dtype)
            pipe.register_modules(**own)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config,
                                                   **{**SDXL_DDIM_SETTINGS, **(scheduler_settings or {})})
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        prompt_2: Union[str, List[str], None] = None,
        num_frames: int = 16,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 8.0,
        negative_prompt: Union[str, List[str], None] = None,
        negative_prompt_2: Union[str, List[str], None] = None,
        eta: float = 0.0,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        pooled_prompt_embeds: Optional[torch.Tensor] = None,
        negative_pooled_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict] = None,
        original_size: Optional[Tuple[int, int]] = None,
        crops_coords_top_left: Tuple[int, int] = (0, 0),
        target_size: Optional[Tuple[int, int]] = None,
        negative_original_size: Optional[Tuple[int, int]] = None,
        negative_crops_coords_top_left: Tuple[int, int] = (0, 0),
        negative_target_size: Optional[Tuple[int, int]] = None,
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
        ip_adapter_image=None,
        ip_adapter_image_embeds: Optional[List[torch.Tensor]] = None,
    ):
        """Generate a video; the SDXL keywords are diffusers' ``AnimateDiffSDXLPipeline``'s (second prompts, pooled
        embeddings, ``original_size``/``crops_coords_top_left``/``target_size`` micro-conditioning, default
        ``(height, width)``), the IV-mixed ones those of :class:`ivmixed.IVMixedSettings` (``zz=None``: the
        pipeline's preset). ``image_batch_size`` caps the frames per image-UNet call (default: up to 32 frames in
        one call). A step callback may read and replace ``latents``, ``prompt_embeds`` (the ``[uncond; cond]``
        per-frame embeddings), ``add_text_embeds`` (the ``[uncond; cond]`` pooled embeddings, one row per video)
        and ``add_time_ids``, which both UNets take where the image model shares the text encoders; setting
        ``pipe._interrupt = True`` ends the loop early. ``prompt`` may be a list, one video per prompt, with a
        list of as many generators. ``video`` with ``strength`` (video-to-video) and ``ip_adapter_image`` are those
        of :class:`IVMixedAnimateDiffPipeline`. ``reference_compat=True`` is refused: the published code has no SDXL
        pipeline.
        Returns :class:`IVMixedPipelineOutput`, or ``(frames, network_calls)`` when ``return_dict=False``.
        """
        default_height, default_width = self._default_size()
        height, width = height or default_height, width or default_width
        encode_kwargs = dict(
            prompt_2=prompt_2, negative_prompt_2=negative_prompt_2, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            size_condition=(tuple(original_size or (height, width)), tuple(crops_coords_top_left),
                            tuple(target_size or (height, width))),
            negative_size_condition=None if negative_original_size is None or negative_target_size is None else (
                tuple(negative_original_size), tuple(negative_crops_coords_top_left), tuple(negative_target_size)),
        )
        return self._generate(
            prompt=prompt, num_frames=num_frames, height=height, width=width, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, negative_prompt=negative_prompt, eta=eta, generator=generator,
            latents=latents, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            output_type=output_type, return_dict=return_dict, cross_attention_kwargs=cross_attention_kwargs,
            clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            settings=self._iv_mixed_settings(iv_mixed, interval_begin, interval_end, zz, i_sigma_begin, i_sigma_end,
                                             v_sigma_begin, v_sigma_end, rho),
            image_batch_size=image_batch_size, reference_compat=reference_compat, encode_kwargs=encode_kwargs,
            video=video, strength=strength, ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
        )

    def _check_call_inputs(self, prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           callback_on_step_end_tensor_inputs, *, prompt_2, negative_prompt_2, pooled_prompt_embeds,
                           negative_pooled_prompt_embeds, **_) -> None:
        self.check_inputs(prompt, prompt_2, height, width, negative_prompt, negative_prompt_2, prompt_embeds,
                          negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds,
                          callback_on_step_end_tensor_inputs)

    def _time_ids(self, unet, size_condition, pooled_dim: int, dtype) -> torch.Tensor:
        """One row of ``time_ids`` for ``unet``: diffusers' ``_get_add_time_ids``, checked against that UNet."""
        original, crop, target = size_condition
        ids = list(original + crop + target)
        expected = unet.add_embedding.linear_1.in_features
        if unet.config.addition_time_embed_dim * len(ids) + pooled_dim != expected:
            raise ValueError(f"{type(unet).__name__} expects an added embedding of {expected} numbers, but the pooled "
                             f"embedding ({pooled_dim}) and {len(ids)} size numbers give "
                             f"{unet.config.addition_time_embed_dim * len(ids) + pooled_dim}: is it an SDXL UNet?")
        return torch.tensor([ids], dtype=dtype)

    def _sdxl_conditioning(self, encoder, unet, prompt, negative_prompt, device, with_uncond, lora_scale, clip_skip,
                           prompt_2=None, negative_prompt_2=None, prompt_embeds=None, negative_prompt_embeds=None,
                           pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None, size_condition=None,
                           negative_size_condition=None) -> Dict[str, torch.Tensor]:
        """Encode with ``encoder``'s two text encoders for ``unet``: the callback tensors by their diffusers names,
        the ``[uncond; cond]`` ones one row per video (not yet per frame)."""
        embeds, negative, pooled, negative_pooled = encoder.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=device, num_videos_per_prompt=1,
            do_classifier_free_guidance=with_uncond, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, lora_scale=lora_scale, clip_skip=clip_skip,
        )
        videos, pooled_dim = pooled.shape[0], int(pooled.shape[-1])
        time_ids = self._time_ids(unet, size_condition, pooled_dim, embeds.dtype).to(device)
        negative_time_ids = time_ids if negative_size_condition is None else self._time_ids(
            unet, negative_size_condition, pooled_dim, embeds.dtype).to(device)
        tensors = {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled,
                   "negative_add_time_ids": negative_time_ids}
        if with_uncond:
            tensors.update(prompt_embeds=torch.cat([negative, embeds]), add_text_embeds=torch.cat([negative_pooled, pooled]),
                           add_time_ids=torch.cat([negative_time_ids.repeat(videos, 1), time_ids.repeat(videos, 1)]))
        else:
            tensors.update(prompt_embeds=embeds, add_text_embeds=pooled, add_time_ids=time_ids.repeat(videos, 1))
        return tensors

    def _encode_video_prompt(self, prompt, negative_prompt, num_frames, device, with_uncond, prompt_embeds,
                             negative_prompt_embeds, lora_scale, clip_skip, **encode_kwargs):
        """diffusers' SDXL encoding; the prompt embeddings repeated per frame, as the motion UNet takes them (it
        repeats the pooled embedding and ``time_ids`` itself)."""
        tensors = self._sdxl_conditioning(self, self.unet, prompt, negative_prompt, device, with_uncond, lora_scale,
                                          clip_skip, prompt_embeds=prompt_embeds,
                                          negative_prompt_embeds=negative_prompt_embeds, **encode_kwargs)
        tensors["prompt_embeds"] = tensors["prompt_embeds"].repeat_interleave(num_frames, dim=0)
        return tensors

    def _video_added_cond(self, tensors):
        return lambda: {"text_embeds": tensors["add_text_embeds"], "time_ids": tensors["add_time_ids"]}

    def _check_image_model(self, prompt) -> None:
        if self.image_text_encoder_2 is not None and prompt is None:
            raise ValueError("the image model encodes `prompt` with its own text encoders: pass `prompt`, not only "
                             "embeddings")

    def _image_predictor(self, *, prompt, negative_prompt, tensors, num_frames, batch_size, with_uncond, device,
                         clip_skip, image_batch_size, cross_attention_kwargs, encode_kwargs, image_embeds, **_):
        """Each frame is an image: the embeddings are already per frame, and the pooled embedding and ``time_ids``
        (one row per video in each half) are repeated per frame. With text encoders of its own the image model
        encodes the prompts once; else it reads the video model's current tensors at every call."""
        dtype = self.image_unet.dtype

        frame_image_embeds = {} if image_embeds is None else {"image_embeds": per_frame_rows(image_embeds, num_frames)}

        def added(current: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            return {"text_embeds": per_frame_rows(current["add_text_embeds"], num_frames).to(dtype),
                    "time_ids": per_frame_rows(current["add_time_ids"], num_frames), **frame_image_embeds}

        if self.image_text_encoder_2 is not None:
            encoder = _SDXLPromptEncoder(self.image_text_encoder, self.image_text_encoder_2, self.image_tokenizer,
                                         self.image_tokenizer_2, self.config.force_zeros_for_empty_prompt)
            own = self._sdxl_conditioning(
                encoder, self.image_unet, prompt, negative_prompt, device, with_uncond, None, clip_skip,
                prompt_2=encode_kwargs.get("prompt_2"), negative_prompt_2=encode_kwargs.get("negative_prompt_2"),
                size_condition=encode_kwargs["size_condition"],
                negative_size_condition=encode_kwargs.get("negative_size_condition"))
            own_embeds, own_added = own["prompt_embeds"].repeat_interleave(num_frames, dim=0).to(dtype), added(own)
            embeds, conditions = (lambda: own_embeds), (lambda: own_added)
        else:
            embeds, conditions = (lambda: tensors["prompt_embeds"].to(dtype)), (lambda: added(tensors))
        return per_frame_predictor(
            guided_predictor(self.image_unet, embeds, with_uncond, added_cond=conditions,
                             max_batch=frames_per_image_call(image_batch_size, batch_size * num_frames),
                             cross_attention_kwargs=cross_attention_kwargs)
        )

    def _decode_latents(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        """diffusers' decoding; an fp16 SDXL VAE (``force_upcast``) decodes in float32, as the stock pipeline does."""
        if self.vae.dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(torch.float32)
            try:
                return self.decode_latents(latents.to(torch.float32))
            finally:
                self.vae.to(torch.float16)
        return self.decode_latents(latents)
