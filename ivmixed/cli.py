"""``python inference.py``: generate an IV-mixed video and the standard video of the same seed."""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from hashlib import sha1
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Dict, List, Optional

from .config import DEFAULTS, PIPELINE_DEFAULTS, PIPELINE_NAMES, TINY_DEFAULTS, ConfigError, load_yaml_config, resolve_settings
from .export import VIDEO_FORMATS, write_json, write_video
from .loading import ModelLoadError
from .sampler import IVMixedSettings, count_network_calls

logger = logging.getLogger("ivmixed")

DTYPES = ("fp16", "bf16", "fp32")
IV_MIXED_KEYS = ("interval_begin", "interval_end", "zz", "i_sigma_begin", "i_sigma_end", "v_sigma_begin", "v_sigma_end", "rho")
MODEL_FLAGS = {"video_model": "--video-model", "motion_adapter": "--motion-adapter", "image_model": "--image-model"}


def build_parser() -> argparse.ArgumentParser:
    """Every flag defaults to ``None`` so that the config file and pipeline presets can fill it in."""
    p = argparse.ArgumentParser(
        prog="inference.py",
        description="Text-to-video with IV-mixed sampling: an image diffusion model lifts the quality of every "
        "frame of a video diffusion model. Also writes the standard video of the same seed for comparison.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Per-pipeline defaults: {PIPELINE_DEFAULTS}. --tiny defaults: {TINY_DEFAULTS}. "
        "Precedence: defaults < pipeline defaults < --tiny < --config file < flags.",
    )
    d = DEFAULTS
    g = p.add_argument_group("what to generate")
    g.add_argument("--pipeline", choices=PIPELINE_NAMES, help=f"video model family (default {d['pipeline']})")
    g.add_argument("--prompt", help="text prompt")
    g.add_argument("--negative-prompt", help="negative prompt (default none)")
    g.add_argument("--seed", type=int, help=f"random seed; both videos start from the same noise (default {d['seed']})")
    g.add_argument("--inference-step", type=int, help=f"number of denoising steps N (default {d['inference_step']})")
    g.add_argument("--num-frames", type=int, help=f"frames per video (default {d['num_frames']})")
    g.add_argument("--height", type=int, help=f"frame height in pixels, a multiple of 8 (default {d['height']})")
    g.add_argument("--width", type=int, help=f"frame width in pixels, a multiple of 8 (default {d['width']})")
    g.add_argument("--guidance-scale", type=float, help=f"classifier-free guidance of the main steps (default {d['guidance_scale']})")

    g = p.add_argument_group("IV-mixed sampling (quality vs temporal coherence)")
    g.add_argument("--interval_begin", type=int, help="first step (0-based) with the zigzag (default 0)")
    g.add_argument("--interval_end", type=int, help="last step with the zigzag (default: the last step, N-1)")
    g.add_argument("--zz", type=int, help="image-model share: steps with i %% zz < zz-1 use the image model; "
                   "1 = never, larger = more often (default 1000)")
    for name, what in (("i_sigma", "image"), ("v_sigma", "video")):
        g.add_argument(f"--{name}_begin", type=float, help=f"{what}-model guidance weight at the first step, >= 0 (default 4)")
        g.add_argument(f"--{name}_end", type=float, help=f"{what}-model guidance weight at the last step, >= 0 (default 4)")
    g.add_argument("--rho", type=float, help="curvature of the guidance schedule between begin and end (default 7)")

    g = p.add_argument_group("models")
    g.add_argument("--video-model", help="hub id or local folder of the video model (default: the pipeline's)")
    g.add_argument("--motion-adapter", help="hub id or local folder of the AnimateDiff motion adapter")
    g.add_argument("--image-model", help="hub id or local folder of the image model (SD 1.5 family)")
    g.add_argument("--lora", help="LoRA for the image model: a name under lora/, a converted folder or a .safetensors file")
    g.add_argument("--lora-scale", type=float, help="LoRA strength (default 1.0)")
    g.add_argument("--lora-target", choices=("image", "video", "both"), help="which UNet(s) get the LoRA (default image)")
    g.add_argument("--tiny", action="store_true", default=None,
                   help="random tiny models, offline, in seconds: checks an install; the videos are noise")

    g = p.add_argument_group("output and run")
    g.add_argument("--output-dir", help=f"where videos and the JSON record go (default {d['output_dir']}/)")
    g.add_argument("--format", choices=VIDEO_FORMATS, help="video file format (default mp4)")
    g.add_argument("--fps", type=int, help=f"frames per second of the written videos (default {d['fps']})")
    g.add_argument("--no-standard", action="store_true", default=None, help="skip the standard (baseline) video")
    g.add_argument("--config", help="YAML preset (see configs/); flags given on the command line override it")
    g.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    g.add_argument("--dtype", choices=DTYPES, help="network precision (default fp16 on CUDA, fp32 on CPU)")
    g.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def validate(s: Dict[str, Any]) -> None:
    """Reject values no run could honour, before any model loads."""
    if not s["prompt"] or not str(s["prompt"]).strip():
        raise ConfigError("a prompt is required: pass --prompt \"...\" (or set prompt: in the --config file)")
    for key in ("inference_step", "num_frames", "fps"):
        if int(s[key]) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {s[key]}")
    for key in ("height", "width"):
        if int(s[key]) < 8 or int(s[key]) % 8:
            raise ConfigError(f"--{key} must be a positive multiple of 8, got {s[key]}")
    if s["guidance_scale"] < 0:
        raise ConfigError(f"--guidance-scale must be >= 0, got {s['guidance_scale']}")
    if s["format"] not in VIDEO_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(VIDEO_FORMATS)}, got {s['format']!r}")
    if s["dtype"] is not None and s["dtype"] not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {s['dtype']!r}")
    if s["motion_adapter"] is not None and s["pipeline"] != "Animatediff":
        raise ConfigError("--motion-adapter applies to --pipeline Animatediff only")
    try:
        iv_settings(s).check(int(s["inference_step"]))
    except ValueError as exc:
        raise ConfigError(f"{exc} (see --help for the IV-mixed flags)") from None


def iv_settings(s: Dict[str, Any]) -> IVMixedSettings:
    values = {k: s[k] for k in IV_MIXED_KEYS}
    for k in ("i_sigma_begin", "i_sigma_end", "v_sigma_begin", "v_sigma_end", "rho"):
        values[k] = float(values[k])
    return IVMixedSettings(**values)


def prompt_slug(prompt: str, limit: int = 80) -> str:
    """A file-name-safe stem for ``prompt``: ASCII letters, digits and dashes, with a hash when it lost text."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", prompt).strip("-").lower()
    if len(slug) <= limit and slug.replace("-", " ") == prompt.strip().lower() and slug:
        return slug
    digest = sha1(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{slug[:limit].rstrip('-')}-{digest}" if slug else f"prompt-{digest}"


def package_versions() -> Dict[str, str]:
    out = {}
    for name in ("ivmixed", "torch", "diffusers", "transformers", "accelerate", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            if name == "ivmixed":
                from . import __version__

                out[name] = __version__
    return out


def pick_device_and_dtype(s: Dict[str, Any]):
    import torch

    device = s["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    name = s["dtype"] or ("fp16" if str(device).startswith("cuda") else "fp32")
    return device, name, {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def model_sources(s: Dict[str, Any], given: Dict[str, str]) -> Dict[str, str]:
    """The checkpoints a run loads: the pipeline's defaults, overridden by the model flags."""
    from .pipelines import PIPELINES

    params = inspect.signature(PIPELINES[s["pipeline"]].from_checkpoints).parameters
    return {k: given.get(k, params[k].default) for k in MODEL_FLAGS if k in params}


def quiet_libraries() -> None:
    """Keep the terminal to our own progress: no loading bars or library chatter below errors."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def generate(pipe, s: Dict[str, Any], device: str, iv_mixed: bool):
    """One video; the generator is seeded afresh so both videos share their initial noise."""
    import torch

    kwargs = dict(
        prompt=s["prompt"],
        negative_prompt=s["negative_prompt"],
        num_frames=int(s["num_frames"]),
        height=int(s["height"]),
        width=int(s["width"]),
        num_inference_steps=int(s["inference_step"]),
        guidance_scale=float(s["guidance_scale"]),
        generator=torch.Generator("cpu").manual_seed(int(s["seed"])),
        output_type="np",
        iv_mixed=iv_mixed,
    )
    if iv_mixed:
        kwargs.update({k: v for k, v in vars(iv_settings(s)).items()})
    return pipe(**kwargs)


def run(s: Dict[str, Any]) -> Dict[str, Any]:
    """Load, generate, write; returns the run record (also written as JSON beside the videos)."""
    started = time.perf_counter()
    device, dtype_name, dtype = pick_device_and_dtype(s)
    os.makedirs(s["output_dir"], exist_ok=True)
    stem = f"{prompt_slug(s['prompt'])}_{s['seed']}_{s['pipeline']}"
    paths = {
        "iv_mix": os.path.join(s["output_dir"], f"{stem}_iv_mix.{s['format']}"),
        "standard": os.path.join(s["output_dir"], f"{stem}_standard.{s['format']}"),
        "record": os.path.join(s["output_dir"], f"{stem}.json"),
    }
    timings: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ivmixed-tiny-") as tiny_root:
        if s["tiny"]:
            from .testing import save_tiny_checkpoints

            logger.warning("--tiny: random tiny models; the videos are noise and only check the install")
            model_paths = save_tiny_checkpoints(tiny_root, s["pipeline"])
        else:
            model_paths = {k: s[k] for k in MODEL_FLAGS if s[k] is not None}
        model_paths = model_sources(s, model_paths)
        t0 = time.perf_counter()
        from .pipelines import PIPELINES

        pipe = PIPELINES[s["pipeline"]].from_checkpoints(**model_paths, dtype=dtype)
        pipe.to(device)
        timings["load_s"] = time.perf_counter() - t0
        lora_record = None
        if s["lora"]:
            from .lora import apply_lora_to_pipeline

            lora_record = apply_lora_to_pipeline(pipe, s["lora"], float(s["lora_scale"]), s["lora_target"])

        calls: Dict[str, Dict[str, int]] = {}
        written: Dict[str, str] = {}
        runs = [("iv_mix", True)] + ([] if s["no_standard"] else [("standard", False)])
        for name, iv_mixed in runs:
            logger.info("generating the %s video", "IV-mixed" if iv_mixed else "standard")
            t0 = time.perf_counter()
            out = generate(pipe, s, device, iv_mixed)
            timings[f"{name}_s"] = time.perf_counter() - t0
            calls[name] = out.network_calls
            written[name] = write_video(out.frames[0], paths[name], int(s["fps"]))
            logger.info("wrote %s (%s)", written[name], ", ".join(f"{k} calls: {v}" for k, v in out.network_calls.items()))

    timings["total_s"] = time.perf_counter() - started
    record = {
        "prompt": s["prompt"],
        "settings": {k: v for k, v in s.items() if k not in ("config",)},
        "models": {k: ("tiny-random" if s["tiny"] else v) for k, v in model_paths.items()},
        "lora": lora_record,
        "device": device,
        "dtype": dtype_name,
        "network_calls": calls,
        "expected_network_calls": {
            "iv_mix": count_network_calls(int(s["inference_step"]), iv_settings(s)),
            "standard": count_network_calls(int(s["inference_step"]), None),
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "files": written,
        "versions": package_versions(),
    }
    write_json(record, paths["record"])
    logger.info("wrote %s", paths["record"])
    return record


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "debug")}
    try:
        config = load_yaml_config(args.config) if args.config else {}
        settings = resolve_settings(flags, config)
        validate(settings)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    quiet_libraries()
    if not args.debug:
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
    try:
        run(settings)
    except ModelLoadError as exc:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; files already written are complete", file=sys.stderr)
        return 130
    return 0
