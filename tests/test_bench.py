"""Smoke test of the benchmark harness (benchmarks/bench.py): it runs, and counts the network calls exactly."""

import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert set(report) == {"machine", "settings", "performance", "memory_kind", "results", "ratios"}
    assert report["settings"]["steps"] == 2 and report["settings"]["frames"] == 2
    assert report["performance"]["offload"] == "none"
    std, ivm = report["results"]["standard"], report["results"]["iv_mixed"]
    # docs/ALGORITHM.md: 2 steps of IV-mixed with the image model are 2 * (1 + 2) video and 2 * 2 image calls
    assert std["network_calls"] == std["expected_network_calls"] == std["unet_forward_calls"] == {"video": 2, "image": 0}
    assert ivm["network_calls"] == ivm["expected_network_calls"] == ivm["unet_forward_calls"] == {"video": 6, "image": 4}
    for result in (std, ivm):
        for key in ("wall_s", "encode_s", "denoise_s", "decode_s", "other_s", "sampler_overhead_s",
                    "sampler_overhead_share", "peak_memory_mb"):
            assert result[key] >= 0, key
        assert set(result["network_s"]) == {"video", "image"}
        assert result["denoise_s"] <= result["wall_s"]
    assert report["ratios"]["network_calls_iv_mixed_over_standard"] == 5.0
    assert "sampler overhead / denoising" in capsys.readouterr().out
