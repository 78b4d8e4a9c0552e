"""What every IV-mixed pipeline shares: the output type, the image model's per-frame view, call counting,
and the guarded decode."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AnimateDiffVideoToVideoPipeline
from diffusers.utils import BaseOutput
from einops import rearrange

from ..guidance import combine_guidance
from ..sampler import IVMixedSettings, NoisePredictor, ReferenceCompat, image_model_needed, sample_iv_mixed
from ..settings import kept_steps
from .control import ControlConditioning

logger = logging.getLogger(__name__)


class NonFiniteLatentsError(RuntimeError):
    """The sampled latents (or the frames decoded from them) hold NaN or infinite values."""


@dataclass
class IVMixedPipelineOutput(BaseOutput):
    """``frames``: the video (or the latents for ``output_type="latent"``); ``network_calls``: guided
    network evaluations per model (one evaluation covers the unconditional and conditional halves)."""

    frames: Union[torch.Tensor, np.ndarray, List[List[PIL.Image.Image]]]
    network_calls: Dict[str, int]


def check_image_batch_size(image_batch_size: Optional[int]) -> None:
    if image_batch_size is not None and image_batch_size < 1:
        raise ValueError(f"image_batch_size must be at least 1 (or None: all frames in one call), got {image_batch_size}")


def batch_negative_prompts(prompt, negative_prompt):
    """The negative prompts of a call whose ``prompt`` is a list: a list of the same length, where ``None`` (no
    negative prompt, for one video or all) is ``""`` as diffusers encodes a missing one, and one string applies to
    every prompt. Anything else is returned as it is, for diffusers' own checks."""
    if not isinstance(prompt, list):
        return negative_prompt
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * len(prompt)
    if isinstance(negative_prompt, list):
        return ["" if n is None else n for n in negative_prompt]
    return negative_prompt


def check_generators_per_frame(generator, compat: Optional[ReferenceCompat]) -> None:
    """Refuse a list of generators (one per video) when the main scheduler steps per-frame latents: its noise is
    drawn for ``(b f)`` rows, so the list cannot give each video its own seed's noise."""
    if compat is not None and compat.per_frame_main_step and isinstance(generator, list) and len(generator) > 1:
        raise ValueError(
            "reference_compat steps the main scheduler on per-frame latents, where a list of generators cannot give "
            "each video its own seed's noise: sample one video per call (one generator), or pass "
            "reference_compat=False"
        )


def guided_predictor(
    unet: torch.nn.Module,
    encoder_hidden_states: Union[torch.Tensor, Callable[[], torch.Tensor]],
    with_uncond: bool,
    max_batch: Optional[int] = None,
    added_cond: Optional[Callable[[], Dict[str, torch.Tensor]]] = None,
    residuals: Optional[Callable] = None,
    **unet_kwargs,
) -> NoisePredictor:
    """``(x, t, w) -> eps_w``: one batched call over ``[x, x]`` with ``[uncond; cond]`` embeddings.

    ``encoder_hidden_states`` may be a callable returning the current embeddings, read at every call, so that a
    step callback can replace them; so is ``added_cond``, the UNet's ``added_cond_kwargs`` (SDXL's pooled
    embedding and size conditioning), whose tensors have one row per row of the embeddings, in the same
    ``[uncond; cond]`` layout. ``max_batch`` caps the samples of ``x`` per network call (each call still carries
    both halves, so it runs ``2 * max_batch`` rows): it bounds activation memory at the cost of more, smaller calls.
    ``residuals(model_input, t, embeds, part, halves)`` gives extra UNet keywords computed from each call's own
    input (ControlNet residuals; ``part``: the rows of ``x`` the call covers).
    """
    embeddings = encoder_hidden_states if callable(encoder_hidden_states) else lambda: encoder_hidden_states

    def call(x: torch.Tensor, t, w: float, embeds: torch.Tensor, added: Optional[Dict],
             part: slice = slice(None)) -> torch.Tensor:
        model_input = torch.cat([x, x]) if with_uncond else x
        extra = unet_kwargs if added is None else {**unet_kwargs, "added_cond_kwargs": added}
        if residuals is not None:
            extra = {**extra, **residuals(model_input, t, embeds, part, 2 if with_uncond else 1)}
        eps = unet(model_input, t, encoder_hidden_states=embeds, **extra).sample
        if not with_uncond:
            return eps
        uncond, cond = eps.chunk(2)
        return combine_guidance(uncond, cond, w)

    def rows(value, part: slice):
        if isinstance(value, (list, tuple)):  # IP-Adapter image embeddings: one tensor per adapter
            return [rows(v, part) for v in value]
        halves = value.chunk(2) if with_uncond else (value,)
        return torch.cat([h[part] for h in halves])

    def predict(x: torch.Tensor, t, w: float) -> torch.Tensor:
        embeds, n = embeddings(), x.shape[0]
        added = added_cond() if added_cond is not None else None
        if max_batch is None or n <= max_batch:
            return call(x, t, w, embeds, added)
        parts = []
        for start in range(0, n, max_batch):
            part = slice(start, start + max_batch)
            parts.append(call(x[part], t, w, rows(embeds, part),
                              None if added is None else {k: rows(v, part) for k, v in added.items()}, part))
        return torch.cat(parts)

    return predict


def per_frame_rows(value, num_frames: int):
    """Rows of one per video (in each ``[uncond; cond]`` half) repeated for each frame, ``(b f)`` as the per-frame
    view lays out the frames; a list (IP-Adapter embeddings, one tensor per adapter) element by element."""
    if isinstance(value, (list, tuple)):
        return [per_frame_rows(v, num_frames) for v in value]
    return value.repeat_interleave(num_frames, dim=0)


def per_frame_predictor(image_predictor: NoisePredictor, sample_size: Optional[int] = None) -> NoisePredictor:
    """Lift an image-model predictor to video latents ``(b, c, f, h, w)``: every frame is its own image.

    With ``sample_size`` set and different from the latents' size, frames are resized (nearest) to the
    image model's native size for the prediction and the prediction is resized back.
    """

    def predict(x: torch.Tensor, t, w: float) -> torch.Tensor:
        b, _, f, h, w_ = x.shape
        images = rearrange(x, "b c f h w -> (b f) c h w")
        resize = sample_size is not None and (h, w_) != (sample_size, sample_size)
        if resize:
            images = F.interpolate(images, size=(sample_size, sample_size), mode="nearest")
        eps = image_predictor(images, t, w)
        if resize:
            eps = F.interpolate(eps, size=(h, w_), mode="nearest")
        return rearrange(eps, "(b f) c h w -> b c f h w", b=b, f=f)

    return predict


def counted(predictor: NoisePredictor, counts: Dict[str, int], key: str) -> NoisePredictor:
    """Wrap ``predictor`` so that every guided evaluation adds one to ``counts[key]``."""

    def predict(x, t, w):
        counts[key] += 1
        return predictor(x, t, w)

    return predict


def decode_guarded(vae: torch.nn.Module, latents: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``decode(latents)`` with checks that turn silent NaN videos into an error that says what to try.

    Non-finite latents fail before any decoding. A half-precision VAE (fp16 overflows in its upsampling
    blocks on some latents) that decodes to non-finite pixels gets one retry in float32, after which it is
    put back in its own dtype; non-finite pixels after that fail too.
    """
    advice = ("try --dtype fp32 (float32 networks), fewer inference steps, or lower guidance "
              "(--guidance-scale, --i_sigma_*/--v_sigma_*)")
    if not torch.isfinite(latents).all():
        raise NonFiniteLatentsError(f"the sampled latents contain NaN or infinite values, so there is nothing to decode; {advice}")
    frames = decode(latents)
    if torch.isfinite(frames).all():
        return frames
    dtype = vae.dtype
    if dtype != torch.float32:
        logger.warning("the VAE decoded non-finite pixels in %s; decoding again in float32", dtype)
        vae.to(torch.float32)
        try:
            frames = decode(latents.float())
        finally:
            vae.to(dtype)
        if torch.isfinite(frames).all():
            return frames
    raise NonFiniteLatentsError(f"the VAE decoded NaN or infinite pixels (VAE dtype {dtype}, also tried float32); {advice}")


class IVMixedSamplingMixin:
    """The body every IV-mixed pipeline call shares: check, encode, prepare latents, sample, decode.

    Each pipeline keeps its own documented ``__call__`` signature, passes its arguments to :meth:`_generate` and
    supplies the hooks where the video models differ: how the video UNet takes prompt embeddings, how the image
    model is conditioned, and decoding.
    """

    default_zz = IVMixedSettings.zz
    # Video-to-video: diffusers' AnimateDiff video-to-video encoding (every VAE here encodes frame by frame).
    encode_video = AnimateDiffVideoToVideoPipeline.encode_video
    # The published code's deviations from docs/ALGORITHM.md that ``reference_compat=True`` reproduces.
    reference_compat_options = ReferenceCompat()
    # Pixel size when the UNet's config has no sample_size.
    fallback_height = 256
    fallback_width = 256

    def _default_size(self):
        sample_size = self.unet.config.sample_size
        if sample_size is None:
            return self.fallback_height, self.fallback_width
        return sample_size * self.vae_scale_factor, sample_size * self.vae_scale_factor

    def _iv_mixed_settings(self, iv_mixed: bool, interval_begin: int, interval_end: Optional[int], zz: Optional[int],
                           i_sigma_begin: float, i_sigma_end: float, v_sigma_begin: float, v_sigma_end: float,
                           rho: float) -> Optional[IVMixedSettings]:
        """The sampler settings of a call (``zz=None``: the pipeline's preset); ``None`` for standard sampling."""
        if not iv_mixed:
            return None
        zz = self.default_zz if zz is None else zz
        return IVMixedSettings(interval_begin, interval_end, zz, i_sigma_begin, i_sigma_end, v_sigma_begin, v_sigma_end,
                               rho)

    def _reference_compat(self) -> ReferenceCompat:
        """:attr:`reference_compat_options` completed with what only the loaded components tell."""
        return self.reference_compat_options

    def _video_embeds(self, embeds: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The ``[uncond; cond]`` embeddings laid out as the video UNet takes them."""
        return embeds

    def _check_call_inputs(self, prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                           callback_on_step_end_tensor_inputs, **encode_kwargs) -> None:
        """diffusers' ``check_inputs`` of the pipeline (Stable Diffusion's signature here)."""
        self.check_inputs(
            prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
            None, None, callback_on_step_end_tensor_inputs,
        )

    def _encode_video_prompt(self, prompt, negative_prompt, num_frames, device, with_uncond, prompt_embeds,
                             negative_prompt_embeds, lora_scale, clip_skip, **encode_kwargs) -> Dict[str, torch.Tensor]:
        """Encode the prompts into the tensors a step callback may read and replace, by their diffusers names:
        ``prompt_embeds`` are the ``[uncond; cond]`` embeddings (just ``cond`` without ``with_uncond``) laid out as
        the video UNet takes them, and ``negative_prompt_embeds`` the encoded negative prompt. ``encode_kwargs``
        are the pipeline's own encoding inputs (see :meth:`_generate`)."""
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, 1, with_uncond, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale, clip_skip=clip_skip,
        )
        if with_uncond:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        return {"prompt_embeds": self._video_embeds(prompt_embeds, num_frames),
                "negative_prompt_embeds": negative_prompt_embeds}

    def _video_added_cond(self, tensors: Dict[str, torch.Tensor]) -> Optional[Callable[[], Dict[str, torch.Tensor]]]:
        """The video UNet's ``added_cond_kwargs`` from the current ``tensors``, read at every call (None: none)."""
        return None

    def _image_predictor(self, *, prompt, negative_prompt, video_embeds, tensors, num_frames, batch_size, with_uncond,
                         device, clip_skip, image_batch_size, cross_attention_kwargs, encode_kwargs,
                         image_embeds, residuals) -> NoisePredictor:
        """The image model's guided predictor over video latents ``(batch_size, c, num_frames, h, w)``, whose rows
        are ``(b f)``: video 0's frames, then video 1's; ``video_embeds()`` returns the video model's current
        embeddings, and ``tensors`` holds every current tensor of :meth:`_encode_video_prompt`. ``image_embeds``:
        the IP-Adapter image embeddings the video UNet gets (one row per video in each half), or None;
        ``residuals``: the ControlNet keywords of each call (see :func:`guided_predictor`), or None."""
        raise NotImplementedError

    def _check_image_model(self, prompt) -> None:
        """Raise ``ValueError`` when a run that uses the image model cannot (missing parts, no prompt text)."""

    def _decode_latents(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        return self.decode_latents(latents)

    def _generate(
        self, *, prompt, num_frames, height, width, num_inference_steps, guidance_scale, negative_prompt, eta,
        generator, latents, prompt_embeds, negative_prompt_embeds, output_type, return_dict, cross_attention_kwargs,
        clip_skip, callback_on_step_end, callback_on_step_end_tensor_inputs, settings: Optional[IVMixedSettings],
        image_batch_size, reference_compat: bool = False, decode_chunk_size=16,
        video_unet_kwargs: Optional[Dict] = None, encode_kwargs: Optional[Dict] = None, video=None,
        strength: float = 1.0, ip_adapter_image=None, ip_adapter_image_embeds=None, conditioning_frames=None,
        controlnet_conditioning_scale=1.0, control_guidance_start=0.0, control_guidance_end=1.0,
    ):
        """The shared call body; ``encode_kwargs`` are a pipeline's own prompt inputs (SDXL's second prompts, pooled
        embeddings and size conditioning), handed to :meth:`_check_call_inputs` and :meth:`_encode_video_prompt`.

        ``video`` (frames, or one list of frames per video) makes it video-to-video: the frames are encoded, noised
        to the first of the last ``int(num_inference_steps * strength)`` main steps, and sampled from there (see
        :func:`kept_steps`); ``num_frames`` is then the video's. ``ip_adapter_image``/``ip_adapter_image_embeds``
        are diffusers' IP-Adapter inputs, given to the video UNet and, per frame, to the image UNet.
        ``conditioning_frames`` (one list of frames per ControlNet of ``self.controlnet``) with
        ``controlnet_conditioning_scale`` and ``control_guidance_start/end``: ControlNet residuals for every
        guided call of both UNets (see :mod:`ivmixed.pipelines.control`)."""
        encode_kwargs = encode_kwargs or {}
        default_height, default_width = self._default_size()
        height, width = height or default_height, width or default_width
        start = 0
        if video is not None:
            start = num_inference_steps - kept_steps(num_inference_steps, strength)
            if latents is None:
                video = self.video_processor.preprocess_video(video, height=height, width=width)
                num_frames = video.shape[2]
            else:
                num_frames = latents.shape[2]
        steps_run = num_inference_steps - start
        negative_prompt = batch_negative_prompts(prompt, negative_prompt)
        self._check_call_inputs(prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                callback_on_step_end_tensor_inputs, **encode_kwargs)
        check_image_batch_size(image_batch_size)
        compat = self._reference_compat() if reference_compat else None
        if reference_compat and compat is None:
            raise ValueError(f"reference_compat reproduces the published IV-mixed code, which has no "
                             f"{type(self).__name__.removeprefix('IVMixed').removesuffix('Pipeline')} pipeline; "
                             "pass reference_compat=False")
        if settings is not None:
            settings = settings.resolved(steps_run)
            if compat is not None:
                compat.check(steps_run)
        check_generators_per_frame(generator, compat)
        with_image_model = settings is not None and image_model_needed(settings, compat)
        if with_image_model:
            self._check_image_model(prompt)
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        if isinstance(prompt, (str, dict)):  # a dict is one video's prompt schedule {frame: prompt}
            batch_size = 1
        elif isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self._execution_device

        # The zigzag's negative-guidance inversions need the unconditional half even when guidance_scale <= 1.
        # The published code instead switched classifier-free guidance off entirely there (as diffusers does,
        # guidance_scale > 1), zigzag included: every prediction is the conditional one, made without the
        # unconditional half.
        with_uncond = guidance_scale > 1.0 or (settings is not None and compat is None)
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs else None
        # The tensors a step callback may read and replace, as in diffusers' loops: ``prompt_embeds`` are the video
        # UNet's (and, where it shares them, the image UNet's) ``[uncond; cond]`` embeddings.
        tensors = self._encode_video_prompt(
            prompt, negative_prompt, num_frames, device, with_uncond, prompt_embeds, negative_prompt_embeds,
            lora_scale, clip_skip, **encode_kwargs,
        )

        image_embeds = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            image_embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device,
                                                                batch_size, with_uncond)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = steps_run
        dtype = tensors["prompt_embeds"].dtype
        if video is None:
            latents = self.prepare_latents(
                batch_size, self.unet.config.in_channels, num_frames, height, width, dtype, device, generator, latents,
            )
        else:
            if latents is None:
                video = video.permute(0, 2, 1, 3, 4).to(device=device, dtype=dtype)  # (b, f, c, h, w)
                if video.shape[0] == 1 and batch_size > 1:  # one video for every prompt of the call
                    video = video.expand(batch_size, *video.shape[1:])
            latents = AnimateDiffVideoToVideoPipeline.prepare_latents(
                self, video=video, height=height, width=width, num_channels_latents=self.unet.config.in_channels,
                batch_size=batch_size, timestep=self.scheduler.timesteps[start:start + 1].repeat(batch_size),
                dtype=dtype, device=device, generator=generator, latents=latents, decode_chunk_size=decode_chunk_size,
            )

        counts = {"video": 0, "image": 0}
        control = None
        if conditioning_frames is not None:
            if getattr(self, "controlnet", None) is None:
                raise ValueError("conditioning_frames need a ControlNet: load one into the pipeline's `controlnet`")
            control = ControlConditioning(
                self.controlnet, conditioning_frames, num_frames=num_frames, batch_size=batch_size, height=height,
                width=width, vae_scale_factor=self.vae_scale_factor, device=device, steps=steps_run,
                scale=controlnet_conditioning_scale, start=control_guidance_start, end=control_guidance_end,
                counts=counts)
        video_added = self._video_added_cond(tensors)
        if image_embeds is not None:
            pipeline_added = video_added
            video_added = lambda: {**(pipeline_added() if pipeline_added else {}), "image_embeds": image_embeds}  # noqa: E731
        video_predictor = counted(guided_predictor(
            self.unet, lambda: tensors["prompt_embeds"], with_uncond, added_cond=video_added,
            residuals=None if control is None else control.residuals("video"),
            cross_attention_kwargs=cross_attention_kwargs, **(video_unet_kwargs or {}),
        ), counts, "video")
        image_predictor = None
        if with_image_model:
            image_predictor = counted(self._image_predictor(
                prompt=prompt, negative_prompt=negative_prompt, video_embeds=lambda: tensors["prompt_embeds"], tensors=tensors,
                num_frames=num_frames, batch_size=batch_size, with_uncond=with_uncond, device=device,
                clip_skip=clip_skip, image_batch_size=image_batch_size, cross_attention_kwargs=cross_attention_kwargs,
                encode_kwargs=encode_kwargs, image_embeds=image_embeds,
                residuals=None if control is None else control.residuals("image"),
            ), counts, "image")

        def on_step_end(i, t, x):
            if callback_on_step_end is None:
                return None
            tensors["latents"] = x
            outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
            tensors.update({k: v for k, v in (outputs or {}).items() if k in self._callback_tensor_inputs})
            return tensors["latents"]

        latents = sample_iv_mixed(
            video_predictor, image_predictor, latents, self.scheduler, guidance_scale, settings,
            step_kwargs=self.prepare_extra_step_kwargs(generator, eta), callback=on_step_end,
            progress_bar=lambda total: self.progress_bar(total=total), should_stop=lambda: self.interrupt,
            reference_compat=compat, start=start, step_started=None if control is None else control.step_started,
        )

        if output_type == "latent":
            video = latents
        else:
            frames = decode_guarded(self.vae, latents, lambda z: self._decode_latents(z, decode_chunk_size))
            video = self.video_processor.postprocess_video(video=frames, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video, counts)
        return IVMixedPipelineOutput(frames=video, network_calls=counts)
