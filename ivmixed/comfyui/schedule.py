"""A ComfyUI model's noise schedule in the terms of the sampler: a cumulative alpha per training timestep, and a
DDIM scheduler over them for the main steps.

ComfyUI keeps a model's schedule as sigmas (``model_sampling``): ``sigma_t = sqrt((1 - abar_t) / abar_t)``, so
``abar_t = 1 / (1 + sigma_t^2)``. AnimateDiff-Evolved gives AnimateDiff models their own (``sqrt_linear``), so the
video and the image model may differ, and each is read from its model.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler


def alphas_cumprod(model_sampling) -> torch.Tensor:
    """``abar_t`` (float64) at every training timestep ``t``, from the sigma the model is called with at ``t``."""
    total = len(model_sampling.sigmas)
    sigmas = model_sampling.sigma(torch.arange(total, dtype=torch.float32)).double().cpu()
    return 1.0 / (1.0 + sigmas ** 2)


def ddim_scheduler(model_sampling, steps: int) -> DDIMScheduler:
    """Deterministic DDIM over the model's own schedule on every ``T // steps``-th timestep from 1 (diffusers'
    leading spacing with offset 1, SD's), down to noise 0. ComfyUI's ``ddim_uniform`` scheduler picks the same
    timesteps where ``T // steps`` leaves no room for one more (4, 10, 20, 25 or 50 steps of 1000, say)."""
    abar = alphas_cumprod(model_sampling)
    if not 1 <= steps <= len(abar):
        raise ValueError(f"steps must be from 1 to {len(abar)} (the model's training timesteps), got {steps}")
    scheduler = DDIMScheduler(num_train_timesteps=len(abar), clip_sample=False, set_alpha_to_one=True,
                              steps_offset=1, timestep_spacing="leading")
    scheduler.alphas_cumprod = abar.float()
    scheduler.set_timesteps(steps)
    return scheduler


def sigmas_of(model_sampling, scheduler: DDIMScheduler) -> torch.Tensor:
    """The ComfyUI sigmas of ``scheduler``'s timesteps, then 0: what ComfyUI's samplers step through."""
    sigmas = model_sampling.sigma(scheduler.timesteps.float()).float().cpu()
    return torch.cat([sigmas, sigmas.new_zeros(1)])
