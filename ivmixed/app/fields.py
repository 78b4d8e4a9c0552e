"""What the page's fields are called and what they mean: the label of every setting (errors name settings by it),
the help sentence of each IV-mixed knob and which way it moves frame quality against temporal coherence, and the
named starting points. The page lays these out and the request logic words its errors with them, so they live
apart from both.
"""

from typing import Any, Dict

from ..config import SETTINGS
from ..errors import SettingError
from ..flags import flag

# What each field of the page is called; errors name settings by these labels.
LABELS: Dict[str, str] = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "pipeline": "Pipeline",
    "seed": "Seed",
    "inference_step": "Steps",
    "num_frames": "Frames",
    "height": "Height",
    "width": "Width",
    "guidance_scale": "Guidance",
    "interval_begin": "Interval begin",
    "interval_end": "Interval end",
    "zz": "zz",
    "i_sigma_begin": "Image guidance begin",
    "i_sigma_end": "Image guidance end",
    "v_sigma_begin": "Video guidance begin",
    "v_sigma_end": "Video guidance end",
    "rho": "rho",
    "reference_compat": "Reference compatibility",
    "lora": "LoRA",
    "lora_scale": "LoRA strength",
    "lora_target": "LoRA goes into",
    "video_model": "Video model",
    "motion_adapter": "Motion adapter",
    "unet": "VideoCrafter2 UNet",
    "image_model": "Image model",
    "video_model_config": "Video model config",
    "image_model_config": "Image model config",
    "vae": "VAE",
    "motion_lora": "Motion LoRAs",
    "scheduler": "Sampler",
    "timestep_spacing": "Timestep spacing",
    "beta_schedule": "Noise schedule",
}
# The page's model and sampler fields, in order; blank means the pipeline's own.
MODEL_FIELDS = ("video_model", "motion_adapter", "unet", "image_model", "video_model_config", "image_model_config",
                "vae", "motion_lora", "scheduler", "timestep_spacing", "beta_schedule")
PIPELINE_OWN = "pipeline's own"

# Which way each knob moves frame quality against temporal coherence (its help text says what it is).
DIRECTIONS: Dict[str, str] = {
    "interval_begin": "A later first step leaves the early layout to the video model alone (favours coherence); "
                      "0 lets the zigzag shape it from the start (favours detail).",
    "interval_end": "An earlier last step lets the video model alone finish the motion (favours coherence); empty "
                    "(the last step) refines texture to the end (favours detail).",
    "zz": "Lower favours coherence, higher favours detail.",
    "i_sigma_begin": "Higher pulls the early frames harder toward the image model (favours detail); lower keeps "
                     "them closer to the video model (favours coherence).",
    "i_sigma_end": "Higher pulls the late frames harder toward the image model (favours detail); lower keeps "
                   "them closer to the video model (favours coherence).",
    "v_sigma_begin": "Higher gives the video model's moves more weight in the early zigzags (favours coherence); "
                     "lower leaves more to the image model (favours detail).",
    "v_sigma_end": "Higher gives the video model's moves more weight in the late zigzags (favours coherence); "
                   "lower leaves more to the image model (favours detail).",
    "rho": "Matters only when a begin and end differ: larger keeps each weight near the lower of its two values "
           "for more of the steps.",
    "reference_compat": "Neither way on quality against coherence: it is for comparing with the published "
                        "results.",
}

# Named starting points for the IV-mixed knobs; ``interval_end`` as a fraction of the last step (None: the last).
PRESETS: Dict[str, Dict[str, Any]] = {
    "Favour coherence": {"interval_begin": 0, "interval_end": 0.4, "zz": 2, "i_sigma_begin": 4.0,
                         "i_sigma_end": 2.0, "v_sigma_begin": 4.0, "v_sigma_end": 4.0, "rho": 7.0},
    "Balanced": {"interval_begin": 0, "interval_end": None, "zz": 3, "i_sigma_begin": 4.0, "i_sigma_end": 4.0,
                 "v_sigma_begin": 4.0, "v_sigma_end": 4.0, "rho": 7.0},
    "Favour detail": {"interval_begin": 0, "interval_end": None, "zz": 1000, "i_sigma_begin": 4.0,
                      "i_sigma_end": 4.0, "v_sigma_begin": 4.0, "v_sigma_end": 4.0, "rho": 7.0},
}
PRESET_NOTES = {
    "Favour coherence": "the image model joins every other zigzag, in the first 40% of the steps only, its "
                        "guidance falling 4 to 2",
    "Balanced": "the image model in two of every three zigzags over all steps (VideoCrafter's published setting)",
    "Favour detail": "the image model in every zigzag over all steps (the published AnimateDiff and ModelScope "
                     "setting)",
}
NO_LORA = "none"


def knob_info(name: str) -> str:
    """The help sentence a knob shows: what it is (the setting's help) and which way it moves the trade-off."""
    text = SETTINGS[name].help.strip()
    text = text[:1].upper() + text[1:]
    if not text.endswith("."):
        text += "."
    direction = DIRECTIONS.get(name)
    return f"{text} {direction}" if direction and "favours" not in text else text


def preset_values(name: str, steps: int) -> Dict[str, Any]:
    """The knob values of starting point ``name`` for a run of ``steps`` steps."""
    values = dict(PRESETS[name])
    if values["interval_end"] is not None:
        values["interval_end"] = int(round(values["interval_end"] * max(int(steps) - 1, 0)))
    return values


def spell(name: str) -> str:
    """A setting as the page names it (its field's label), for error messages."""
    if name in LABELS:
        return f"\u201c{LABELS[name]}\u201d"
    return flag(name)


def render_error(exc: SettingError) -> str:
    return exc.render(spell)
