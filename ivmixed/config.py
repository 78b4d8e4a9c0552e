"""Run settings: built-in and per-pipeline defaults, YAML presets, and the order in which they apply.

Precedence, lowest first: built-in defaults, the pipeline's defaults, ``--tiny`` sizes, the ``--config``
file, flags given on the command line. Keys are the CLI flags' names with ``-`` written as ``_``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import yaml

PIPELINE_NAMES = ("Animatediff", "ModelScope", "VideoCrafter")

DEFAULTS: Dict[str, Any] = {
    "pipeline": "Animatediff",
    "prompt": None,
    "prompt_file": None,
    "negative_prompt": None,
    "seed": 23523,
    "inference_step": 50,
    "interval_begin": 0,
    "interval_end": None,
    "zz": 1000,
    "i_sigma_begin": 4.0,
    "i_sigma_end": 4.0,
    "v_sigma_begin": 4.0,
    "v_sigma_end": 4.0,
    "rho": 7.0,
    "num_frames": 16,
    "height": 512,
    "width": 512,
    "guidance_scale": 7.5,
    "fps": 8,
    "fps_condition": 24,
    "output_dir": "outputs",
    "format": "mp4",
    "no_standard": False,
    "side_by_side": False,
    "overwrite": False,
    "device": None,
    "dtype": None,
    "video_model": None,
    "motion_adapter": None,
    "unet": None,
    "image_model": None,
    "lora": None,
    "lora_scale": None,
    "lora_target": "image",
    "tiny": False,
    "image_batch_size": None,
    "offload": "none",
    "compile": False,
    "channels_last": False,
    "vae_slicing": False,
    "vae_tiling": False,
}

INT_KEYS = {"seed", "inference_step", "interval_begin", "interval_end", "zz", "num_frames", "height", "width", "fps",
            "fps_condition", "image_batch_size"}
FLOAT_KEYS = {"i_sigma_begin", "i_sigma_end", "v_sigma_begin", "v_sigma_end", "rho", "guidance_scale", "lora_scale"}
BOOL_KEYS = {"no_standard", "side_by_side", "overwrite", "tiny", "compile", "channels_last", "vae_slicing", "vae_tiling"}

# What differs from DEFAULTS per pipeline; configs/<pipeline>.yaml spell these out as presets.
PIPELINE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "Animatediff": {},
    "ModelScope": {"height": 256, "width": 256, "guidance_scale": 9.0},
    "VideoCrafter": {"height": 320, "width": 512, "guidance_scale": 9.0, "zz": 3},
}

# --tiny runs random tiny models: small frames and few steps keep the whole path to seconds on a CPU.
TINY_DEFAULTS: Dict[str, Any] = {"num_frames": 8, "height": 64, "width": 64, "inference_step": 10}


class ConfigError(ValueError):
    """A settings problem the user fixes by editing a flag or a file."""


def load_yaml_config(path: str) -> Dict[str, Any]:
    """Read a preset file: a YAML mapping whose keys are setting names."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax or start from configs/") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value, got {type(data).__name__}")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"config file {path} has unknown key(s) {', '.join(map(str, unknown))}; "
                          f"valid keys are the flag names with '_' (e.g. inference_step, guidance_scale)")
    return {key: _typed(key, value, path) for key, value in data.items()}


def _typed(key: str, value: Any, path: str) -> Any:
    """A config value with the type its flag would give it, or a ConfigError naming the key."""
    if value is None:
        return None
    if key in BOOL_KEYS:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config file {path}: {key} must be true or false, got {value!r}")
    if key in INT_KEYS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config file {path}: {key} must be a whole number, got {value!r}")
    if key in FLOAT_KEYS:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config file {path}: {key} must be a number, got {value!r}")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"config file {path}: {key} must be a single value, got {value!r}")


def resolve_settings(flags: Dict[str, Any], config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Merge the layers; ``flags`` holds only what was given on the command line (``None`` = not given)."""
    config = config or {}
    given = {k: v for k, v in flags.items() if v is not None}
    pipeline = given.get("pipeline") or config.get("pipeline") or DEFAULTS["pipeline"]
    if pipeline not in PIPELINE_NAMES:
        raise ConfigError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINE_NAMES)}")
    tiny = bool(given.get("tiny") or config.get("tiny"))
    settings = {**DEFAULTS, **PIPELINE_DEFAULTS[pipeline], **(TINY_DEFAULTS if tiny else {}), **config, **given}
    settings["pipeline"], settings["tiny"] = pipeline, tiny
    return settings
