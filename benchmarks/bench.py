"""Time standard and IV-mixed generation of one pipeline: where the wall time goes, the UNets' FLOPs, peak memory.

    python benchmarks/bench.py --pipeline Animatediff --tiny                  # CPU, seconds
    python benchmarks/bench.py --pipeline Animatediff --full-size --json out.json   # GPU: 512x512x16, fp16

``--tiny`` uses the random tiny models of ``ivmixed.testing``; ``--full-size`` builds the real architectures
with random weights from their configs (``full_size_models.py`` beside this script; no download), so timings,
FLOPs and memory are those of the real networks.

The variants alternate (standard, IV-mixed, standard, IV-mixed, ...) so that drift of the machine (clocks,
heat, other load) does not fall on one variant: ``--warmup`` unmeasured rounds, then ``--repeats`` rounds of
end-to-end runs and ``--breakdown-repeats`` rounds of breakdown runs, interleaved too. Tables show medians.

What is measured, per run:
- end-to-end wall time: a plain call with no hooks, CUDA synchronised only before and after it;
- the breakdown (hooked runs, skipped with ``--no-breakdown``): wall time split into prompt encoding (inside
  the text encoders), denoising (first UNet call to the last step callback), decoding (from there to the end of
  the call: VAE and post-processing) and the rest (input checks, latent preparation); network time: the wall
  time inside the UNets' forward calls (timed by hooks on the modules, with CUDA synchronised at each boundary,
  which itself costs time on a GPU); the sampler's overhead is denoising minus network time, i.e. everything the
  loop adds: guidance combination, DDIM moves, scheduler steps, reshapes, callbacks;
- guided network calls per model (one covers the unconditional and conditional halves) and raw UNet calls;
- UNet FLOPs (``flops.py``): every UNet call's input shapes are recorded in the first run of each variant and
  one forward per distinct shape is counted with ``FlopCounterMode`` on a shapes-only (``meta``) copy of the
  network, after the timed runs; achieved TFLOP/s and the fraction of the GPU's dense fp16/bf16 peak
  (``--peak-tflops``, default from the GPU's name where known);
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
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in (ROOT, os.path.dirname(os.path.abspath(__file__))):  # ivmixed, and the modules beside this
    if folder not in sys.path:
        sys.path.insert(0, folder)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from flops import PEAK_DTYPES, CallRecorder, count_recorded, peak_tflops, per_guided_call  # noqa: E402
from ivmixed.config import COMPILE_MODES  # noqa: E402
from ivmixed.performance import OFFLOAD_MODES, apply_performance_options  # noqa: E402
from ivmixed.registry import PIPELINES  # noqa: E402
from ivmixed.runtime import DTYPE_NAMES, pick_device_and_dtype, quiet_libraries  # noqa: E402
from ivmixed.sampler import IVMixedSettings, count_network_calls  # noqa: E402

logger = logging.getLogger("ivmixed.bench")

PROMPT, NEGATIVE_PROMPT = "a red fox running through fresh snow, golden hour", "blurry, low quality"
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
    p.add_argument("--repeats", type=int, default=3, help="measured end-to-end runs per variant (median shown)")
    p.add_argument("--breakdown-repeats", type=int, help="measured breakdown runs per variant (default "
                   "--repeats)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the hooked breakdown runs")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs per variant first (compilation, caches)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default 1 with --tiny: the tiny networks "
                   "run several times faster on one thread; else torch's default)")
    p.add_argument("--image-batch-size", type=int, help="frames per image-UNet call (default all)")
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="none")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--vae-slicing", action="store_true")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for the fraction-of-peak rows "
                   "(default: dense fp16/bf16 peak by GPU name for H100, H200, A100, RTX 4090; none otherwise)")
    p.add_argument("--no-flops", action="store_true", help="skip counting the UNets' FLOPs")
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


def run_order(warmup: int, repeats: int, breakdown_repeats: int,
              names: Tuple[str, ...] = tuple(n for n, _ in VARIANTS)) -> List[Tuple[str, str]]:
    """The runs of a benchmark as ``(kind, variant)``, kind ``warmup``, ``end_to_end`` or ``breakdown``: the
    variants alternate within every round (A, B, A, B, ...), and measured rounds alternate the two kinds."""
    order = [("warmup", name) for _ in range(warmup) for name in names]
    for i in range(max(repeats, breakdown_repeats)):
        if i < repeats:
            order += [("end_to_end", name) for name in names]
        if i < breakdown_repeats:
            order += [("breakdown", name) for name in names]
    return order


def recording_runs(order: List[Tuple[str, str]]) -> Dict[str, int]:
    """Index in ``order`` of the run of each variant whose UNet calls are recorded for counting FLOPs: its first
    warm-up or breakdown run, so that no end-to-end run carries a hook; its first run when it has neither."""
    chosen: Dict[str, int] = {}
    for i, (kind, name) in enumerate(order):
        if kind != "end_to_end" and name not in chosen:
            chosen[name] = i
    for i, (kind, name) in enumerate(order):
        chosen.setdefault(name, i)
    return chosen


def build_pipeline(args, folder: str, device: torch.device, dtype: torch.dtype):
    if args.tiny:
        from ivmixed.testing import save_tiny_checkpoints

        cls = PIPELINES[args.pipeline].pipeline_class()
        return cls.from_checkpoints(**save_tiny_checkpoints(folder, args.pipeline), dtype=dtype)
    from full_size_models import full_size_pipeline

    # Built directly on the GPU: random initialisation of ~2.5e9 parameters on the CPU takes minutes.
    return full_size_pipeline(args.pipeline, folder, dtype=dtype, device=device if device.type == "cuda" else "cpu")


def call_kwargs(args, iv_mixed: bool, zz: int, **extra) -> Dict:
    return dict(
        prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_frames=args.frames, height=args.height, width=args.width,
        num_inference_steps=args.steps, generator=torch.Generator("cpu").manual_seed(0), output_type="np",
        iv_mixed=iv_mixed, zz=zz, image_batch_size=args.image_batch_size, **extra,
    )


def run_end_to_end(pipe, args, iv_mixed: bool, zz: int, clock: Clock, memory: PeakMemory) -> Dict:
    """One plain call: no hooks, no callback; CUDA synchronised only before and after it."""
    kwargs = call_kwargs(args, iv_mixed, zz)
    before = memory.start()
    start = clock()
    out = pipe(**kwargs)
    wall = clock() - start
    return {"wall_s": wall, "peak_memory_mb": memory.peak_mb(), "network_calls": dict(out.network_calls), **before}


def run_once(pipe, args, iv_mixed: bool, zz: int, recorder: Recorder, memory: PeakMemory) -> Dict:
    """One breakdown call. Denoising runs from the first UNet call to the last step callback; decoding from there
    to the end of the call; prompt encoding is the time inside the text encoders."""

    def step_end(pipeline, i, t, tensors):
        recorder.last_step = recorder.clock()
        return {}

    kwargs = call_kwargs(args, iv_mixed, zz, callback_on_step_end=step_end)
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


def summarise(runs: List[Dict]) -> Optional[Dict]:
    """The median of every timing and memory figure over the repeats, plus each repeat's wall time."""
    if not runs:
        return None
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


def choose_peak(args, machine: Dict, dtype_name: str) -> Dict:
    """The peak TFLOP/s the fraction-of-peak rows divide by, and where it comes from (``None``: no fraction)."""
    if args.peak_tflops:
        return {"tflops": args.peak_tflops, "source": "--peak-tflops"}
    gpu = machine.get("gpu")
    if gpu is None:
        return {"tflops": None, "source": "no peak known for a CPU; pass --peak-tflops"}
    if dtype_name not in PEAK_DTYPES:
        return {"tflops": None,
                "source": f"the known peaks are fp16/bf16, this run is {dtype_name}; pass --peak-tflops"}
    peak = peak_tflops(gpu)
    if peak is None:
        return {"tflops": None, "source": f"no peak known for {gpu}; pass --peak-tflops"}
    return {"tflops": peak, "source": f"dense fp16/bf16 peak of {gpu}"}


def throughput(flops: Optional[Dict], e2e: Optional[Dict], breakdown: Optional[Dict], peak: Optional[float]) -> Dict:
    """Achieved TFLOP/s of the UNets' work over the end-to-end wall time, the (hooked) denoising time and the
    network time, and their fractions of ``peak``."""
    out: Dict = {}
    if not flops:
        return out
    tflop = flops["total"] / 1e12
    times = {"end_to_end": e2e and e2e["wall_s"], "denoising": breakdown and breakdown["denoise_s"],
             "network": breakdown and sum(breakdown["network_s"].values())}
    for key, seconds in times.items():
        rate = tflop / seconds if seconds else None
        out[f"tflops_per_s_{key}"] = rate
        out[f"peak_fraction_{key}"] = rate / peak if rate is not None and peak else None
    return out


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
        from full_size_models import FULL_SIZE

        args.height = args.height or FULL_SIZE[args.pipeline][0]
        args.width = args.width or FULL_SIZE[args.pipeline][1]
    breakdown_repeats = 0 if args.no_breakdown else (
        args.repeats if args.breakdown_repeats is None else args.breakdown_repeats)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    cuda = device.type == "cuda"
    clock = Clock(cuda)
    recorder, memory = Recorder(clock), PeakMemory(cuda)

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
        pipe, device=device, offload=args.offload, compile=args.compile, compile_mode=args.compile_mode,
        channels_last=args.channels_last, vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling,
    )
    unets = {"video": pipe.unet}
    if getattr(pipe, "image_unet", None) is not None:
        unets["image"] = pipe.image_unet
    order = run_order(args.warmup, args.repeats, breakdown_repeats)
    recorded = recording_runs(order)
    recorders = {name: CallRecorder() for name, _ in VARIANTS}
    runs: Dict[str, Dict[str, List[Dict]]] = {name: {"end_to_end": [], "breakdown": []} for name, _ in VARIANTS}
    calls: Dict[str, Dict[str, int]] = {}
    start = time.perf_counter()
    for i, (kind, name) in enumerate(order):
        iv_mixed = dict(VARIANTS)[name]
        handles = [recorders[name].attach(m, k) for k, m in unets.items()] if recorded[name] == i else []
        try:
            if kind == "breakdown":
                result = run_once(pipe, args, iv_mixed, zz, recorder, memory)
            else:
                result = run_end_to_end(pipe, args, iv_mixed, zz, clock, memory)
        finally:
            for handle in handles:
                handle.remove()
        calls[name] = result["network_calls"]
        if kind != "warmup":
            runs[name][kind].append(result)
    runs_s = time.perf_counter() - start

    machine = machine_info(device)
    peak = choose_peak(args, machine, dtype_name)
    start = time.perf_counter()
    results, copies = {}, {}
    for name, iv_mixed in VARIANTS:
        e2e, breakdown = summarise(runs[name]["end_to_end"]), summarise(runs[name]["breakdown"])
        flops = None
        if not args.no_flops:
            models = count_recorded(recorders[name], unets, copies=copies)
            flops = {"models": models, "total": sum(m["flops"] for m in models.values()),
                     "per_guided_call": per_guided_call(models, calls[name])}
        results[name] = {
            "network_calls": calls[name],
            "expected_network_calls": count_network_calls(args.steps, IVMixedSettings(zz=zz) if iv_mixed else None),
            "unet_forward_calls": recorders[name].forward_calls(),
            "end_to_end": e2e,
            "breakdown": breakdown,
            "flops": flops,
            "throughput": throughput(flops, e2e, breakdown, peak["tflops"]),
        }
    flops_s = time.perf_counter() - start
    std, ivm = results["standard"], results["iv_mixed"]
    ratios = {
        "end_to_end_iv_mixed_over_standard": ivm["end_to_end"]["wall_s"] / std["end_to_end"]["wall_s"],
        "network_calls_iv_mixed_over_standard":
            sum(ivm["network_calls"].values()) / sum(std["network_calls"].values()),
    }
    if std["flops"]:
        ratios["flops_iv_mixed_over_standard"] = ivm["flops"]["total"] / std["flops"]["total"]
    if std["breakdown"]:
        ratios["denoise_iv_mixed_over_standard"] = ivm["breakdown"]["denoise_s"] / std["breakdown"]["denoise_s"]
        ratios["network_s_iv_mixed_over_standard"] = (sum(ivm["breakdown"]["network_s"].values())
                                                      / sum(std["breakdown"]["network_s"].values()))
    return {
        "machine": machine,
        "settings": {
            "pipeline": args.pipeline, "models": "tiny" if args.tiny else "full-size (random weights)",
            "steps": args.steps, "frames": args.frames, "height": args.height, "width": args.width, "zz": zz,
            "device": str(device), "dtype": dtype_name, "repeats": args.repeats,
            "breakdown_repeats": breakdown_repeats, "warmup": args.warmup, "order": [list(r) for r in order],
            "image_batch_size": args.image_batch_size, "prompt": PROMPT, "build_s": build_s, "runs_s": runs_s,
            "flops_s": flops_s,
        },
        "performance": applied,
        "memory_kind": memory.kind,
        "peak": peak,
        "results": results,
        "ratios": ratios,
    }


# -- the table ------------------------------------------------------------------------------------------------


def flop_unit(report: Dict) -> Tuple[str, float]:
    """TFLOP for full-size figures, GFLOP when a run's UNet work is under one TFLOP (the tiny models)."""
    totals = [r["flops"]["total"] for r in report["results"].values() if r["flops"]]
    return ("TFLOP", 1e12) if not totals or max(totals) >= 1e12 else ("GFLOP", 1e9)


def _get(result: Dict, *path):
    value = result
    for key in path:
        if value is None:
            return None
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(report: Dict) -> List[Tuple[str, callable]]:
    """``(label, cell(result))`` of every row of the text table (and of the GPU suite's Markdown table)."""
    unit, scale = flop_unit(report)
    peak = report["peak"]

    def pair(a, b, spec):
        return lambda r: f"{_fmt(a(r), spec)} / {_fmt(b(r), spec)}"

    def per_call(model):
        return lambda r: (None if _get(r, "flops", "per_guided_call", model) is None
                          else r["flops"]["per_guided_call"][model] / scale)

    def rate(key):
        return lambda r: _fmt(None if _get(r, "throughput", f"tflops_per_s_{key}") is None
                              else r["throughput"][f"tflops_per_s_{key}"] * 1e12 / scale, ".4g")

    def fraction(key):
        return lambda r: _fmt(None if _get(r, "throughput", f"peak_fraction_{key}") is None
                              else 100 * r["throughput"][f"peak_fraction_{key}"], ".1f")

    b = ("breakdown",)
    rows = [
        ("end-to-end wall time, no hooks (s)", lambda r: _fmt(_get(r, "end_to_end", "wall_s"), ".3f")),
        ("breakdown run (hooked) wall time (s)", lambda r: _fmt(_get(r, *b, "wall_s"), ".3f")),
        ("  prompt encoding (s)", lambda r: _fmt(_get(r, *b, "encode_s"), ".3f")),
        ("  denoising (s)", lambda r: _fmt(_get(r, *b, "denoise_s"), ".3f")),
        ("  decoding (s)", lambda r: _fmt(_get(r, *b, "decode_s"), ".3f")),
        ("  other (s)", lambda r: _fmt(_get(r, *b, "other_s"), ".3f")),
        ("network time, video UNet (s)", lambda r: _fmt(_get(r, *b, "network_s", "video"), ".3f")),
        ("network time, image UNet (s)", lambda r: _fmt(_get(r, *b, "network_s", "image"), ".3f")),
        ("sampler overhead (s)", lambda r: _fmt(_get(r, *b, "sampler_overhead_s"), ".4f")),
        ("sampler overhead / denoising",
         lambda r: _fmt(None if r["breakdown"] is None else 100 * r["breakdown"]["sampler_overhead_share"], ".2f")
         + ("%" if r["breakdown"] else "")),
        ("guided calls video / image", lambda r: f"{r['network_calls']['video']} / {r['network_calls']['image']}"),
        ("UNet forward calls video / image",
         lambda r: f"{r['unet_forward_calls'].get('video', 0)} / {r['unet_forward_calls'].get('image', 0)}"),
        (f"UNet {unit} per guided call video / image", pair(per_call("video"), per_call("image"), ".4g")),
        (f"UNet {unit} per run",
         lambda r: _fmt(None if r["flops"] is None else r["flops"]["total"] / scale, ".4g")),
        (f"{unit}/s over end-to-end wall time", rate("end_to_end")),
        (f"{unit}/s over denoising (hooked)", rate("denoising")),
        (f"{unit}/s over network time (hooked)", rate("network")),
    ]
    if peak["tflops"]:
        rows += [(f"% of peak {peak['tflops']:g} TFLOP/s, end-to-end", fraction("end_to_end")),
                 (f"% of peak {peak['tflops']:g} TFLOP/s, network time", fraction("network"))]
    else:
        rows.append(("% of peak", lambda r: "no peak"))
    rows.append((f"peak memory, {report['memory_kind']} (MiB)",
                 lambda r: _fmt(_get(r, "end_to_end", "peak_memory_mb") or _get(r, *b, "peak_memory_mb"), ".0f")))
    return rows


def ratio_line(report: Dict) -> str:
    r = report["ratios"]
    parts = [f"end-to-end {r['end_to_end_iv_mixed_over_standard']:.2f}x"]
    if "denoise_iv_mixed_over_standard" in r:
        parts.append(f"denoising {r['denoise_iv_mixed_over_standard']:.2f}x")
    parts.append(f"guided calls {r['network_calls_iv_mixed_over_standard']:.2f}x")
    if "flops_iv_mixed_over_standard" in r:
        parts.append(f"UNet FLOPs {r['flops_iv_mixed_over_standard']:.2f}x")
    if "network_s_iv_mixed_over_standard" in r:
        parts.append(f"network time {r['network_s_iv_mixed_over_standard']:.2f}x")
    return "IV-mixed / standard: " + ", ".join(parts)


def format_table(report: Dict) -> str:
    s, results, machine = report["settings"], report["results"], report["machine"]
    rows = table_rows(report)
    width = max(len(label) for label, _ in rows)
    lines = [
        f"{s['pipeline']} ({s['models']}), {s['frames']} frames, {s['height']}x{s['width']} px, "
        f"{s['steps']} steps, zz={s['zz']}, {s['device']} {s['dtype']}; median of {s['repeats']} end-to-end and "
        f"{s['breakdown_repeats']} breakdown runs per variant after {s['warmup']} warm-up, variants interleaved",
        f"machine: {machine['cpu']}, {machine['cpu_cores']} cores, torch {machine['torch']}"
        + (f", {machine['gpu']}" if "gpu" in machine else ""),
        "options: " + ", ".join(f"{k}={v}" for k, v in report["performance"].items()
                                if k in ("offload", "compile", "compile_mode", "channels_last", "vae_slicing",
                                         "vae_tiling"))
        + f", image_batch_size={s['image_batch_size']}",
        f"peak: {report['peak']['tflops'] or 'none'} ({report['peak']['source']})",
        "",
    ]
    cells = [(label, cell(results["standard"]), cell(results["iv_mixed"])) for label, cell in rows]
    column = max(14, *(len(c) for _, a, b in cells for c in (a, b)))
    lines.append(f"{'':{width}}  {'standard':>{column}}  {'IV-mixed':>{column}}")
    for label, a, b in cells:
        lines.append(f"{label:{width}}  {a:>{column}}  {b:>{column}}")
    lines += ["", ratio_line(report)]
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
