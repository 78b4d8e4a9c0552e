"""ComfyUI models as the sampler's noise-prediction callables ``model(x, t, w)``.

The sampler works on variance-preserving latents ``x_t`` at integer timesteps; ComfyUI on ``x_sigma = x_t *
sqrt(1 + sigma_t^2)`` at sigmas, and its guided calls return the denoised estimate ``d``, so that the noise
prediction is ``(x_sigma - d) / sigma``. Each model is called at its own sigma of the timestep. Every call first
asks ComfyUI whether its stop button was pressed, so a stop takes effect at the next model call.
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import comfy.model_management
import comfy.samplers
import torch

from ..sampler import NoisePredictor

# ComfyUI's own guided prediction, taken before any sampling runs: AnimateDiff-Evolved swaps
# comfy.samplers.sampling_function for its own while it samples, which only works for the model it samples.
COMFY_SAMPLING_FUNCTION = comfy.samplers.sampling_function

Denoiser = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _at_sigma(model_sampling, denoise: Denoiser, record: Dict[str, torch.Tensor]) -> NoisePredictor:
    """``denoise(x_sigma, sigma_per_row, w) -> d`` as a noise predictor on ``x_t`` at timestep ``t``."""

    def predict(x: torch.Tensor, t: torch.Tensor, w: float) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma = model_sampling.sigma(t.reshape(1)).to(x.device, torch.float32)
        x_sigma = x * torch.sqrt(1.0 + sigma ** 2)
        denoised = denoise(x_sigma, sigma.expand(x.shape[0]), float(w))
        record["x"], record["denoised"] = x_sigma, denoised
        return ((x_sigma - denoised) / sigma).to(x.dtype)

    return predict


def video_predictor(model_k, extra_args: Dict, model_sampling, record: Dict[str, torch.Tensor]) -> NoisePredictor:
    """The video model as ComfyUI's sampler calls it: ``model_k`` is what a KSAMPLER function receives (the guider
    inside AnimateDiff-Evolved's sampling, so its motion modules and context windows take part); the guidance weight
    ``w`` is the guider's for that call. ``record`` keeps the last call's input and denoised estimate (the
    progress preview)."""
    guider = model_k.inner_model

    def denoise(x_sigma, sigmas, w):
        kept = guider.cfg
        guider.cfg = w
        try:
            return model_k(x_sigma, sigmas, **extra_args)
        finally:
            guider.cfg = kept

    return _at_sigma(model_sampling, denoise, record)


def image_predictor(model, conds: Dict, model_options: Dict, seed=None) -> NoisePredictor:
    """The image model prepared for sampling (``model`` a ComfyUI ``BaseModel``, ``conds`` its processed positive
    and negative conditioning), guided by ComfyUI's own function at weight ``w``."""

    def denoise(x_sigma, sigmas, w):
        return COMFY_SAMPLING_FUNCTION(model, x_sigma, sigmas, conds.get("negative"), conds.get("positive"), w,
                                       model_options=model_options, seed=seed)

    return _at_sigma(model.model_sampling, denoise, {})


def vp_scale(sigma) -> float:
    """``sqrt(1 + sigma^2)``: ComfyUI's latents at ``sigma`` over the variance-preserving ones."""
    return math.sqrt(1.0 + float(sigma) ** 2)
