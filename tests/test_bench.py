"""Smoke tests of the benchmark harness (benchmarks/bench.py) and the GPU suite (benchmarks/gpu.sh): they run,
count the network calls and the FLOPs consistently, alternate the variants, and gpu.sh answers without a GPU."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_SH = os.path.join(ROOT, "benchmarks", "gpu.sh")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", os.path.join(ROOT, "benchmarks", "bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_writes_the_expected_record(tmp_path, capsys):
    path = tmp_path / "bench.json"
    load_bench().main(["--pipeline", "Animatediff", "--tiny", "--steps", "2", "--frames", "2", "--repeats", "1",
                       "--warmup", "0", "--json", str(path)])
    report = json.loads(path.read_text())
    assert set(report) == {"machine", "settings", "performance", "memory_kind", "peak", "results", "ratios"}
    assert report["settings"]["steps"] == 2 and report["settings"]["frames"] == 2
    assert report["performance"]["offload"] == "none"
    assert report["peak"]["tflops"] is None  # a CPU: no fraction of peak without --peak-tflops
    std, ivm = report["results"]["standard"], report["results"]["iv_mixed"]
    # docs/ALGORITHM.md: 2 steps of IV-mixed with the image model are 2 * (1 + 2) video and 2 * 2 image calls
    assert std["network_calls"] == std["expected_network_calls"] == std["unet_forward_calls"] == {"video": 2, "image": 0}
    assert ivm["network_calls"] == ivm["expected_network_calls"] == ivm["unet_forward_calls"] == {"video": 6, "image": 4}
    for result in (std, ivm):
        b = result["breakdown"]
        assert b["unet_forward_calls"] == result["unet_forward_calls"]
        for key in ("wall_s", "encode_s", "denoise_s", "decode_s", "other_s", "sampler_overhead_s",
                    "sampler_overhead_share", "peak_memory_mb"):
            assert b[key] >= 0, key
        assert set(b["network_s"]) == {"video", "image"}
        assert b["denoise_s"] <= b["wall_s"]
        assert result["end_to_end"]["wall_s"] > 0 and len(result["end_to_end"]["wall_s_each"]) == 1
        assert result["throughput"]["tflops_per_s_end_to_end"] > 0
        assert result["throughput"]["peak_fraction_network"] is None
    # the video UNet's calls have the same shapes in both variants: the same FLOPs per guided call
    video = std["flops"]["per_guided_call"]["video"]
    assert video > 0 and ivm["flops"]["per_guided_call"]["video"] == video
    assert std["flops"]["total"] == 2 * video
    image = ivm["flops"]["per_guided_call"]["image"]
    assert ivm["flops"]["total"] == 6 * video + 4 * image
    assert report["ratios"]["network_calls_iv_mixed_over_standard"] == 5.0
    out = capsys.readouterr().out
    assert "sampler overhead / denoising" in out and "end-to-end wall time, no hooks" in out and "no peak" in out


def test_runs_follow_the_interleaved_order(monkeypatch):
    bench = load_bench()
    seen = []
    plain, hooked = bench.run_end_to_end, bench.run_once

    def logged(kind, run):
        def wrapper(pipe, args, iv_mixed, *rest):
            seen.append((kind, "iv_mixed" if iv_mixed else "standard"))
            return run(pipe, args, iv_mixed, *rest)
        return wrapper

    monkeypatch.setattr(bench, "run_end_to_end", logged("plain", plain))
    monkeypatch.setattr(bench, "run_once", logged("breakdown", hooked))
    args = bench.build_parser().parse_args(["--pipeline", "ModelScope", "--tiny", "--steps", "1", "--frames", "2",
                                            "--warmup", "1", "--repeats", "2", "--breakdown-repeats", "1"])
    report = bench.benchmark(args)
    assert seen == [("plain", "standard"), ("plain", "iv_mixed")] * 2 + [("breakdown", "standard"),
                                                                        ("breakdown", "iv_mixed"),
                                                                        ("plain", "standard"), ("plain", "iv_mixed")]
    assert [tuple(r) for r in report["settings"]["order"]] == bench.run_order(1, 2, 1)
    assert len(report["results"]["iv_mixed"]["end_to_end"]["wall_s_each"]) == 2
    assert len(report["results"]["iv_mixed"]["breakdown"]["wall_s_each"]) == 1


def test_no_breakdown_skips_the_hooked_runs(capsys):
    report = load_bench().main(["--pipeline", "Animatediff", "--tiny", "--steps", "1", "--frames", "2",
                                "--repeats", "1", "--warmup", "0", "--no-breakdown", "--peak-tflops", "1"])
    for result in report["results"].values():
        assert result["breakdown"] is None and result["end_to_end"]["wall_s"] > 0
        assert result["throughput"]["tflops_per_s_network"] is None
        assert result["throughput"]["peak_fraction_end_to_end"] > 0  # --peak-tflops gives a fraction on a CPU
        assert result["unet_forward_calls"]["video"] == result["network_calls"]["video"]
    assert "% of peak 1 TFLOP/s, end-to-end" in capsys.readouterr().out


def test_gpu_script_without_a_gpu_says_so_in_one_line():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(["bash", GPU_SH], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], lines


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_gpu_script_tiny_mode_writes_every_row(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_suite

    output = tmp_path / "results.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    done = subprocess.run(["bash", GPU_SH, "--tiny", str(output)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < 120, elapsed
    table = output.read_text()
    assert table in done.stdout  # the table goes to stdout too
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["tiny"] and record["done"]
    steps = {s["key"]: s for s in record["steps"]}
    assert list(steps) == [key for key, *_ in gpu_suite.SUITE]
    assert steps["animatediff-compile"]["dropped"] == ["--compile"]
    assert steps["animatediff-offload"]["dropped"] == ["--offload model"]

    rows = {}
    lines = table.splitlines()
    header = _cells(next(line for line in lines if line.startswith("| step | variant")))
    for line in lines:
        cells = _cells(line)
        if line.startswith("|") and len(cells) == len(header) and cells[1] in ("standard", "IV-mixed"):
            rows[(cells[0], cells[1])] = dict(zip(header, cells))
    assert set(rows) == {(key, v) for key in steps for v in ("standard", "IV-mixed")}
    per_run = next(h for h in header if h.endswith(" per run"))
    scale = 1e9 if per_run.startswith("GFLOP") else 1e12
    for key, step in steps.items():
        results = step["report"]["results"]
        std, ivm = results["standard"], results["iv_mixed"]
        # IV-mixed FLOPs / standard FLOPs is what the call counts and the per-call FLOPs say it must be
        video, image = std["flops"]["per_guided_call"]["video"], ivm["flops"]["per_guided_call"]["image"]
        assert video > 0 and image > 0
        assert ivm["flops"]["per_guided_call"]["video"] == pytest.approx(video)
        expected = (ivm["network_calls"]["video"] * video + ivm["network_calls"]["image"] * image) / (
            std["network_calls"]["video"] * video)
        assert ivm["flops"]["total"] / std["flops"]["total"] == pytest.approx(expected, rel=1e-9)
        assert step["report"]["ratios"]["flops_iv_mixed_over_standard"] == pytest.approx(expected)
        for variant, result in (("standard", std), ("IV-mixed", ivm)):
            row = rows[(key, variant)]
            assert float(row[per_run]) == pytest.approx(result["flops"]["total"] / scale, rel=1e-3)
            assert float(row["end-to-end (s)"]) >= 0 and float(re.split(r"\s", row[next(
                h for h in header if h.startswith("peak memory"))])[0]) > 0
            rate = row[next(h for h in header if h.endswith("/s end-to-end"))]
            assert float(rate) > 0
    # the steps' own table: one line per step, with its elapsed time and estimate
    for key in steps:
        assert any(line.startswith(f"| {key} |") and "x" in line for line in lines)
