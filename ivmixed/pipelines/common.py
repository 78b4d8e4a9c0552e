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
from diffusers.utils import BaseOutput
from einops import rearrange

from ..guidance import combine_guidance
from ..sampler import IVMixedSettings, NoisePredictor, sample_iv_mixed

logger = logging.getLogger(__name__)


class NonFiniteLatentsError(RuntimeError):
    """The sampled latents (or the frames decoded from them) hold NaN or infinite values."""


@dataclass
class IVMixedPipelineOutput(BaseOutput):
    """``frames``: the video (or the latents for ``output_type="latent"``); ``network_calls``: guided
    network evaluations per model (one evaluation covers the unconditional and conditional halves)."""

    frames: Union[torch.Tensor, np.ndarray, List[List[PIL.Image.Image]]]
    network_calls: Dict[str, int]


def iv_mixed_settings(
    iv_mixed: bool,
    interval_begin: int,
    interval_end: Optional[int],
    zz: int,
    i_sigma_begin: float,
    i_sigma_end: float,
    v_sigma_begin: float,
    v_sigma_end: float,
    rho: float,
    num_inference_steps: int,
) -> Optional[IVMixedSettings]:
    """The sampler settings for a pipeline call, validated before any work; ``None`` for standard sampling."""
    if not iv_mixed:
        return None
    settings = IVMixedSettings(interval_begin, interval_end, zz, i_sigma_begin, i_sigma_end, v_sigma_begin, v_sigma_end, rho)
    return settings.resolved(num_inference_steps)


def check_image_batch_size(image_batch_size: Optional[int]) -> None:
    if image_batch_size is not None and image_batch_size < 1:
        raise ValueError(f"image_batch_size must be at least 1 (or None: all frames in one call), got {image_batch_size}")


def guided_predictor(
    unet: torch.nn.Module,
    encoder_hidden_states: torch.Tensor,
    with_uncond: bool,
    max_batch: Optional[int] = None,
    **unet_kwargs,
) -> NoisePredictor:
    """``(x, t, w) -> eps_w``: one batched call over ``[x, x]`` with ``[uncond; cond]`` embeddings.

    ``max_batch`` caps the samples of ``x`` per network call (each call still carries both halves, so it runs
    ``2 * max_batch`` rows): it bounds activation memory at the cost of more, smaller calls.
    """
    halves = encoder_hidden_states.chunk(2) if with_uncond else (encoder_hidden_states,)

    def call(x: torch.Tensor, t, w: float, embeds: torch.Tensor) -> torch.Tensor:
        model_input = torch.cat([x, x]) if with_uncond else x
        eps = unet(model_input, t, encoder_hidden_states=embeds, **unet_kwargs).sample
        if not with_uncond:
            return eps
        uncond, cond = eps.chunk(2)
        return combine_guidance(uncond, cond, w)

    def predict(x: torch.Tensor, t, w: float) -> torch.Tensor:
        n = x.shape[0]
        if max_batch is None or n <= max_batch:
            return call(x, t, w, encoder_hidden_states)
        parts = []
        for start in range(0, n, max_batch):
            rows = slice(start, start + max_batch)
            parts.append(call(x[rows], t, w, torch.cat([h[rows] for h in halves])))
        return torch.cat(parts)

    return predict


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


def run_sampler(
    pipeline,
    video_predictor: NoisePredictor,
    image_predictor: Optional[NoisePredictor],
    latents: torch.Tensor,
    guidance_scale: float,
    settings: Optional[IVMixedSettings],
    step_kwargs: Dict,
    callback_on_step_end: Optional[Callable] = None,
):
    """Drive :func:`sample_iv_mixed` with the pipeline's progress bar and diffusers-style step callback."""
    counts = {"video": 0, "image": 0}

    def callback(i, t, x):
        if callback_on_step_end is None:
            return None
        outputs = callback_on_step_end(pipeline, i, t, {"latents": x})
        return outputs.get("latents") if outputs else None

    latents = sample_iv_mixed(
        counted(video_predictor, counts, "video"),
        counted(image_predictor, counts, "image") if image_predictor is not None else None,
        latents,
        pipeline.scheduler,
        guidance_scale,
        settings,
        step_kwargs=step_kwargs,
        callback=callback,
        progress_bar=lambda total: pipeline.progress_bar(total=total),
    )
    return latents, counts


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
