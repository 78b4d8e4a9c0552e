"""Running :func:`ivmixed.sampler.sample_iv_mixed` inside ComfyUI's sampling, as one of its samplers.

The loop is a ComfyUI ``KSAMPLER`` function handed to the video model's ``CFGGuider``: ComfyUI then makes the
noise, loads the model, processes the conditioning and runs AnimateDiff-Evolved's wrappers (which inject the motion
modules) exactly as for its KSampler, and the function gets the guided video model to call. The image model is
prepared the same way by a guider of its own (:class:`ImageModelSession`) whose sampling runs the video model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import comfy.model_management
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from tqdm.auto import tqdm

from ..sampler import sample_iv_mixed
from ..settings import IVMixedSettings, ReferenceCompat
from . import predictors, schedule


@dataclass
class ImageModel:
    """The image model of an IV-mixed run: a ComfyUI MODEL and the conditioning it is guided by."""

    model: Any
    positive: Any
    negative: Any


class ImageModelSession(comfy.samplers.CFGGuider):
    """The image model prepared for sampling by ComfyUI (hooks, loading, processed conditioning) while
    ``body(session)`` runs; its own sampler is never run."""

    def __init__(self, image: ImageModel, body):
        super().__init__(image.model)
        self.set_conds(image.positive, image.negative)
        self.body = body

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        self.conds = comfy.samplers.process_conds(self.inner_model, noise, self.conds, device, latent_image,
                                                  denoise_mask, seed)
        self.sampling_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        self.sampling_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        self.seed = seed
        return self.body(self)

    def predictor(self):
        return predictors.image_predictor(self.inner_model, self.conds, self.sampling_options, self.seed)


@dataclass
class Plan:
    """What the loop runs: the main DDIM scheduler over the video model's schedule, the IV-mixed settings (``None``:
    standard sampling) and, with them, the image model's session."""

    scheduler: Any
    guidance_scale: float
    settings: Optional[IVMixedSettings]
    reference_compat: Optional[ReferenceCompat]
    image: Optional[ImageModelSession] = None


def iv_mixed_function(model_k, x, sigmas, extra_args=None, callback=None, disable=None, plan: Plan = None):
    """A ComfyUI sampler function: ``x`` is the starting latent at ``sigmas[0]`` (ComfyUI's scaling of the noise),
    the result the latent at ``sigmas[-1]`` (0)."""
    extra_args = extra_args or {}
    guider = model_k.inner_model
    model_sampling = guider.inner_model.model_sampling
    record: Dict[str, torch.Tensor] = {}
    video = predictors.video_predictor(model_k, extra_args, model_sampling, record)
    image, image_alphas = None, None
    if plan.image is not None:
        comfy.model_management.load_models_gpu([guider.model_patcher, plan.image.model_patcher])
        image = plan.image.predictor()
        image_alphas = schedule.alphas_cumprod(plan.image.inner_model.model_sampling)

    def step_done(i, t, latents):
        if callback is not None:  # k-diffusion's convention: the step's input and its denoised estimate
            callback({"i": i, "x": record["x"], "denoised": record["denoised"], "sigma": sigmas[i],
                      "sigma_hat": sigmas[i]})

    start = x / predictors.vp_scale(sigmas[0])
    out = sample_iv_mixed(video, image, start, plan.scheduler, plan.guidance_scale, plan.settings,
                          callback=step_done, progress_bar=lambda n: tqdm(total=n, disable=disable),
                          reference_compat=plan.reference_compat, image_alphas_cumprod=image_alphas)
    return out * predictors.vp_scale(sigmas[-1])


def sample(video_model, positive, negative, latent: Dict, seed: int, steps: int, guidance_scale: float,
           settings: Optional[IVMixedSettings] = None, reference_compat: Optional[ReferenceCompat] = None,
           image: Optional[ImageModel] = None) -> torch.Tensor:
    """The sampled latent ``(frames, c, h, w)`` of ``latent`` from ``seed``'s noise (ComfyUI's, as its KSampler
    makes it), IV-mixed with ``settings`` and the ``image`` model, or standard with ``settings=None``."""
    latent_image = comfy.sample.fix_empty_latent_channels(video_model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    model_sampling = video_model.get_model_object("model_sampling")
    plan = Plan(schedule.ddim_scheduler(model_sampling, steps), guidance_scale, settings, reference_compat)
    sigmas = schedule.sigmas_of(model_sampling, plan.scheduler)
    guider = comfy.samplers.CFGGuider(video_model)
    guider.set_conds(positive, negative)
    guider.set_cfg(guidance_scale)
    sampler = comfy.samplers.KSAMPLER(iv_mixed_function, extra_options={"plan": plan})
    callback = latent_preview.prepare_callback(video_model, steps)
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED

    def run_video(session: Optional[ImageModelSession] = None):
        plan.image = session
        return guider.sample(noise, latent_image, sampler, sigmas, callback=callback, disable_pbar=disable_pbar,
                             seed=seed)

    if settings is None or image is None:
        return run_video()
    image_sigmas = schedule.sigmas_of(image.model.get_model_object("model_sampling"), plan.scheduler)
    return ImageModelSession(image, run_video).sample(noise, latent_image, None, image_sigmas, seed=seed)
