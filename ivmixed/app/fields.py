"""What the page's fields are called and what they mean: the label of every setting (errors name settings by it),
the help sentence of each IV-mixed knob and which way it moves frame quality against temporal coherence, and the
named starting points. The page lays these out and the request logic words its errors with them, so they live
apart from both.
"""

from typing import Any, Callable, Dict, Optional

from ..config import SETTINGS
from ..errors import SettingError, spell_names
from ..flags import flag
from ..guide_files import IMAGE_FORMATS, VIDEO_EXTENSIONS
from ..settings import kept_steps

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
    "init_video": "Init video",
    "strength": "Strength",
    "ip_adapter": "IP-Adapter",
    "ip_adapter_image": "IP-Adapter image",
    "ip_adapter_scale": "IP-Adapter scale",
    "controlnet": "ControlNet",
    "controlnet_video": "Control video",
    "controlnet_scale": "ControlNet scale",
    "control_guidance_start": "ControlNet start",
    "control_guidance_end": "ControlNet end",
}
# The page's model and sampler fields, in order; blank means the pipeline's own.
MODEL_FIELDS = ("video_model", "motion_adapter", "unet", "image_model", "video_model_config", "image_model_config",
                "vae", "motion_lora", "scheduler", "timestep_spacing", "beta_schedule")
PIPELINE_OWN = "pipeline's own"

# The page's fields that guide the video with input files, in order; an empty upload or blank text means none.
GUIDE_FIELDS = ("init_video", "strength", "ip_adapter", "ip_adapter_image", "ip_adapter_scale", "controlnet",
                "controlnet_video", "controlnet_scale", "control_guidance_start", "control_guidance_end")
# Of those, the uploads: each arrives as the path of a file (Gradio's temporary copy of it).
UPLOAD_FIELDS = ("init_video", "ip_adapter_image", "controlnet_video")
# The page has one ControlNet slot: these repeatable settings take one value from it (none without a ControlNet).
CONTROLNET_FIELDS = ("controlnet", "controlnet_video", "controlnet_scale")
# What goes only with a ControlNet: without one the page sends these settings' defaults, whatever its sliders show.
CONTROLNET_ONLY = ("controlnet_scale", "control_guidance_start", "control_guidance_end")

# What a guiding field adds to its setting's help on the page (which way it moves the video, or what the upload
# takes where the setting's help says more than a page can upload).
GUIDE_NOTES: Dict[str, str] = {
    "strength": "Higher repaints more of the input (more of the prompt, less of the video's look and motion); "
                "lower keeps closer to it. 1 repaints it all.",
    "ip_adapter": "Blank: none.",
    "ip_adapter_image": "A " + ", ".join(IMAGE_FORMATS[:-1]) + " or " + IMAGE_FORMATS[-1] + " file.",
    "ip_adapter_scale": "Higher follows the image prompt more, 0 ignores it.",
    "controlnet": "Blank: none.",
    "control_guidance_start": "Later leaves the early layout to the prompt.",
    "control_guidance_end": "Earlier lets the models finish the details freely.",
}
# The init video's upload says what it takes itself: the setting's help also offers a folder of frames, which a
# page cannot upload.
INIT_VIDEO_HELP = ("Video-to-video: a video file ({kinds}) to start from instead of noise; its first {{num_frames}} "
                   "frames, scaled to cover the run's size and centre-cropped (a folder of frame images works from the "
                   "command line). Empty: text-to-video.").format(
    kinds=", ".join(e.lstrip(".") for e in VIDEO_EXTENSIONS))
_KINDS = ", ".join(e.lstrip(".") for e in VIDEO_EXTENSIONS)
# The ControlNet slot's own help: the settings' help speaks of several ControlNets (the command line repeats
# {controlnet}) and of folders of frames, which a page cannot upload.
PAGE_HELP: Dict[str, str] = {
    "init_video": INIT_VIDEO_HELP,
    "controlnet": "Animatediff only: an SD 1.5 ControlNet that both the video and the image model follow, a hub id "
                  "such as lllyasviel/control_v11p_sd15_openpose or a local diffusers folder; it needs a "
                  "{controlnet_video}",
    "controlnet_video": f"The control video the {{controlnet}} follows: a video file ({_KINDS}), already "
                        "preprocessed (pose, depth or edge maps); its first {num_frames} frames, scaled to cover the "
                        "run's size and centre-cropped (a folder of per-frame images works from the command line)",
    "controlnet_scale": "The strength of the {controlnet}: higher follows the control video more closely, 0 "
                        "ignores it",
}
CONTROLNET_NOTE = (f"one on the page; for several, repeat the command line's `{flag('controlnet')}`, each with its "
                   f"`{flag('controlnet_video')}` (and `{flag('controlnet_scale')}` one for all or one each).")
TINY_CONTROLNET_NOTE = ("Tiny random models take only a local folder of a tiny ControlNet "
                        "(ivmixed.testing.save_tiny_controlnet).")
TINY_IP_ADAPTER_NOTE = ("Tiny random models take only a local folder of a tiny IP-Adapter "
                        "(ivmixed.testing.save_tiny_ip_adapter).")

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


def _sentence(text: str, spell_name: Optional[Callable[[str], str]] = None) -> str:
    """``text`` (a setting's help) as the page shows it: settings named by their labels (or ``spell_name``), a
    capital, a full stop."""
    text = spell_names(text.strip(), spell_name or spell)
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def knob_info(name: str, spell_name: Optional[Callable[[str], str]] = None) -> str:
    """The help sentence a knob shows: what it is (the setting's help) and which way it moves the trade-off; other
    settings it mentions are named by their labels on the page, or by ``spell_name`` (the ComfyUI node's inputs)."""
    text = _sentence(SETTINGS[name].help, spell_name)
    direction = DIRECTIONS.get(name)
    return f"{text} {direction}" if direction and "favours" not in text else text


def guide_info(name: str) -> str:
    """The help a guiding field shows: its setting's help (or the page's own, for the init video and the
    ControlNet slot: what its field takes) and, where one is written, which way it moves the video."""
    text = _sentence(PAGE_HELP.get(name, SETTINGS[name].help))
    note = GUIDE_NOTES.get(name)
    return f"{text} {note}" if note else text


def preset_values(name: str, steps: int) -> Dict[str, Any]:
    """The knob values of starting point ``name`` for a run of ``steps`` steps."""
    values = dict(PRESETS[name])
    if values["interval_end"] is not None:
        values["interval_end"] = int(round(values["interval_end"] * max(int(steps) - 1, 0)))
    return values


def knob_steps(steps: Any, init_video: Any = None, strength: Any = None) -> int:
    """The steps the IV-mixed knobs count (what a starting point's interval is a fraction of): all ``steps``, or
    with an init video the last ``int(steps * strength)`` that run; all of them when the strength keeps none
    (Generate says what is wrong with it)."""
    steps = int(steps)
    if not init_video or strength is None:
        return steps
    try:
        return kept_steps(steps, float(strength))
    except ValueError:
        return steps


def spell(name: str) -> str:
    """A setting as the page names it (its field's label), for error messages."""
    if name in LABELS:
        return f"\u201c{LABELS[name]}\u201d"
    return flag(name)


def render_error(exc: SettingError) -> str:
    return exc.render(spell)
