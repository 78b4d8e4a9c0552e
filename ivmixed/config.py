"""The run configuration: one typed object, built once and checked once, before any model loads.

Layers, lowest first: built-in defaults (the fields below and :class:`~ivmixed.sampler.IVMixedSettings`), the
pipeline's preset (:mod:`ivmixed.registry`), a YAML file, ``tiny`` sizes, then values given explicitly (the
command line's flags). ``tiny`` sizes win over a YAML file's (a full-size preset) so that a tiny run is always a
quick check, unless the file itself asks for ``tiny``; explicit values win over everything.

Every setting has one owner: its field here (or in ``IVMixedSettings``) holds its default, its help text and its
check. YAML keys and flags derive from the field names.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .errors import ModelLoadError, SettingError, Templated, quote, quote_message
from .loading import is_single_file
from .lora_paths import LORA_TARGETS, check_lora
from .memory import check_fits_memory
from .prompts import SEED_LIMIT, prompt_problem, read_text_file, text_problem
from .registry import CHECKPOINT_KEYS, PIPELINES, PipelineSpec, find_pipeline
from .runtime import DTYPE_NAMES
from .schedulers import BETA_SCHEDULES, SCHEDULER_NAMES, TIMESTEP_SPACINGS
from .settings import IVMixedSettings, ReferenceCompat, kept_steps

ConfigError = SettingError  # the name the rest of the package and its users know


class SettingWarning(Templated, UserWarning):
    """A setting a run accepts but that has no effect on it; ``{name}`` templates as in :class:`SettingError`."""


PIPELINE_NAMES = tuple(PIPELINES)
# Model settings beside the pipelines' checkpoints (what builds or replaces one of them).
EXTRA_MODEL_SOURCES = ("video_model_config", "image_model_config", "vae")
VIDEO_FORMATS = ("mp4", "gif")
OFFLOAD_MODES = ("none", "model", "model-swap", "sequential")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
REFERENCE_MAX_STEPS = ReferenceCompat().table_length  # the published code's guidance tables
MAX_CONFIG_FILE_BYTES = 1 << 20  # a settings file is a few hundred bytes
# --tiny runs random tiny models: small frames and few steps keep the whole path to seconds on a CPU.
TINY_SIZES: Dict[str, Any] = {"num_frames": 8, "height": 64, "width": 64, "inference_step": 10}


def _setting(default, help: str, group: str, check: Optional[Callable[[Any], Optional[str]]] = None,
             choices: Optional[Tuple[str, ...]] = None, metavar: Optional[str] = None, aliases: Tuple[str, ...] = ()):
    """A field with what the CLI and the docs show for it; ``aliases`` are other names users type for it (the
    diffusers spelling, say), accepted as flags."""
    metadata = {"help": help, "group": group, "check": check, "choices": choices, "metavar": metavar,
                "aliases": aliases}
    return field(default=default, metadata=metadata)


def _at_least(low: int) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v >= low else f"must be at least {low}, got {v}"


def _multiple_of_8(v: int) -> Optional[str]:
    return None if v >= 8 and v % 8 == 0 else f"must be a positive multiple of 8, got {v}"


def _finite_at_least_0(v: float) -> Optional[str]:
    return None if math.isfinite(v) and v >= 0 else f"must be a finite number >= 0, got {v}"


def _finite(v: float) -> Optional[str]:
    return None if math.isfinite(v) else f"must be a finite number, got {v}"


def _seed(v: int) -> Optional[str]:
    return None if 0 <= v < SEED_LIMIT else f"must be a whole number from 0 to 2**64 - 1, got {v}"


def _not_blank(v: Optional[str]) -> Optional[str]:
    return None if v is None or v.strip() else "must not be empty"


def _prompt_text(v: Optional[str]) -> Optional[str]:
    return _not_blank(v) or (None if v is None else prompt_problem(v))


def _negative_prompt_text(v: Optional[str]) -> Optional[str]:
    return None if v is None else prompt_problem(v)


def _motion_loras(values: Tuple[str, ...]) -> Optional[str]:
    from .motion_lora import motion_lora_problem

    return next((problem for problem in map(motion_lora_problem, values) if problem), None)


def _fraction(v: float) -> Optional[str]:
    return None if math.isfinite(v) and 0.0 <= v <= 1.0 else f"must be a fraction from 0 to 1, got {v}"


def _controlnet_scales(values: Tuple[str, ...]) -> Optional[str]:
    for value in values:
        try:
            number = float(value)
        except ValueError:
            return f"must be numbers, got {quote(value)}"
        if not math.isfinite(number) or number < 0:
            return f"must be finite numbers >= 0, got {quote(value)}"
    return None


def _strength(v: float) -> Optional[str]:
    return None if math.isfinite(v) and 0.0 < v <= 1.0 else f"must be more than 0 and at most 1, got {v}"


WHAT, MODELS, OUTPUT, SPEED = "what to generate", "models", "output and run", "speed and memory"
GUIDE = "guiding the video (input files)"


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs to know, typed; ``iv_mixed`` holds the IV-mixed knobs."""

    pipeline: str = _setting("Animatediff", "video model family: " + ", ".join(PIPELINE_NAMES) + " (any case)", WHAT,
                             metavar="NAME")
    prompt: Optional[str] = _setting(None, "text prompt", WHAT, _prompt_text)
    prompt_file: Optional[str] = _setting(
        None, "many prompts: .txt (one per line, # comments), or .csv/.jsonl with a 'prompt' column and optional "
        "seed, negative_prompt, id", WHAT)
    negative_prompt: Optional[str] = _setting(None, "negative prompt (default none)", WHAT, _negative_prompt_text)
    seed: int = _setting(23523, "random seed; both videos start from the same noise", WHAT, _seed)
    inference_step: int = _setting(50, "number of denoising steps N", WHAT, _at_least(1), metavar="N",
                                   aliases=("num_inference_steps", "steps"))
    num_frames: int = _setting(16, "frames per video", WHAT, _at_least(1))
    height: int = _setting(512, "frame height in pixels, a multiple of 8 (default: the pipeline's)", WHAT, _multiple_of_8)
    width: int = _setting(512, "frame width in pixels, a multiple of 8 (default: the pipeline's)", WHAT, _multiple_of_8)
    guidance_scale: float = _setting(7.5, "classifier-free guidance of the main steps (default: the pipeline's)", WHAT,
                                     _finite_at_least_0)
    fps_condition: int = _setting(24, "VideoCrafter: the frame rate its UNet is conditioned on", WHAT, _at_least(1))
    context_length: Optional[int] = _setting(
        None, "Animatediff: frames per context window (FreeNoise); windows switch on by themselves when "
        "num_frames is more than the motion adapter takes (16 then)", WHAT, _at_least(1))
    context_stride: Optional[int] = _setting(None, "Animatediff: frames between the starts of context windows "
                                             "(4 when windows are on)", WHAT, _at_least(1))
    scheduler: Optional[str] = _setting(None, "sampler of the main steps: " + ", ".join(SCHEDULER_NAMES) + " (default: "
                                        "the pipeline's); the zigzag's moves stay DDIM on the same noise schedule",
                                        WHAT, choices=SCHEDULER_NAMES)
    timestep_spacing: Optional[str] = _setting(None, "how the main steps' timesteps are spread over the schedule: "
                                               "leading, linspace or trailing (default: the scheduler's)", WHAT,
                                               choices=TIMESTEP_SPACINGS)
    beta_schedule: Optional[str] = _setting(None, "the noise schedule the scheduler assumes: linear or scaled_linear "
                                            "(default: the checkpoint's); few-step motion models ask for linear",
                                            WHAT, choices=BETA_SCHEDULES)
    reference_compat: bool = _setting(False, "reproduce the published implementation's per-pipeline details "
                                      "(see the README's table); at most 50 steps", WHAT)
    iv_mixed: IVMixedSettings = field(default_factory=IVMixedSettings)

    init_video: Optional[str] = _setting(
        None, "video-to-video: a video file (mp4, webm, mov, mkv, avi, gif) or a folder of frame images to start "
        "from; its first {num_frames} frames, scaled to cover the run's size and centre-cropped", GUIDE,
        metavar="FILE")
    strength: float = _setting(0.8, "with {init_video}: how much of it is repainted, more than 0 and at most 1: the "
                               "last int(steps * strength) steps run, from the video noised to the first of them",
                               GUIDE, _strength)
    ip_adapter: Optional[str] = _setting(
        None, "IP-Adapter weights, loaded into both the video and the image UNet: h94/IP-Adapter (the pipeline "
        "family's default weights), a hub file owner/repo/sub/name.safetensors, a folder laid out like "
        "h94/IP-Adapter, or a weights file with an image_encoder folder beside it", GUIDE, metavar="ID_OR_FILE")
    ip_adapter_image: Optional[str] = _setting(None, "with {ip_adapter}: the image prompt (an image file) both models "
                                               "see at every step", GUIDE, metavar="FILE")
    ip_adapter_scale: float = _setting(1.0, "with {ip_adapter}: the strength of the image prompt", GUIDE,
                                       _finite_at_least_0)
    controlnet: Tuple[str, ...] = _setting(
        (), "Animatediff: an SD 1.5 ControlNet (hub id or diffusers folder, e.g. "
        "lllyasviel/control_v11p_sd15_openpose) that both models follow; repeat for several, each with its "
        "{controlnet_video}", GUIDE, metavar="ID_OR_FOLDER")
    controlnet_video: Tuple[str, ...] = _setting(
        (), "the control video of each {controlnet}, in the same order: a video file or a folder of per-frame control "
        "images, already preprocessed (pose, depth or edge maps); its first {num_frames} frames, scaled to cover the "
        "run's size and centre-cropped", GUIDE, metavar="FILE")
    controlnet_scale: Tuple[str, ...] = _setting(
        (), "the strength of each {controlnet} (default 1): one value for all, or one per ControlNet", GUIDE,
        _controlnet_scales, metavar="SCALE")
    control_guidance_start: float = _setting(0.0, "the fraction of the steps (that run) after which the ControlNets "
                                             "start to act, 0 to 1", GUIDE, _fraction)
    control_guidance_end: float = _setting(1.0, "the fraction of the steps after which the ControlNets stop acting, "
                                           "0 to 1 and after {control_guidance_start}", GUIDE, _fraction)

    video_model: Optional[str] = _setting(None, "hub id, local folder or single file (Animatediff's base: a .safetensors/"
                                          ".ckpt, or owner/repo/name.safetensors) of the video model (default: the "
                                          "pipeline's)",
                                          MODELS)
    motion_adapter: Optional[str] = _setting(None, "Animatediff: hub id, local folder or single file (.safetensors/.ckpt, "
                                              "or owner/repo/name.safetensors) of the motion adapter", MODELS)
    unet: Optional[str] = _setting(None, "VideoCrafter: hub id or local folder of the VideoCrafter2 UNet", MODELS)
    image_model: Optional[str] = _setting(None, "hub id, local folder or single file (.safetensors/.ckpt, or "
                                          "owner/repo/name.safetensors) of the image model (SD 1.5 family)", MODELS)
    video_model_config: Optional[str] = _setting(
        None, "Animatediff: hub id or folder whose configs build a single-file {video_model} (default: the "
        "pipeline's default video model, from the local cache)", MODELS)
    image_model_config: Optional[str] = _setting(
        None, "hub id or folder whose configs build a single-file {image_model} (default: the pipeline's default "
        "image model, from the local cache)", MODELS)
    vae: Optional[str] = _setting(None, "hub id, folder or single file of a VAE that replaces the video model's (and "
                                  "so decodes the videos), e.g. stabilityai/sd-vae-ft-mse", MODELS)
    motion_lora: Tuple[str, ...] = _setting(
        (), "Animatediff: a LoRA for the video model (a motion LoRA, or a few-step LoRA of the base UNet): a hub id, "
        "a hub file owner/repo/name.safetensors or a .safetensors file, with an optional :SCALE (default 1); "
        "repeat for several", MODELS, _motion_loras, metavar="ID_OR_FILE[:SCALE]")
    tiny: bool = _setting(False, "random tiny models, offline, in seconds: checks an install; the videos are noise",
                          MODELS)
    lora: Optional[str] = _setting(None, "LoRA for the image model: a name under lora/, a converted folder or a "
                                   ".safetensors file", MODELS)
    lora_scale: Optional[float] = _setting(None, "strength of a LoRA .safetensors file (default 0.75, as the "
                                           "converter's --alpha)", MODELS, _finite)
    lora_target: str = _setting("image", "which UNet(s) get the LoRA", MODELS, choices=LORA_TARGETS)

    output_dir: str = _setting("outputs", "where videos, records and the manifest go", OUTPUT)
    format: str = _setting("mp4", "video file format", OUTPUT, choices=VIDEO_FORMATS)
    fps: int = _setting(8, "frames per second of the written videos", OUTPUT, _at_least(1))
    no_standard: bool = _setting(False, "skip the standard (baseline) video", OUTPUT)
    side_by_side: bool = _setting(False, "also write a labelled standard|IV-mixed video and a PNG contact sheet",
                                  OUTPUT)
    overwrite: bool = _setting(False, "make this configuration's files again even when they are finished", OUTPUT)
    device: Optional[str] = _setting(None, "torch device (default cuda when available, else cpu)", OUTPUT)
    dtype: Optional[str] = _setting(None, "network precision (default fp16 on CUDA, fp32 elsewhere)", OUTPUT,
                                    choices=DTYPE_NAMES)

    image_batch_size: Optional[int] = _setting(None, "at most this many frames per image-model call, to bound memory "
                                               "(default: all frames at once; not {batch_size}, which samples "
                                               "several prompts together)", SPEED, _at_least(1))
    batch_size: int = _setting(1, "prompts of a {prompt_file} sampled together in one pipeline call, each from its "
                               "own seed's noise (not {image_batch_size}, which splits one video's frames)", SPEED,
                               _at_least(1))
    offload: str = _setting("none", "keep weights on the CPU until used, CUDA only: model (text encoders and VAE wait "
                            "on the CPU, both UNets stay on the GPU for the whole run), model-swap (every network, "
                            "the UNets too, moves to the GPU only while it runs: less memory, but GBs of weights move "
                            "at every zigzag step) or sequential (submodule by submodule: least memory, slowest)",
                            SPEED, choices=OFFLOAD_MODES)
    compile: bool = _setting(False, "torch.compile both UNets (slow first step)", SPEED)
    compile_mode: str = _setting("default", "torch.compile mode with {compile}: default, reduce-overhead (CUDA "
                                 "graphs) or max-autotune (longest compile)", SPEED, choices=COMPILE_MODES)
    channels_last: bool = _setting(False, "channels-last layout for the UNets' 2D convolutions", SPEED)
    vae_slicing: bool = _setting(False, "decode one frame at a time", SPEED)
    vae_tiling: bool = _setting(False, "decode large frames in overlapping tiles", SPEED)

    @property
    def spec(self) -> PipelineSpec:
        return PIPELINES[self.pipeline]

    def model_sources(self) -> Dict[str, str]:
        """The checkpoints this pipeline loads: given ones, else the pipeline's defaults."""
        return {c.key: getattr(self, c.key) or c.default for c in self.spec.checkpoints}

    @property
    def steps_run(self) -> int:
        """The main steps that run: all of them, or with an ``init_video`` the last ``int(steps * strength)``
        (what the interval, ``zz`` and the guidance schedules count)."""
        if self.init_video is None:
            return self.inference_step
        return kept_steps(self.inference_step, self.strength)

    def settings(self) -> Dict[str, Any]:
        """Every setting by its flat name (the YAML keys), as the run record stores them."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "iv_mixed"}
        out.update(asdict(self.iv_mixed))
        return out


@dataclass(frozen=True)
class Setting:
    """One flat setting: its name, type, default, help, choices, whether ``None`` is allowed, and its check."""

    name: str
    type: type
    default: Any
    help: str
    group: str
    nullable: bool
    choices: Optional[Tuple[str, ...]] = None
    check: Optional[Callable[[Any], Optional[str]]] = None
    metavar: Optional[str] = None
    aliases: Tuple[str, ...] = ()


def _field_type(hint) -> Tuple[type, bool]:
    if typing.get_origin(hint) is tuple:  # a repeatable setting: a tuple of texts
        return tuple, False
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _settings_table() -> Dict[str, Setting]:
    table: Dict[str, Setting] = {}
    for owner in (RunConfig, IVMixedSettings):
        hints = typing.get_type_hints(owner)
        for f in fields(owner):
            if f.name == "iv_mixed":
                continue
            kind, nullable = _field_type(hints[f.name])
            default = f.default if f.default is not MISSING else None
            meta = f.metadata
            table[f.name] = Setting(f.name, kind, default, meta.get("help", ""),
                                    meta.get("group", "IV-mixed sampling (quality vs temporal coherence)"), nullable,
                                    meta.get("choices"), meta.get("check"), meta.get("metavar"),
                                    meta.get("aliases", ()))
    aliases = [alias for s in table.values() for alias in s.aliases]
    clashes = sorted({a for a in aliases if a in table or aliases.count(a) > 1})
    if clashes:  # one name, one setting
        raise TypeError(f"alias(es) {', '.join(clashes)} already name a setting or another setting's alias")
    return table


SETTINGS: Dict[str, Setting] = _settings_table()
ALIASES: Dict[str, str] = {alias: s.name for s in SETTINGS.values() for alias in s.aliases}
IV_MIXED_KEYS = tuple(f.name for f in fields(IVMixedSettings))


# -- reading values ------------------------------------------------------------------------------------------


def typed_value(key: str, value: Any, where: str = "") -> Any:
    """``value`` as setting ``key``'s type, or a :class:`ConfigError` naming ``where`` it came from."""
    s = SETTINGS[key]
    where = where + ": " if where else ""
    if value is None:
        if s.nullable:
            return None
        raise ConfigError(f"{where}{{{key}}} is empty (null); give a value or remove it to use the default")
    if s.type is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}{{{key}}} must be true or false, got {quote(value)}")
    if s.type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > 128:  # YAML's 0x... has no digit limit; no setting takes such a number
                raise ConfigError(f"{where}{{{key}}} must be a whole number in its range, got {quote(value)}")
            return value
        raise ConfigError(f"{where}{{{key}}} must be a whole number, got {quote(value)}")
    if s.type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{where}{{{key}}} must be a finite number, got {quote(value)}") from None
        raise ConfigError(f"{where}{{{key}}} must be a number, got {quote(value)}")
    if s.type is tuple:  # a repeatable setting: one text, or a list of them
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{where}{{{key}}} must be text or a list of texts, got {quote(value)}")
        for v in values:
            problem = text_problem(v)
            if problem:
                raise ConfigError(f"{where}{{{key}}} {problem}")
        return tuple(values)
    if isinstance(value, str):
        problem = text_problem(value)  # it goes into file names and UTF-8 records
        if problem:
            raise ConfigError(f"{where}{{{key}}} {problem}")
        return value
    raise ConfigError(f"{where}{{{key}}} must be text, got {quote(value)}")


_ALIAS_REFUSED = "an alias of a list or mapping"


def _settings_loader():
    """PyYAML's safe loader, refusing aliases of lists and mappings: nested ones (a "billion laughs" file)
    stand for more values than memory holds, and merge keys (``<<: *a``) copy them out while loading; aliases
    of single values stay allowed."""
    import yaml

    class SettingsLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                node = self.anchors.get(event.anchor)
                if node is not None and not isinstance(node, yaml.ScalarNode):
                    raise yaml.composer.ComposerError(None, None, _ALIAS_REFUSED, event.start_mark)
            return super().compose_node(parent, index)

    return SettingsLoader


def load_yaml_config(path: str) -> Dict[str, Any]:
    """Read a YAML file of settings (a mapping whose keys are setting names), typed."""
    import yaml

    problem = text_problem(path)
    if problem:  # the path goes into the records, as part of the command line
        raise ConfigError(f"{{config}} {problem}")
    text = read_text_file(path, "config file", MAX_CONFIG_FILE_BYTES, "give a YAML file")
    try:
        data = yaml.load(text, Loader=_settings_loader())
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply to be settings; a settings file is a flat mapping "
                          "of setting: value") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        if getattr(exc, "problem", None) == _ALIAS_REFUSED:
            raise ConfigError(f"config file {path} repeats a list or mapping by an alias (*name){where}; settings "
                              "do not need them: write the value out") from None
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax or start from configs/") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a date like 2001-13-45, a 5,000-digit number
        what = quote_message(str(exc).split(";")[0], 100)
        raise ConfigError(f"config file {path} holds a value YAML cannot read ({what}); fix it or start from "
                          "configs/") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value, got {type(data).__name__}")
    unknown = sorted(quote_message(k) if isinstance(k, str) and len(k) <= 40 and not text_problem(k)
                     else quote(k, 40) for k in set(data) - set(SETTINGS))
    if unknown:  # a few, shortened: the message stays one readable line
        listed = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8:,} more" if len(unknown) > 8 else "")
        raise ConfigError(f"config file {path} has unknown key(s) {listed}; valid keys are the "
                          "setting names (e.g. inference_step, guidance_scale, zz)")
    return {key: typed_value(key, value, f"config file {path}") for key, value in data.items()}


# -- building and checking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layers:
    """What building the configuration found that a user should hear of: the config file's values ``tiny`` sizes
    replaced, and values given that the run leaves unused."""

    tiny_over_config: Tuple[str, ...] = ()
    # Values given that the run leaves unused (see unused_settings), for the caller to show.
    warnings: Tuple[SettingWarning, ...] = ()


def build_config(given: Optional[Mapping[str, Any]] = None, config_file: Optional[Mapping[str, Any]] = None) -> RunConfig:
    """Merge the layers into a checked :class:`RunConfig`.

    ``given`` holds explicitly given values by setting name (``None`` = not given); ``config_file`` the typed
    values of a YAML file (:func:`load_yaml_config`). Raises :class:`ConfigError` for anything no run could honour.
    """
    config, _ = build_config_with_layers(given, config_file)
    return config


def build_config_with_layers(given: Optional[Mapping[str, Any]] = None,
                             config_file: Optional[Mapping[str, Any]] = None) -> Tuple[RunConfig, Layers]:
    given = {k: v for k, v in (given or {}).items() if v is not None}
    config_file = dict(config_file or {})
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
    name = given.get("pipeline") or config_file.get("pipeline") or SETTINGS["pipeline"].default
    spec = find_pipeline(name)
    if spec is None:
        raise ConfigError(f"unknown {{pipeline}} {quote(name)}; choose one of {', '.join(PIPELINE_NAMES)}")
    tiny = bool(given.get("tiny", config_file.get("tiny", False)))
    values = {key: s.default for key, s in SETTINGS.items()}
    values.update(spec.defaults)
    overridden: Tuple[str, ...] = ()
    if tiny and config_file.get("tiny"):  # a file that asks for tiny models chooses their sizes too
        values.update(TINY_SIZES)
        values.update(config_file)
    else:
        values.update(config_file)
        if tiny:  # tiny is a quick check: its sizes win over a preset's full sizes
            overridden = tuple(k for k in TINY_SIZES
                               if k in config_file and config_file[k] != TINY_SIZES[k] and k not in given)
            values.update(TINY_SIZES)
    values.update(given)
    values["pipeline"], values["tiny"] = spec.name, tiny
    values = {key: typed_value(key, value) for key, value in values.items()}
    config = RunConfig(
        iv_mixed=IVMixedSettings(**{k: values.pop(k) for k in IV_MIXED_KEYS}),
        **values,
    )
    warnings = check(config)
    return config, Layers(overridden, warnings)


def check(config: RunConfig) -> Tuple[SettingWarning, ...]:
    """Refuse values no run could honour, before any model loads; return the settings it would ignore.

    A setting that contradicts the run is refused; one that is merely unused is returned as a warning, for the
    caller to show (the library prints nothing)."""
    for key, s in SETTINGS.items():
        value = getattr(config.iv_mixed, key) if key in IV_MIXED_KEYS else getattr(config, key)
        if value is None:
            continue
        if s.choices is not None and value not in s.choices:
            raise ConfigError(f"{{{key}}} must be one of {', '.join(s.choices)}, got {quote(value)}")
        problem = s.check(value) if s.check is not None else None
        if problem:
            raise ConfigError(f"{{{key}}} {problem}")
    if config.inference_step > config.spec.train_timesteps:
        raise ConfigError(f"{{inference_step}} {config.inference_step} is more than the {config.spec.train_timesteps} "
                          f"timesteps the {config.pipeline} models were trained with; use at most "
                          f"{config.spec.train_timesteps}")
    if config.no_standard and config.side_by_side:
        raise ConfigError("{side_by_side} compares with the standard video, which {no_standard} skips; drop one of them")
    if config.prompt is not None and config.prompt_file is not None:
        raise ConfigError("give either {prompt} or {prompt_file}, not both")
    if config.prompt is None and config.prompt_file is None:
        raise ConfigError("a prompt is required: give {prompt} or {prompt_file}")
    spec = config.spec
    only = {key for p in PIPELINES.values() for key in p.options} | set(CHECKPOINT_KEYS)
    for key in sorted(only):
        value = getattr(config, key)
        set_here = value is not None and value != SETTINGS[key].default
        if set_here and not spec.takes(key):
            owner = next(p.name for p in PIPELINES.values() if p.takes(key))
            raise ConfigError(f"{{{key}}} applies to {{pipeline}} {owner} only")
    if config.init_video is not None:
        try:
            config.steps_run
        except ValueError:
            raise ConfigError(f"{{strength}} {config.strength:g} keeps no step of {config.inference_step} "
                              "{inference_step} (int(steps * strength) is 0); raise {strength} or {inference_step}") from None
    config.iv_mixed.check(config.steps_run)
    if not config.tiny:
        from .single_file import check_sources

        try:  # folders that are not there, files that are not checkpoints of their kind, configs missing offline
            check_sources(spec, config.model_sources(), vae=config.vae, image_model_config=config.image_model_config,
                          video_model_config=config.video_model_config, require_cached_configs=True)
        except ModelLoadError as exc:  # a bad value, found before loading
            raise ConfigError(exc.template) from None
    if config.reference_compat and spec.reference_compat is None:
        raise ConfigError(f"{{reference_compat}} reproduces the published IV-mixed code, which has no {spec.name} "
                          "pipeline; drop {reference_compat}")
    if config.reference_compat and config.inference_step > REFERENCE_MAX_STEPS:
        raise ConfigError(f"{{reference_compat}} supports at most {REFERENCE_MAX_STEPS} {{inference_step}} (the "
                          f"published code's guidance tables have {REFERENCE_MAX_STEPS} entries), got {config.inference_step}")
    if config.batch_size > 1 and config.reference_compat and spec.reference_compat.per_frame_main_step:
        raise ConfigError(f"{{batch_size}} {config.batch_size} cannot be used with {{reference_compat}} on {spec.name}: "
                          "its published code steps the main scheduler on per-frame latents, where prompts sampled "
                          "together cannot each keep their own seed's noise; use {batch_size} 1")
    if config.lora_target != "image" and not spec.video_lora:
        raise ConfigError(f"{{lora_target}} {config.lora_target}: the {spec.name} video model cannot take a LoRA "
                          "(its UNet is not a Stable Diffusion 1.5 UNet); use {lora_target} image")
    if config.lora:
        check_lora(config.lora, config.lora_target)
    _check_guide_inputs(config)
    if config.lora_scale is not None and config.lora is None:
        raise ConfigError("{lora_scale} is the strength of a {lora}, and no {lora} is given; give one or drop "
                          "{lora_scale}")
    check_fits_memory(config)
    _check_runtime(config)  # last: it imports torch
    return unused_settings(config)


def _check_guide_inputs(config: RunConfig) -> None:
    """The guiding input files and their settings, checked before any model loads: each file exists, decodes
    and is large enough (its header only, see :mod:`ivmixed.guide_files`), and each strength has its input."""
    from .guide_files import check_image, check_video
    from .ip_adapter import check_ip_adapter_source

    defaults = RunConfig()
    if config.init_video is None and config.strength != defaults.strength:
        raise ConfigError("{strength} is how much of an {init_video} is repainted, and no {init_video} is given; "
                          "give one or drop {strength}")
    if config.ip_adapter is None:
        for key in ("ip_adapter_image", "ip_adapter_scale"):
            if getattr(config, key) != getattr(defaults, key):
                raise ConfigError(f"{{{key}}} needs an {{ip_adapter}} to load into the UNets; give one or drop {{{key}}}")
    elif config.ip_adapter_image is None:
        raise ConfigError("{ip_adapter} needs the image prompt to show the models: give {ip_adapter_image}")
    if config.init_video is not None:
        check_video(config.init_video, "init_video", config.num_frames)
    _check_controlnets(config, defaults)
    if config.ip_adapter is not None:
        if config.tiny and not os.path.exists(os.path.expanduser(config.ip_adapter)):
            raise ConfigError("{tiny} runs random tiny UNets, which only an IP-Adapter built for them fits: give "
                              "{ip_adapter} a local folder of one (ivmixed.testing.save_tiny_ip_adapter)")
        check_ip_adapter_source(config.spec, config.ip_adapter)
        check_image(config.ip_adapter_image, "ip_adapter_image")


def _check_controlnets(config: RunConfig, defaults: RunConfig) -> None:
    from .controlnets import check_controlnet_sources
    from .guide_files import check_video

    nets, videos = config.controlnet, config.controlnet_video
    if not nets:
        for key in ("controlnet_video", "controlnet_scale", "control_guidance_start", "control_guidance_end"):
            if getattr(config, key) != getattr(defaults, key):
                raise ConfigError(f"{{{key}}} goes with a {{controlnet}}, and none is given; give one or drop {{{key}}}")
        return
    if len(videos) != len(nets):
        raise ConfigError(f"{len(nets)} {{controlnet}} and {len(videos)} {{controlnet_video}}: give one control video "
                          "per ControlNet, in the same order")
    if len(config.controlnet_scale) not in (0, 1, len(nets)):
        raise ConfigError(f"{len(config.controlnet_scale)} {{controlnet_scale}} values for {len(nets)} {{controlnet}}: "
                          "give one for all, or one per ControlNet")
    if config.control_guidance_start >= config.control_guidance_end:
        raise ConfigError(f"{{control_guidance_start}} {config.control_guidance_start:g} must be before "
                          f"{{control_guidance_end}} {config.control_guidance_end:g}")
    check_controlnet_sources(nets, tiny=config.tiny)
    for video in videos:
        check_video(video, "controlnet_video", config.num_frames)


def unused_settings(config: RunConfig) -> Tuple[SettingWarning, ...]:
    """Values given that this run leaves unused: checkpoints under ``tiny``, knobs the pipeline's published code
    ignores under ``reference_compat``, a LoRA target without a LoRA. Only values that differ from what the
    run would have used anyway count, so a preset spelling out the defaults stays quiet."""
    spec, found = config.spec, []
    if config.tiny:
        keys = [c.key for c in spec.checkpoints if getattr(config, c.key) not in (None, c.default)]
        keys += [key for key in EXTRA_MODEL_SOURCES if getattr(config, key) is not None]
        from .motion_lora import loaded_motion_loras

        if len(loaded_motion_loras(config.motion_lora, True)) < len(config.motion_lora):
            keys.append("motion_lora")  # its hub LoRAs
        if keys:
            names = " and ".join(f"{{{k}}}" for k in keys)
            found.append(SettingWarning(f"{names} {'is' if len(keys) == 1 else 'are'} not loaded: {{tiny}} uses "
                                        "random tiny models instead"))
    if config.reference_compat:
        for key, why in spec.reference_compat.ignored_knobs().items():
            value = getattr(config.iv_mixed, key)
            if value != spec.defaults.get(key, SETTINGS[key].default):
                found.append(SettingWarning(f"{{{key}}} {quote(value)} is ignored with {{reference_compat}} on "
                                            f"{spec.name}: {why}"))
    if config.lora is None and config.lora_target != SETTINGS["lora_target"].default:
        found.append(SettingWarning(f"{{lora_target}} {config.lora_target} does nothing without a {{lora}}"))
    for key, model in (("image_model_config", "image_model"), ("video_model_config", "video_model")):
        if getattr(config, key) is not None and not config.tiny and spec.takes(model) \
                and not is_single_file(config.model_sources()[model]):
            found.append(SettingWarning(f"{{{key}}} does nothing: {{{model}}} is not a single file (a folder or hub id "
                                        "holds its own configs)"))
    if not config.compile and config.compile_mode != SETTINGS["compile_mode"].default:
        found.append(SettingWarning(f"{{compile_mode}} {config.compile_mode} does nothing without {{compile}}"))
    if config.prompt_file is None and config.batch_size > 1:
        found.append(SettingWarning(f"{{batch_size}} {config.batch_size} does nothing with one {{prompt}}: it "
                                    "samples several prompts of a {prompt_file} together"))
    return tuple(found)


def _check_runtime(config: RunConfig) -> None:
    if config.compile and config.offload == "sequential":
        raise ConfigError("{compile} does not work with {offload} sequential; use {offload} model or none")
    if config.device is not None:
        import torch

        try:
            device = torch.device(config.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"{{device}} {quote(config.device)} is not a torch device; use cpu, cuda, cuda:1, mps, ...") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"{{device}} {config.device} asked for CUDA, but torch sees no CUDA GPU; use {{device}} cpu "
                              "(with {tiny} for a quick check) or install a CUDA build of torch")
    if config.offload != "none":
        import torch

        if not torch.cuda.is_available() or (config.device is not None and not config.device.startswith("cuda")):
            raise ConfigError(f"{{offload}} {config.offload} moves weights between the CPU and a CUDA GPU; "
                              "without one, use {offload} none")


def check_output_dir(folder: str) -> None:
    """Fail now, not after an hour of sampling, when the output folder cannot be created or written."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ivmixed-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to {{output_dir}} {folder} ({exc.strerror or exc}); choose a writable folder") from None


def with_resolved_runtime(config: RunConfig) -> RunConfig:
    """``config`` with ``device``, ``dtype`` and ``interval_end`` filled in, as a run records them."""
    from .runtime import pick_device_and_dtype

    device, dtype_name, _ = pick_device_and_dtype(config.device, config.dtype)
    return replace(config, device=str(device), dtype=dtype_name,
                   iv_mixed=config.iv_mixed.resolved(config.steps_run))


def preset(config: RunConfig) -> Dict[str, Any]:
    """The settings a ``configs/<pipeline>.yaml`` preset spells out: the pipeline, its checkpoints and its
    generation defaults."""
    keys = ("num_frames", "height", "width", "guidance_scale", "inference_step") + tuple(
        k for k in IV_MIXED_KEYS if k != "interval_end") + tuple(k for k in config.spec.options if k in config.spec.defaults)
    s = config.settings()
    return {"pipeline": config.pipeline, **config.model_sources(), **{k: s[k] for k in keys}}


def describe_tiny(layers: Layers, config: RunConfig) -> str:
    sizes = f"{config.height}x{config.width} px, {config.num_frames} frames, {config.inference_step} steps"
    over = f" (over the config file's {', '.join(layers.tiny_over_config)})" if layers.tiny_over_config else ""
    return sizes + over


__all__ = ["ALIASES", "ConfigError", "RunConfig", "SETTINGS", "Setting", "SettingWarning", "build_config",
           "build_config_with_layers", "check", "load_yaml_config", "unused_settings", "with_resolved_runtime",
           "IV_MIXED_KEYS", "TINY_SIZES"]
