"""``python inference.py``: generate an IV-mixed video and the standard video of the same seed."""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from .config import DEFAULTS, PIPELINE_DEFAULTS, PIPELINE_NAMES, TINY_DEFAULTS, ConfigError, load_yaml_config, resolve_settings
from .compare import contact_sheet, side_by_side
from .export import VIDEO_FORMATS, write_image, write_json, write_video
from .manifest import Manifest
from .performance import OFFLOAD_MODES, apply_performance_options
from .prompts import Job, read_prompt_file, unique_jobs
from .loading import ModelLoadError, looks_like_path
from .sampler import IVMixedSettings, count_network_calls

logger = logging.getLogger("ivmixed")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LORA_TARGETS = ("image", "video", "both")
# Named LoRAs (``--lora NAME``) live in the repository's lora/ folder, wherever the tool is started from.
LORA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lora")
IV_MIXED_KEYS = ("interval_begin", "interval_end", "zz", "i_sigma_begin", "i_sigma_end", "v_sigma_begin", "v_sigma_end", "rho")
MODEL_FLAGS = {"video_model": "--video-model", "motion_adapter": "--motion-adapter", "unet": "--unet",
               "image_model": "--image-model"}
# Flags that only one pipeline takes.
PIPELINE_ONLY = {"motion_adapter": "Animatediff", "unet": "VideoCrafter", "fps_condition": "VideoCrafter"}


def _describe(values: Dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def build_parser() -> argparse.ArgumentParser:
    """Every flag defaults to ``None`` so that the config file and pipeline presets can fill it in."""
    p = argparse.ArgumentParser(
        prog="inference.py",
        description="Text-to-video with IV-mixed sampling: an image diffusion model lifts the quality of every "
        "frame of a video diffusion model. Also writes the standard video of the same seed for comparison.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="pipeline defaults:\n" + "".join(
            f"  {name}: {_describe(values) or 'as listed above'}\n" for name, values in PIPELINE_DEFAULTS.items()
        ) + f"  --tiny: {_describe(TINY_DEFAULTS)}\n"
        "precedence: defaults < pipeline defaults < --tiny < --config file < flags on the command line",
    )
    d = DEFAULTS
    g = p.add_argument_group("what to generate")
    g.add_argument("--pipeline", choices=PIPELINE_NAMES, help=f"video model family (default {d['pipeline']})")
    g.add_argument("--prompt", help="text prompt")
    g.add_argument("--prompt-file", help="many prompts: .txt (one per line, # comments), or .csv/.jsonl with a "
                   "'prompt' column and optional seed, negative_prompt, id")
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
    g.add_argument("--motion-adapter", help="Animatediff: hub id or local folder of the motion adapter")
    g.add_argument("--unet", help="VideoCrafter: hub id or local folder of the VideoCrafter2 UNet")
    g.add_argument("--image-model", help="hub id or local folder of the image model (SD 1.5 family)")
    g.add_argument("--lora", help="LoRA for the image model: a name under lora/, a converted folder or a .safetensors file")
    g.add_argument("--lora-scale", type=float,
                   help="strength of a LoRA .safetensors file (default 0.75, as the converter's --alpha)")
    g.add_argument("--lora-target", choices=LORA_TARGETS, help="which UNet(s) get the LoRA (default image)")
    g.add_argument("--tiny", action="store_true", default=None,
                   help="random tiny models, offline, in seconds: checks an install; the videos are noise")

    g = p.add_argument_group("output and run")
    g.add_argument("--output-dir", help=f"where videos and the JSON record go (default {d['output_dir']}/)")
    g.add_argument("--format", choices=VIDEO_FORMATS, help="video file format (default mp4)")
    g.add_argument("--fps", type=int, help=f"frames per second of the written videos (default {d['fps']})")
    g.add_argument("--fps-condition", type=int,
                   help=f"VideoCrafter: the frame rate its UNet is conditioned on (default {d['fps_condition']})")
    g.add_argument("--no-standard", action="store_true", default=None, help="skip the standard (baseline) video")
    g.add_argument("--side-by-side", action="store_true", default=None,
                   help="also write a labelled standard|IV-mixed video and a PNG contact sheet per prompt")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="make prompts again that the output folder's manifest lists as finished")
    g.add_argument("--config", help="YAML preset (see configs/); flags given on the command line override it")
    g.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    g.add_argument("--dtype", choices=DTYPES, help="network precision (default fp16 on CUDA, fp32 on CPU)")
    g.add_argument("--debug", action="store_true", help="show full tracebacks")

    g = p.add_argument_group("speed and memory (see docs/BENCHMARKS.md)")
    g.add_argument("--image-batch-size", type=int,
                   help="at most this many frames per image-model call, to bound memory (default: all frames at once)")
    g.add_argument("--offload", choices=OFFLOAD_MODES,
                   help="keep weights on the CPU until used: model (whole networks) or sequential (least memory, "
                   "slowest); CUDA only (default none)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile both UNets (slow first step)")
    g.add_argument("--channels-last", action="store_true", default=None, help="channels-last layout for the UNets' 2D convolutions")
    g.add_argument("--vae-slicing", action="store_true", default=None, help="decode one frame at a time")
    g.add_argument("--vae-tiling", action="store_true", default=None, help="decode large frames in overlapping tiles")
    return p


def validate(s: Dict[str, Any]) -> None:
    """Reject values no run could honour, before any model loads."""
    if s["prompt"] and s["prompt_file"]:
        raise ConfigError("give either --prompt or --prompt-file, not both")
    if not s["prompt_file"] and (not s["prompt"] or not str(s["prompt"]).strip()):
        raise ConfigError("a prompt is required: pass --prompt \"...\" or --prompt-file FILE (or set it in --config)")
    for key in ("inference_step", "num_frames", "fps", "fps_condition"):
        if int(s[key]) < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {s[key]}")
    for key in ("height", "width"):
        if int(s[key]) < 8 or int(s[key]) % 8:
            raise ConfigError(f"--{key} must be a positive multiple of 8, got {s[key]}")
    if not math.isfinite(s["guidance_scale"]) or s["guidance_scale"] < 0:
        raise ConfigError(f"--guidance-scale must be a number >= 0, got {s['guidance_scale']}")
    if s["lora_scale"] is not None and not math.isfinite(s["lora_scale"]):
        raise ConfigError(f"--lora-scale must be a finite number, got {s['lora_scale']}")
    if s["image_batch_size"] is not None and int(s["image_batch_size"]) < 1:
        raise ConfigError(f"--image-batch-size must be at least 1, got {s['image_batch_size']}")
    if s["offload"] not in OFFLOAD_MODES:
        raise ConfigError(f"--offload must be one of {', '.join(OFFLOAD_MODES)}, got {s['offload']!r}")
    if s["offload"] != "none":
        if not torch.cuda.is_available() or (s["device"] is not None and not str(s["device"]).startswith("cuda")):
            raise ConfigError(f"--offload {s['offload']} moves weights between the CPU and a CUDA GPU; "
                              "without one, use --offload none")
        if s["compile"] and s["offload"] == "sequential":
            raise ConfigError("--compile does not work with --offload sequential; use --offload model or none")
    if s["lora_target"] not in LORA_TARGETS:
        raise ConfigError(f"--lora-target must be one of {', '.join(LORA_TARGETS)}, got {s['lora_target']!r}")
    if s["format"] not in VIDEO_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(VIDEO_FORMATS)}, got {s['format']!r}")
    if s["dtype"] is not None and s["dtype"] not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {s['dtype']!r}")
    if s["device"] is not None and str(s["device"]).startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {s['device']} asked for CUDA, but torch sees no CUDA GPU; pass --device cpu "
                              "(with --tiny for a quick check) or install a CUDA build of torch")
    for key, pipeline in PIPELINE_ONLY.items():
        if s[key] is not None and s[key] != DEFAULTS[key] and s["pipeline"] != pipeline:
            raise ConfigError(f"--{key.replace('_', '-')} applies to --pipeline {pipeline} only")
    try:
        iv_settings(s).check(int(s["inference_step"]))
    except ValueError as exc:
        raise ConfigError(f"{exc} (see --help for the IV-mixed flags)") from None
    if not s["tiny"]:
        for key, flag in MODEL_FLAGS.items():
            if s[key] is not None and looks_like_path(s[key]) and not os.path.isdir(os.path.expanduser(s[key])):
                raise ConfigError(f"{flag} {s[key]}: no such folder; give an existing checkpoint folder or a hub id")
    if s["lora"]:
        from .lora import resolve_lora

        try:
            resolve_lora(s["lora"], LORA_DIR)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--lora: {exc}") from None
    check_output_dir(s["output_dir"])


def check_output_dir(folder: str) -> None:
    """Fail now, not after an hour of sampling, when the output folder cannot be created or written."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ivmixed-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to --output-dir {folder} ({exc.strerror or exc}); choose a writable folder") from None


def check_frame_limit(s: Dict[str, Any], models: Dict[str, str]) -> None:
    """AnimateDiff's motion modules have a maximum clip length; read it from the adapter's config, cheaply."""
    if s["pipeline"] != "Animatediff":
        return
    from diffusers import MotionAdapter

    try:
        config = MotionAdapter.load_config(models["motion_adapter"])
    except Exception:  # not cached or unreadable: loading the adapter will say so properly
        return
    limit = config.get("motion_max_seq_length", 32)
    if int(s["num_frames"]) > limit:
        raise ConfigError(f"--num-frames {s['num_frames']} is more than the motion adapter supports ({limit}); "
                          f"use at most {limit} frames")


def iv_settings(s: Dict[str, Any]) -> IVMixedSettings:
    values = {k: s[k] for k in IV_MIXED_KEYS}
    for k in ("i_sigma_begin", "i_sigma_end", "v_sigma_begin", "v_sigma_end", "rho"):
        values[k] = float(values[k])
    return IVMixedSettings(**values)


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


def pick_device_and_dtype(device: Optional[str], dtype: Optional[str]):
    """The device (CUDA when available) and the dtype name and torch dtype (fp16 on CUDA, fp32 elsewhere)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = dtype or ("fp16" if str(device).startswith("cuda") else "fp32")
    return device, name, DTYPES[name]


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


def generate(pipe, s: Dict[str, Any], job: Job, iv_mixed: bool):
    """One video; the generator is seeded afresh so both videos of a prompt share their initial noise."""
    kwargs = dict(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        num_frames=int(s["num_frames"]),
        height=int(s["height"]),
        width=int(s["width"]),
        num_inference_steps=int(s["inference_step"]),
        guidance_scale=float(s["guidance_scale"]),
        generator=torch.Generator("cpu").manual_seed(job.seed),
        output_type="np",
        iv_mixed=iv_mixed,
    )
    if iv_mixed:
        kwargs.update(vars(iv_settings(s)))
    if s["pipeline"] == "VideoCrafter":
        kwargs["fps"] = int(s["fps_condition"])
    if s["image_batch_size"] is not None:
        kwargs["image_batch_size"] = int(s["image_batch_size"])
    return pipe(**kwargs)


def plan_jobs(s: Dict[str, Any]) -> List[Job]:
    """Every prompt of this run, in order, each once."""
    if s["prompt_file"]:
        jobs = read_prompt_file(s["prompt_file"], int(s["seed"]), s["negative_prompt"])
    else:
        jobs = [Job(s["prompt"].strip(), int(s["seed"]), s["negative_prompt"])]
    return unique_jobs(jobs, s["pipeline"])


def process_state(s: Dict[str, Any]):
    """accelerate's process state when launched by ``accelerate launch`` or ``torchrun``, else ``None``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=s["device"] == "cpu" or not torch.cuda.is_available())


def _note_replacement(out_dir: str, name: str, overwrite: bool) -> None:
    if os.path.exists(os.path.join(out_dir, name)):
        logger.warning("replacing %s (%s)", name, "--overwrite" if overwrite else "left by an unfinished run of this prompt")


def make_videos(pipe, s: Dict[str, Any], job: Job, run_info: Dict[str, Any]) -> Dict[str, Any]:
    """Generate and write one prompt's videos; returns its record (also written as ``<stem>.json``)."""
    out_dir, fmt, stem = s["output_dir"], s["format"], job.stem(s["pipeline"])
    files: Dict[str, str] = {}
    frames: Dict[str, Any] = {}
    calls: Dict[str, Dict[str, int]] = {}
    timings: Dict[str, float] = {}
    runs = [("iv_mix", True)] + ([] if s["no_standard"] else [("standard", False)])
    for name, iv_mixed in runs:
        t0 = time.perf_counter()
        out = generate(pipe, s, job, iv_mixed)
        timings[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        calls[name], frames[name] = out.network_calls, out.frames[0]
        files[name] = f"{stem}_{name}.{fmt}"
        _note_replacement(out_dir, files[name], s["overwrite"])
        write_video(frames[name], os.path.join(out_dir, files[name]), int(s["fps"]))
        logger.info("wrote %s (%s)", files[name], ", ".join(f"{k} calls: {v}" for k, v in out.network_calls.items()))
    if s["side_by_side"] and "standard" in frames:
        files["side_by_side"] = f"{stem}_side_by_side.{fmt}"
        write_video(side_by_side(frames["standard"], frames["iv_mix"]), os.path.join(out_dir, files["side_by_side"]),
                    int(s["fps"]))
        files["contact_sheet"] = f"{stem}_frames.png"
        write_image(contact_sheet(frames["standard"], frames["iv_mix"]), os.path.join(out_dir, files["contact_sheet"]))
    files["record"] = f"{stem}.json"
    steps = int(s["inference_step"])
    record = {
        "id": job.id or stem,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "pipeline": s["pipeline"],
        "files": files,
        "settings": {k: v for k, v in s.items() if k not in ("prompt", "prompt_file", "negative_prompt", "seed")},
        **run_info,
        "network_calls": calls,
        "expected_network_calls": {"iv_mix": count_network_calls(steps, iv_settings(s)),
                                   **({} if s["no_standard"] else {"standard": count_network_calls(steps, None)})},
        "timings": timings,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(record, os.path.join(out_dir, files["record"]))
    return record


def run(s: Dict[str, Any], jobs: List[Job]) -> int:
    """Generate every unfinished job of this process's share, appending each to the manifest when done."""
    with tempfile.TemporaryDirectory(prefix="ivmixed-tiny-") as tiny_root:
        if s["tiny"]:
            from .testing import save_tiny_checkpoints

            logger.warning("--tiny: random tiny models; the videos are noise and only check the install")
            # Written before any process group exists: transformers saves on rank 0 only once one does.
            given = save_tiny_checkpoints(tiny_root, s["pipeline"])
            torch.set_num_threads(1)  # the tiny networks' ops are too small to gain from more threads
        else:
            given = {k: s[k] for k in MODEL_FLAGS if s[k] is not None}
        return _run_jobs(s, jobs, given)


def _run_jobs(s: Dict[str, Any], jobs: List[Job], given: Dict[str, str]) -> int:
    state = process_state(s)
    is_main = state is None or state.is_main_process
    os.makedirs(s["output_dir"], exist_ok=True)
    manifest = Manifest(s["output_dir"])
    done = manifest.records()
    todo = []
    for job in jobs:
        record = done.get(job.id or job.stem(s["pipeline"]))
        if record is not None and manifest.is_finished(record) and not s["overwrite"]:
            continue
        todo.append(job)
    if state is not None:
        state.wait_for_everyone()  # everyone has read the manifest before anyone appends to it
        mine = todo[state.process_index::state.num_processes]
    else:
        mine = todo
    skipped = len(jobs) - len(todo)
    if is_main and (len(jobs) > 1 or skipped):
        logger.info("%d prompt(s): %d already finished in %s%s, %d to make", len(jobs), skipped, s["output_dir"],
                    " (--overwrite makes them again)" if skipped else "", len(todo))
    finished = 0
    try:
        if mine:
            finished = _make_all(s, mine, manifest, is_main, given)
    except KeyboardInterrupt:
        logger.warning("interrupted after %d finished prompt(s) in this process; every file written is complete. "
                       "Run the same command again to make the rest.", finished)
        raise
    if state is not None:
        state.wait_for_everyone()
    if is_main:
        logger.info("done: %d prompt(s) recorded in %s", len(manifest.records()), manifest.path)
    return 0


def _make_all(s: Dict[str, Any], jobs: List[Job], manifest: Manifest, is_main: bool, given: Dict[str, str]) -> int:
    device, dtype_name, dtype = pick_device_and_dtype(s["device"], s["dtype"])
    models = model_sources(s, given)
    check_frame_limit(s, models)
    from .pipelines import PIPELINES

    t0 = time.perf_counter()
    pipe = PIPELINES[s["pipeline"]].from_checkpoints(**models, dtype=dtype)
    performance = apply_performance_options(
        pipe, device=device, offload=s["offload"], compile=bool(s["compile"]), channels_last=bool(s["channels_last"]),
        vae_slicing=bool(s["vae_slicing"]), vae_tiling=bool(s["vae_tiling"]),
    )
    overall_bar = is_main and len(jobs) > 1
    pipe.set_progress_bar_config(position=1 if overall_bar else 0, leave=not overall_bar, disable=not is_main)
    load_s = round(time.perf_counter() - t0, 3)
    lora_record = None
    if s["lora"]:
        from .lora import apply_lora_to_pipeline

        scale = None if s["lora_scale"] is None else float(s["lora_scale"])
        lora_record = apply_lora_to_pipeline(pipe, s["lora"], scale, s["lora_target"], lora_dir=LORA_DIR)
    run_info = {
        "models": {k: ("tiny-random" if s["tiny"] else v) for k, v in models.items()},
        "lora": lora_record,
        "device": str(device),
        "dtype": dtype_name,
        "load_s": load_s,
        "performance": performance,
        "versions": package_versions(),
    }
    finished = 0
    for job in tqdm(jobs, desc="prompts", position=0, disable=not overall_bar):
        manifest.append(make_videos(pipe, s, job, run_info))
        finished += 1
    return finished


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "debug")}
    try:
        config = load_yaml_config(args.config) if args.config else {}
        settings = resolve_settings(flags, config)
        validate(settings)
        jobs = plan_jobs(settings)
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    quiet_libraries()
    if not args.debug:
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
    try:
        return run(settings, jobs)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; every file written is complete, and rerunning the same command "
              "makes the rest", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the traceback with --debug
        if args.debug:
            raise
        status, message = describe_failure(exc)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return status


def describe_failure(exc: Exception):
    """The exit status and one-line message for a failure during a run."""
    if isinstance(exc, ConfigError):
        return 2, str(exc)
    if isinstance(exc, ModelLoadError):
        return 1, str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return 1, ("out of GPU memory; reduce it with --offload model, fewer --num-frames, a smaller "
                   "--height/--width or --image-batch-size 4 (videos already finished are kept)")
    if type(exc).__name__ == "NonFiniteLatentsError":
        return 1, str(exc)
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return 1, f"{type(exc).__name__}: {first} (rerun with --debug for the traceback)"
