"""The GPU benchmark suite that ``gpu.sh`` runs: every figure of docs/BENCHMARKS.md's GPU questions in one
process and one Markdown table, in under 8 minutes on an H100-class GPU.

    bash benchmarks/gpu.sh [RESULTS.md]         # default benchmarks/gpu-results.md (and .json beside it)
    bash benchmarks/gpu.sh --tiny [RESULTS.md]  # the same sequence, tiny models on the CPU: checks the plumbing

Without a CUDA GPU (and without ``--tiny``) it prints one line and exits 0. The table is rewritten after every
step, so a run stopped part-way keeps the figures of the steps it finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "gpu-results.md")
DEFAULT_TINY_OUTPUT = os.path.join(HERE, "gpu-results-tiny.md")

FULL = ["--full-size", "--dtype", "fp16", "--frames", "16", "--steps", "50"]
TINY = ["--tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "2", "--steps", "2"]
# (key, title, bench.py arguments, upper estimate in seconds on an H100, build included). Per-run estimates on an
# H100: IV-mixed AnimateDiff at 50 steps 10-20 s, standard 3-5 s (ModelScope and VideoCrafter2 in proportion to
# their UNet FLOPs: about 0.5x and 0.7x); building random full-size weights on the GPU a few seconds; compiling
# both UNets 1-3 min. The compile step, the least predictable, runs last.
SUITE = (
    ("animatediff", "AnimateDiff", ["--pipeline", "Animatediff", "--warmup", "1", "--repeats", "2",
                                             "--breakdown-repeats", "1"], 100),
    ("animatediff-offload", "AnimateDiff, --offload model, no warm-up (for its peak memory)",
     ["--pipeline", "Animatediff", "--offload", "model", "--warmup", "0", "--repeats", "1", "--no-breakdown"], 40),
    ("modelscope", "ModelScope", ["--pipeline", "ModelScope", "--warmup", "1", "--repeats", "1",
                                            "--breakdown-repeats", "1"], 50),
    ("videocrafter", "VideoCrafter2", ["--pipeline", "VideoCrafter", "--warmup", "1", "--repeats", "1",
                                                 "--breakdown-repeats", "1"], 70),
    ("animatediff-compile", "AnimateDiff, --compile (the warm-up absorbs compilation)",
     ["--pipeline", "Animatediff", "--compile", "--warmup", "1", "--repeats", "1", "--no-breakdown"], 200),
)
# Options a CPU cannot run: --tiny runs those steps without them and says so.
GPU_ONLY = {"--compile": 0, "--offload": 1}


def tiny_arguments(argv: List[str]) -> Tuple[List[str], List[str]]:
    """``argv`` without the GPU-only options, and the options dropped."""
    out, dropped, i = [], [], 0
    while i < len(argv):
        extra = GPU_ONLY.get(argv[i])
        if extra is None:
            out.append(argv[i])
            i += 1
        else:
            dropped.append(" ".join(argv[i:i + 1 + extra]))
            i += 1 + extra
    return out, dropped


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(records: List[Dict], tiny: bool, elapsed_s: float, done: bool) -> str:
    """The results table: one row per step and variant, then each step's IV-mixed / standard ratios."""
    lines = ["# GPU benchmark results" if not tiny else "# Benchmark suite, tiny models on the CPU (plumbing check)",
             ""]
    machine = next((r["report"]["machine"] for r in records if r.get("report")), None)
    if machine:
        where = machine.get("gpu") or f"CPU {machine['cpu']}"
        lines.append(f"Machine: {where}, CUDA {machine.get('cuda', '-')}, torch {machine['torch']}, diffusers "
                     f"{machine['diffusers']}, {machine['cpu_cores']} CPU cores.")
    peak = next((r["report"]["peak"] for r in records if r.get("report")), None)
    if peak:
        lines.append(f"Peak for the % columns: {peak['tflops'] or 'none'} ({peak['source']}).")
    lines.append(f"Elapsed: {elapsed_s:.0f} s{'' if done else ' (not finished)'}. Medians; variants interleaved; "
                 "UNet FLOPs counted per call shape with FlopCounterMode. docs/BENCHMARKS.md explains every column.")
    if tiny:
        lines.append("Tiny random models, 2 frames, 2 steps, fp32 on the CPU: the figures check the plumbing only.")
    lines.append("")
    unit, scale = "TFLOP", 1e12
    totals = [r["report"]["results"][v]["flops"]["total"] for r in records if r.get("report")
              for v in ("standard", "iv_mixed") if r["report"]["results"][v]["flops"]]
    if totals and max(totals) < 1e12:
        unit, scale = "GFLOP", 1e9
    header = ["step", "variant", "end-to-end (s)", "denoising (s)", "network video / image (s)",
              "sampler overhead", "guided calls video / image", f"{unit} per guided call video / image",
              f"{unit} per run", f"{unit}/s end-to-end", f"{unit}/s network", "% of peak end-to-end / network",
              "peak memory MiB (at start)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in records:
        report = record.get("report")
        if report is None:
            error = record.get("error", "not run").replace("|", "/")
            lines.append(f"| {record['key']} | {error} |" + " |" * (len(header) - 2))
            continue
        for variant, label in (("standard", "standard"), ("iv_mixed", "IV-mixed")):
            r = report["results"][variant]
            b, e, f, t = r["breakdown"], r["end_to_end"], r["flops"], r["throughput"]
            per_call = (f or {}).get("per_guided_call", {})
            before = e.get("allocated_before_mb", e.get("rss_before_mb"))

            def rate(key):
                value = t.get(f"tflops_per_s_{key}")
                return None if value is None else value * 1e12 / scale

            def pct(key):
                value = t.get(f"peak_fraction_{key}")
                return None if value is None else 100 * value

            cells = [
                record["key"], label, _cell(e["wall_s"], ".2f"), _cell(b and b["denoise_s"], ".2f"),
                f"{_cell(b and b['network_s']['video'], '.2f')} / {_cell(b and b['network_s']['image'], '.2f')}",
                "-" if b is None else f"{100 * b['sampler_overhead_share']:.2f}%",
                f"{r['network_calls']['video']} / {r['network_calls']['image']}",
                " / ".join(_cell(None if per_call.get(m) is None else per_call[m] / scale, ".4g")
                           for m in ("video", "image")),
                _cell(None if f is None else f["total"] / scale, ".4g"),
                _cell(rate("end_to_end"), ".4g"), _cell(rate("network"), ".4g"),
                f"{_cell(pct('end_to_end'), '.1f')} / {_cell(pct('network'), '.1f')}",
                f"{e['peak_memory_mb']:.0f} ({_cell(before, '.0f')})",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| step | what | frames x height x width, steps, dtype | runs per variant | options dropped "
              "(--tiny) | IV-mixed / standard | elapsed (s) | estimate on an H100 (s) |",
              "|---|---|---|---|---|---|---|---|"]
    from bench import ratio_line

    for record in records:
        report = record.get("report")
        ratios = ratio_line(report).split(": ", 1)[1] if report else "-"
        size = runs = "-"
        if report:
            s = report["settings"]
            size = f"{s['frames']}x{s['height']}x{s['width']}, {s['steps']}, {s['dtype']}"
            runs = f"{s['warmup']} warm-up, {s['repeats']} end-to-end, {s['breakdown_repeats']} breakdown"
        lines.append(f"| {record['key']} | {record['title']} | {size} | {runs} | {', '.join(record['dropped']) or '-'} "
                     f"| {ratios} | {_cell(record.get('elapsed_s'), '.0f')} | {record['estimate_s']} |")
    return "\n".join(lines) + "\n"


def run_suite(output: str, tiny: bool, peak_tflops: Optional[float] = None) -> List[Dict]:
    import torch

    import bench
    from ivmixed.runtime import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    records: List[Dict] = []
    base = TINY if tiny else FULL
    extra = ["--peak-tflops", str(peak_tflops)] if peak_tflops else []
    total_estimate = sum(s[3] for s in SUITE)
    print(f"{len(SUITE)} steps, at most about {total_estimate / 60:.0f} minutes on an H100 (the sum of the steps' "
          "upper estimates)"
          + (" (tiny models on the CPU: much less)" if tiny else ""), flush=True)
    for n, (key, title, argv, estimate) in enumerate(SUITE, 1):
        argv = base + argv + extra
        dropped: List[str] = []
        if tiny:
            argv, dropped = tiny_arguments(argv)
        record = {"key": key, "title": title, "argv": argv, "dropped": dropped, "estimate_s": estimate}
        records.append(record)
        print(f"[{n}/{len(SUITE)}] {title}: bench.py {' '.join(argv)}", flush=True)
        step_start = time.perf_counter()
        try:
            record["report"] = bench.benchmark(bench.build_parser().parse_args(argv))
        except Exception as error:  # one failed step (out of memory, a compiler error) must not lose the others
            first_line = str(error).splitlines()[0][:200] if str(error) else ""
            record["error"] = f"failed: {type(error).__name__}: {first_line}"
            print(f"    {record['error']}", flush=True)
        record["elapsed_s"] = time.perf_counter() - step_start
        if "--compile" in argv:
            torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        elapsed = time.perf_counter() - started
        print(f"    {record['elapsed_s']:.0f} s (estimate {estimate} s); {elapsed:.0f} s since the start", flush=True)
        write(output, records, tiny, elapsed, done=n == len(SUITE))
    return records


def write(output: str, records: List[Dict], tiny: bool, elapsed_s: float, done: bool) -> None:
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    with open(output, "w") as f:
        f.write(markdown(records, tiny, elapsed_s, done))
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump({"tiny": tiny, "elapsed_s": elapsed_s, "done": done, "steps": records}, f, indent=2)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("output", nargs="?", help=f"Markdown file (default {os.path.relpath(DEFAULT_OUTPUT)}; with "
                   f"--tiny {os.path.relpath(DEFAULT_TINY_OUTPUT)}); the JSON goes beside it")
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU, 2 frames, 2 steps: the plumbing")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for the %% columns (default: by GPU name)")
    args = p.parse_args(argv)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print(f"gpu.sh: no CUDA GPU visible (torch {torch.__version__}), nothing measured; "
              "`bash benchmarks/gpu.sh --tiny` runs the same steps on the CPU with tiny models")
        return 0
    for folder in (os.path.dirname(HERE), HERE):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    output = args.output or (DEFAULT_TINY_OUTPUT if args.tiny else DEFAULT_OUTPUT)
    started = time.perf_counter()
    records = run_suite(output, args.tiny, args.peak_tflops)
    with open(output) as f:
        print(f.read(), end="")
    print(f"wrote {output} and {os.path.splitext(output)[0]}.json in {time.perf_counter() - started:.0f} s")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
