"""The pack's nodes: the IV-mixed sampler and the standard sampler of the same noise, for comparison.

Their knobs are the command line's settings, by name: defaults, checks and help come from
:class:`ivmixed.settings.IVMixedSettings` and :data:`ivmixed.config.SETTINGS` (the tooltips add which way each knob
moves frame quality against temporal coherence, as the web app says). Values ComfyUI's widgets hold are checked
when the workflow is queued, before any model loads; a refusal is one line, shown by ComfyUI's error dialog.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Dict, Optional, Tuple

from ..app.fields import knob_info
from ..config import SETTINGS
from ..errors import SettingError
from ..prompts import SEED_LIMIT
from ..registry import ANIMATEDIFF
from ..settings import IVMixedSettings
from . import sampling

CATEGORY = "sampling/ivmixed"
KNOBS = tuple(f.name for f in fields(IVMixedSettings))
LAST_STEP = -1  # interval_end's widget value for "the last step" (the command line's default, no value)
# The published AnimateDiff code's deviations, for reference_compat (the command line's, for Animatediff).
REFERENCE_COMPAT = ANIMATEDIFF.reference_compat


def _tooltip(name: str) -> str:
    return knob_info(name, str)


def _run_inputs() -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """The inputs every sampler node takes besides models and conditioning: seed, steps, guidance."""
    return {
        "latent_image": ("LATENT", {"tooltip": "The latent of the video: one image per frame (an Empty Latent "
                                               "Image with batch_size = frames)."}),
        "seed": ("INT", {"default": SETTINGS["seed"].default, "min": 0, "max": SEED_LIMIT - 1,
                         "control_after_generate": True, "tooltip": _tooltip("seed")}),
        "steps": ("INT", {"default": SETTINGS["inference_step"].default, "min": 1, "max": 1000,
                          "tooltip": _tooltip("inference_step") + " The main steps are DDIM over the video "
                                     "model's noise schedule."}),
        "guidance_scale": ("FLOAT", {"default": ANIMATEDIFF.defaults["guidance_scale"], "min": 0.0, "max": 100.0,
                                     "step": 0.1, "round": 0.01, "tooltip": _tooltip("guidance_scale")}),
    }


def _knob_inputs() -> Dict[str, Tuple[str, Dict[str, Any]]]:
    inputs: Dict[str, Tuple[str, Dict[str, Any]]] = {}
    for name in KNOBS:
        default = SETTINGS[name].default
        if name == "interval_end":
            inputs[name] = ("INT", {"default": LAST_STEP, "min": LAST_STEP, "max": 999,
                                    "tooltip": _tooltip(name) + f" {LAST_STEP}: the last step."})
        elif name in ("interval_begin", "zz"):
            inputs[name] = ("INT", {"default": default, "min": 0 if name == "interval_begin" else 1,
                                    "max": 999 if name == "interval_begin" else 1000000, "tooltip": _tooltip(name)})
        else:
            inputs[name] = ("FLOAT", {"default": default, "min": 0.0 if name != "rho" else 0.01, "max": 100.0,
                                      "step": 0.1, "round": 0.001, "tooltip": _tooltip(name)})
    inputs["reference_compat"] = ("BOOLEAN", {"default": SETTINGS["reference_compat"].default,
                                              "tooltip": _tooltip("reference_compat")})
    return inputs


def iv_mixed_settings(interval_begin: int, interval_end: int, zz: int, i_sigma_begin: float, i_sigma_end: float,
                      v_sigma_begin: float, v_sigma_end: float, rho: float) -> IVMixedSettings:
    """The node's knob values as the sampler's settings (``interval_end`` -1: the last step)."""
    return IVMixedSettings(interval_begin, None if interval_end == LAST_STEP else interval_end, zz, i_sigma_begin,
                           i_sigma_end, v_sigma_begin, v_sigma_end, rho)


def check_run(steps: Optional[int], guidance_scale: Optional[float], seed: Optional[int]) -> None:
    """One :class:`SettingError` for a seed, step count or guidance the command line would refuse."""
    for name, value in (("seed", seed), ("inference_step", steps), ("guidance_scale", guidance_scale)):
        problem = None if value is None else SETTINGS[name].check(value)
        if problem:
            raise SettingError(f"{{{'steps' if name == 'inference_step' else name}}} {problem}")


def check_knobs(steps: int, knobs: Dict[str, Any], reference_compat: bool) -> IVMixedSettings:
    """The settings of ``knobs`` checked for ``steps`` as the command line checks them."""
    settings = iv_mixed_settings(**knobs)
    settings.check(steps)
    if reference_compat:
        REFERENCE_COMPAT.check(steps)
    return settings


def _validation(check) -> Any:
    """``True``, or the one line of the :class:`SettingError` ``check()`` raises (ComfyUI's validation answer)."""
    try:
        check()
    except SettingError as error:
        return error.render()
    return True


def check_models(video_model, image_model) -> None:
    """Refuse an image model ComfyUI cannot run beside this video model."""
    if video_model.is_clone(image_model):  # the same object, or a clone sharing its weights
        raise ValueError("the image model is the video model's own (one loaded checkpoint): AnimateDiff's motion "
                         "modules would change its predictions; load the image model with its own checkpoint loader")
    video_family = type(video_model.model.latent_format).__name__
    image_family = type(image_model.model.latent_format).__name__
    if video_family != image_family:
        raise ValueError(f"the image model is {image_family} but the video model is {video_family}: IV-mixed "
                         f"sampling needs an image model of the video model's family ({video_family})")


def _check_latent(latent: Dict) -> None:
    if "noise_mask" in latent:
        raise ValueError("the latent has a noise mask (inpainting), which IV-mixed sampling does not take; "
                         "use a latent without a mask")


VIDEO_MODEL = ("MODEL", {"tooltip": "The video model: an SD 1.5 checkpoint with AnimateDiff-Evolved's motion model "
                                   "applied."})


class _SamplerNode:
    """What both nodes are to ComfyUI: a sampler that returns one LATENT."""

    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)


class IVMixedSampler(_SamplerNode):
    """IV-mixed sampling: the video model samples, and before each step in the interval an image model (any SD 1.5
    checkpoint) and the video model make a zigzag of DDIM moves that lifts every frame's quality."""

    DESCRIPTION = __doc__
    OUTPUT_TOOLTIPS = ("The IV-mixed latent of the video, for VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "video_model": VIDEO_MODEL,
            "image_model": ("MODEL", {"tooltip": "The image model: an SD 1.5 checkpoint loaded by a loader of its "
                                                 "own (not the video model's)."}),
            "video_positive": ("CONDITIONING", {"tooltip": "The prompt, for the video model."}),
            "video_negative": ("CONDITIONING", {"tooltip": "The negative prompt, for the video model."}),
            "image_positive": ("CONDITIONING", {"tooltip": "The prompt, for the image model (encoded by its own "
                                                           "CLIP where it has one)."}),
            "image_negative": ("CONDITIONING", {"tooltip": "The negative prompt, for the image model."}),
        }
        required.update(_run_inputs())
        required.update(_knob_inputs())
        return {"required": required}

    @classmethod
    def VALIDATE_INPUTS(cls, seed=None, steps=None, guidance_scale=None, interval_begin=None, interval_end=None,
                        zz=None, i_sigma_begin=None, i_sigma_end=None, v_sigma_begin=None, v_sigma_end=None,
                        rho=None, reference_compat=None):
        knobs = dict(interval_begin=interval_begin, interval_end=interval_end, zz=zz, i_sigma_begin=i_sigma_begin,
                     i_sigma_end=i_sigma_end, v_sigma_begin=v_sigma_begin, v_sigma_end=v_sigma_end, rho=rho)

        def check():
            check_run(steps, guidance_scale, seed)
            if steps is not None and None not in knobs.values():  # a linked input is checked when the node runs
                check_knobs(steps, knobs, bool(reference_compat))

        return _validation(check)

    def sample(self, video_model, image_model, video_positive, video_negative, image_positive, image_negative,
               latent_image, seed, steps, guidance_scale, reference_compat, **knobs):
        check_run(steps, guidance_scale, seed)
        settings = check_knobs(steps, knobs, reference_compat)
        check_models(video_model, image_model)
        _check_latent(latent_image)
        samples = sampling.sample(video_model, video_positive, video_negative, latent_image, seed, steps,
                                  guidance_scale, settings, REFERENCE_COMPAT if reference_compat else None,
                                  sampling.ImageModel(image_model, image_positive, image_negative))
        return ({**latent_image, "samples": samples},)


class IVMixedStandardSampler(_SamplerNode):
    """The standard sample of the same noise: the video model alone, with the IV-mixed sampler's main steps (DDIM
    over the video model's schedule), to compare with the IV-mixed latent of the same seed."""

    DESCRIPTION = __doc__
    OUTPUT_TOOLTIPS = ("The standard latent of the video, for VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "video_model": VIDEO_MODEL,
            "video_positive": ("CONDITIONING", {"tooltip": "The prompt."}),
            "video_negative": ("CONDITIONING", {"tooltip": "The negative prompt."}),
        }
        required.update(_run_inputs())
        return {"required": required}

    @classmethod
    def VALIDATE_INPUTS(cls, seed=None, steps=None, guidance_scale=None):
        return _validation(lambda: check_run(steps, guidance_scale, seed))

    def sample(self, video_model, video_positive, video_negative, latent_image, seed, steps, guidance_scale):
        check_run(steps, guidance_scale, seed)
        _check_latent(latent_image)
        samples = sampling.sample(video_model, video_positive, video_negative, latent_image, seed, steps,
                                  guidance_scale)
        return ({**latent_image, "samples": samples},)


NODE_CLASS_MAPPINGS = {"IVMixedSampler": IVMixedSampler, "IVMixedStandardSampler": IVMixedStandardSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"IVMixedSampler": "IV-mixed Sampler",
                              "IVMixedStandardSampler": "Standard Sampler (IV-mixed's noise)"}
