"""Time standard and IV-mixed generation of one pipeline: where the wall time goes, and peak memory.

    python benchmarks/bench.py --pipeline Animatediff --tiny                  # CPU, seconds
    python benchmarks/bench.py --pipeline Animatediff --full-size --json out.json   # GPU: 512x512x16, fp16

``--tiny`` uses the random tiny models of ``ivmixed.testing``; ``--full-size`` builds the real architectures
with random weights from their configs (``full_size_models.py`` beside this script; no download), so timings and memory are those of the real networks.
Each variant runs ``--warmup`` unmeasured times, then ``--repeats`` measured times; the table shows the median.

What is measured, per run:
- wall time split into prompt encoding (inside the text encoders), denoising (first UNet call to the last step
  callback), decoding (from there to the end of the call: VAE and post-processing) and the
  rest (input checks, latent preparation);
- network time: the wall time inside the UNets' forward calls (timed by hooks on the modules, with CUDA
  synchronised at each boundary); the sampler's overhead is denoising minus network time, i.e. everything the
  loop adds: guidance combination, DDIM moves, scheduler steps, reshapes, callbacks;
- guided network calls per model (one covers the unconditional and conditional halves) and raw UNet calls;
- peak memory: CUDA peak allocated on a GPU; on a CPU the process's peak resident set size, reset before each
  run (Linux ``/proc/self/clear_refs``), next to the resident size when the run started.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in (ROOT, os.path.dirname(os.path.abspath(__file__))):  # ivmixed, and full_size_models beside this
    if folder not in sys.path:
        sys.path.insert(0, folder)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from ivmixed.performance import OFFLOAD_MODES, apply_performance_options  # noqa: E402
from ivmixed.registry import PIPELINES  # noqa: E402
from ivmixed.runtime import DTYPE_NAMES, pick_device_and_dtype, quiet_libraries  # noqa: E402
from ivmixed.sampler import IVMixedSettings, count_network_calls  # noqa: E402

logger = logging.getLogger("ivmixed.bench")

PROMPT, NEGATIVE_PROMPT = "a red fox running through fresh snow, golden hour", "blurry, low quality"
# The resolution each video model was trained at (full size); tiny runs use the tiny models' defaults.
FULL_SIZE = {"Animatediff": (512, 512), "ModelScope": (256, 256), "VideoCrafter": (320, 512)}
VARIANTS = (("standard", False), ("iv_mixed", True))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", choices=sorted(PIPELINES), default="Animatediff")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--tiny", action="store_true", help="tiny random models (CPU, seconds)")
    size.add_argument("--full-size", action="store_true", help="real architectures, random weights (GPU)")
    p.add_argument("--steps", type=int, default=10, help="inference steps N (default 10)")
    p.add_argument("--frames", type=int, help="frames (default 16 full size, 8 tiny)")
    p.add_argument("--height", type=int, help="pixels (default: the model's training size full size, the tiny "
                   "models' default tiny)")
    p.add_argument("--width", type=int)
    p.add_argument("--zz", type=int, help="IV-mixed zz (default: the pipeline's)")
    p.add_argument("--device", help="default cuda when available, else cpu")
    p.add_argument("--dtype", choices=DTYPE_NAMES, help="default fp16 on CUDA, fp32 on CPU")
    p.add_argument("--repeats", type=int, default=3, help="measured runs per variant; the median is shown")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs per variant first (compilation, caches)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default 1 with --tiny: the tiny networks "
                   "run several times faster on one thread; else torch's default)")
    p.add_argument("--image-batch-size", type=int, help="frames per image-UNet call (default all)")
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="none")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--vae-slicing", action="store_true")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


# -- instrumentation ----------------------------------------------------------------------------------------


class Clock:
    """Wall-clock timer that waits for queued CUDA work first, so a boundary means the work is done."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class Recorder:
    """Accumulates the time spent in named sections and inside the UNets' forward calls of one run."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.sections: Dict[str, float] = {"encode": 0.0, "denoise": 0.0, "decode": 0.0}
        self.first_network: Optional[float] = None
        self.last_step: Optional[float] = None
        self.network_s: Dict[str, float] = {"video": 0.0, "image": 0.0}
        self.unet_calls: Dict[str, int] = {"video": 0, "image": 0}

    def hook_section(self, module: torch.nn.Module, section: str) -> List:
        started: List[float] = []

        def pre(*_):
            started.append(self.clock())

        def post(*_):
            self.sections[section] += self.clock() - started.pop()

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def hook_network(self, module: torch.nn.Module, key: str) -> List:
        started: List[float] = []

        def pre(*_):
            now = self.clock()
            started.append(now)
            if self.first_network is None:
                self.first_network = now

        def post(*_):
            self.network_s[key] += self.clock() - started.pop()
            self.unet_calls[key] += 1

        return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


@contextmanager
def instrumented(pipe, recorder: Recorder):
    """Time one call through public hooks only: forward hooks on the text encoders and the UNets, and the
    pipeline's step callback (see :func:`run_once`). Removes every hook afterwards."""
    handles = recorder.hook_network(pipe.unet, "video")
    if getattr(pipe, "image_unet", None) is not None:
        handles += recorder.hook_network(pipe.image_unet, "image")
    for name in ("text_encoder", "image_text_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            handles += recorder.hook_section(module, "encode")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class PeakMemory:
    """Peak memory of one run: CUDA peak allocated, or the process's peak RSS reset before the run."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.kind = "cuda_peak_allocated" if cuda else "rss_peak"

    @staticmethod
    def _status_kb(field: str) -> Optional[int]:
        try:
            with open("/proc/self/status") as f:
                match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        except OSError:
            return None
        return int(match.group(1)) if match else None

    def start(self) -> Dict[str, float]:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return {"allocated_before_mb": torch.cuda.memory_allocated() / 2**20}
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
            reset = True
        except OSError:
            reset = False
            logger.warning("cannot reset the peak RSS here: the figure is the process's peak so far")
        return {"rss_before_mb": (self._status_kb("VmRSS") or 0) / 1024, "peak_reset": reset}

    def peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        hwm = self._status_kb("VmHWM")
        if hwm is not None:
            return hwm / 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the benchmark --------------------------------------------------------------------------------------------


def build_pipeline(args, folder: str, device: torch.device, dtype: torch.dtype):
    if args.tiny:
        from ivmixed.testing import save_tiny_checkpoints

        cls = PIPELINES[args.pipeline].pipeline_class()
        return cls.from_checkpoints(**save_tiny_checkpoints(folder, args.pipeline), dtype=dtype)
    from full_size_models import full_size_pipeline

    # Built directly on the GPU: random initialisation of ~2.5e9 parameters on the CPU takes minutes.
    return full_size_pipeline(args.pipeline, folder, dtype=dtype, device=device if device.type == "cuda" else "cpu")


def run_once(pipe, args, iv_mixed: bool, zz: int, recorder: Recorder, memory: PeakMemory) -> Dict:
    """One measured call. Denoising runs from the first UNet call to the last step callback; decoding from there
    to the end of the call; prompt encoding is the time inside the text encoders."""

    def step_end(pipeline, i, t, tensors):
        recorder.last_step = recorder.clock()
        return {}

    kwargs = dict(
        prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_frames=args.frames, height=args.height, width=args.width,
        num_inference_steps=args.steps, generator=torch.Generator("cpu").manual_seed(0), output_type="np",
        iv_mixed=iv_mixed, zz=zz, image_batch_size=args.image_batch_size, callback_on_step_end=step_end,
    )
    recorder.reset()
    before = memory.start()
    start = recorder.clock()
    with instrumented(pipe, recorder):
        out = pipe(**kwargs)
    end = recorder.clock()
    wall = end - start
    recorder.sections["denoise"] = recorder.last_step - recorder.first_network
    recorder.sections["decode"] = end - recorder.last_step
    network = sum(recorder.network_s.values())
    denoise = recorder.sections["denoise"]
    return {
        "wall_s": wall,
        **{f"{k}_s": v for k, v in recorder.sections.items()},
        "other_s": wall - sum(recorder.sections.values()),
        "network_s": dict(recorder.network_s),
        "sampler_overhead_s": denoise - network,
        "sampler_overhead_share": (denoise - network) / denoise if denoise else 0.0,
        "network_calls": dict(out.network_calls),
        "unet_forward_calls": dict(recorder.unet_calls),
        "peak_memory_mb": memory.peak_mb(),
        **before,
    }


def summarise(runs: List[Dict]) -> Dict:
    """The median of every timing and memory figure over the repeats, plus each repeat's wall time."""
    first = runs[0]
    out: Dict = {}
    for key, value in first.items():
        if isinstance(value, dict) and all(isinstance(v, float) for v in value.values()):
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in value}
        elif isinstance(value, float):
            out[key] = statistics.median(r[key] for r in runs)
        else:
            out[key] = value
    out["wall_s_each"] = [r["wall_s"] for r in runs]
    return out


def machine_info(device: torch.device) -> Dict:
    import diffusers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def benchmark(args) -> Dict:
    device, dtype_name, dtype = pick_device_and_dtype(args.device, args.dtype)
    device = torch.device(device)
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    zz = args.zz if args.zz is not None else PIPELINES[args.pipeline].defaults["zz"]
    if args.frames is None:
        args.frames = 8 if args.tiny else 16
    if args.full_size:
        args.height = args.height or FULL_SIZE[args.pipeline][0]
        args.width = args.width or FULL_SIZE[args.pipeline][1]
    cuda = device.type == "cuda"
    recorder, memory = Recorder(Clock(cuda)), PeakMemory(cuda)

    with tempfile.TemporaryDirectory(prefix="ivmixed-bench-") as folder:
        start = time.perf_counter()
        pipe = build_pipeline(args, folder, device, dtype)
        build_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    if args.height is None or args.width is None:
        default = pipe._default_size() if hasattr(pipe, "_default_size") else (
            (pipe.unet.config.sample_size * pipe.vae_scale_factor,) * 2)
        args.height, args.width = args.height or default[0], args.width or default[1]
    applied = apply_performance_options(
        pipe, device=device, offload=args.offload, compile=args.compile, channels_last=args.channels_last,
        vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling,
    )
    results = {}
    for name, iv_mixed in VARIANTS:
        for _ in range(args.warmup):
            run_once(pipe, args, iv_mixed, zz, recorder, memory)
        runs = [run_once(pipe, args, iv_mixed, zz, recorder, memory) for _ in range(args.repeats)]
        results[name] = summarise(runs)
        results[name]["expected_network_calls"] = count_network_calls(
            args.steps, IVMixedSettings(zz=zz) if iv_mixed else None
        )
    std, ivm = results["standard"], results["iv_mixed"]
    return {
        "machine": machine_info(device),
        "settings": {
            "pipeline": args.pipeline, "models": "tiny" if args.tiny else "full-size (random weights)",
            "steps": args.steps, "frames": args.frames, "height": args.height, "width": args.width, "zz": zz,
            "device": str(device), "dtype": dtype_name, "repeats": args.repeats, "warmup": args.warmup,
            "image_batch_size": args.image_batch_size, "prompt": PROMPT, "build_s": build_s,
        },
        "performance": applied,
        "memory_kind": memory.kind,
        "results": results,
        "ratios": {
            "denoise_iv_mixed_over_standard": ivm["denoise_s"] / std["denoise_s"],
            "network_calls_iv_mixed_over_standard":
                sum(ivm["network_calls"].values()) / sum(std["network_calls"].values()),
            "network_s_iv_mixed_over_standard": sum(ivm["network_s"].values()) / sum(std["network_s"].values()),
        },
    }


def format_table(report: Dict) -> str:
    s, results = report["settings"], report["results"]
    rows = [
        ("wall time (s)", lambda r: f"{r['wall_s']:.3f}"),
        ("  prompt encoding (s)", lambda r: f"{r['encode_s']:.3f}"),
        ("  denoising (s)", lambda r: f"{r['denoise_s']:.3f}"),
        ("  decoding (s)", lambda r: f"{r['decode_s']:.3f}"),
        ("  other (s)", lambda r: f"{r['other_s']:.3f}"),
        ("network time, video UNet (s)", lambda r: f"{r['network_s']['video']:.3f}"),
        ("network time, image UNet (s)", lambda r: f"{r['network_s']['image']:.3f}"),
        ("sampler overhead (s)", lambda r: f"{r['sampler_overhead_s']:.4f}"),
        ("sampler overhead / denoising", lambda r: f"{100 * r['sampler_overhead_share']:.2f}%"),
        ("guided calls video / image", lambda r: f"{r['network_calls']['video']} / {r['network_calls']['image']}"),
        ("UNet forward calls video / image",
         lambda r: f"{r['unet_forward_calls']['video']} / {r['unet_forward_calls']['image']}"),
        (f"peak memory, {report['memory_kind']} (MiB)", lambda r: f"{r['peak_memory_mb']:.0f}"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [
        f"{s['pipeline']} ({s['models']}), {s['frames']} frames, {s['height']}x{s['width']} px, "
        f"{s['steps']} steps, zz={s['zz']}, {s['device']} {s['dtype']}, median of {s['repeats']} "
        f"(after {s['warmup']} warm-up)",
        f"machine: {report['machine']['cpu']}, {report['machine']['cpu_cores']} cores, torch {report['machine']['torch']}"
        + (f", {report['machine']['gpu']}" if "gpu" in report["machine"] else ""),
        "options: " + ", ".join(f"{k}={v}" for k, v in report["performance"].items()
                                if k in ("offload", "compile", "channels_last", "vae_slicing", "vae_tiling"))
        + f", image_batch_size={s['image_batch_size']}",
        "",
        f"{'':{width}}  {'standard':>12}  {'IV-mixed':>12}",
    ]
    for label, cell in rows:
        lines.append(f"{label:{width}}  {cell(results['standard']):>12}  {cell(results['iv_mixed']):>12}")
    r = report["ratios"]
    lines.append("")
    lines.append(f"IV-mixed / standard: denoising {r['denoise_iv_mixed_over_standard']:.2f}x, guided calls "
                 f"{r['network_calls_iv_mixed_over_standard']:.2f}x, network time {r['network_s_iv_mixed_over_standard']:.2f}x")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    report = benchmark(args)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
