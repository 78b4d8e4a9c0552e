"""Settings sweeps on tiny models: the grid, its cost, shared baselines, resume, grid files and the plot."""

import contextlib
import csv
import glob
import io
import itertools
import json
import os
import re

import imageio.v3 as iio
import numpy as np
import pytest
from runs import manifest_lines, records

from ivmixed import evaluate as ev
from ivmixed.cli import main
from ivmixed.config import build_config
from ivmixed.errors import SettingError
from ivmixed.runner import PipelineCache, RunStopped
from ivmixed.sampler import IVMixedSettings, count_network_calls
from ivmixed.sweep import Sweep, as_grid, parse_sweep, run_sweep

TINY = ["--tiny", "--inference-step", "3", "--num-frames", "2", "--device", "cpu"]
GRID = ["--sweep", "zz=1,1000", "--sweep", "interval-end=1,2"]
# 4 steps: with 3, interval_end 2 adds only the last step's zigzag, which with zz=1 (the video model both ways,
# between the two smallest noise levels) changes no pixel of the tiny models' frames
STEPS = 4
COST = ("sweep: 4 cells (zz 1, 1000 x interval_end 1, 2): 4 cells of 12 to 16 calls (56 in all) + 4 for the "
        "baseline = 60 guided network calls")


def run_main(argv):
    """``main(argv)`` with its log captured: (exit status, stderr text)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def sweep_file(folder):
    (path,) = glob.glob(os.path.join(folder, "*.sweep.json"))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep zz=1,1000 x interval_end=1,2 through the command line, once for the module."""
    folder = str(tmp_path_factory.mktemp("sweep"))
    code, err = run_main([*TINY, "--inference-step", str(STEPS), "--prompt", "a red fox", "--output-dir", folder,
                          *GRID])
    assert code == 0, err
    return folder, err


@pytest.fixture(scope="module")
def pipelines():
    return PipelineCache()


def tiny_config(folder, **given):
    return build_config({"tiny": True, "prompt": "a red fox", "inference_step": 3, "num_frames": 2, "device": "cpu",
                         "output_dir": str(folder), **given})


def test_sweep_values_are_typed_by_their_settings():
    grid = parse_sweep(["zz=1,1000", "--interval_end=1,2", "guidance-scale=3,7.5", "rho=7"])
    assert [(a.key, a.values) for a in grid.axes] == [
        ("zz", (1, 1000)), ("interval_end", (1, 2)), ("guidance_scale", (3.0, 7.5)), ("rho", (7.0,))]
    assert all(type(v) is int for v in grid.axes[0].values) and type(grid.axes[2].values[0]) is float
    assert grid.size == 8 and (grid.columns, grid.rows) == (2, 4)
    assert grid.cells()[:3] == [{"zz": 1, "interval_end": 1, "guidance_scale": 3.0, "rho": 7.0},
                                {"zz": 1000, "interval_end": 1, "guidance_scale": 3.0, "rho": 7.0},
                                {"zz": 1, "interval_end": 2, "guidance_scale": 3.0, "rho": 7.0}]
    assert as_grid({"zz": [1, 3], "i_sigma_begin": "2,4"}).axes == parse_sweep(["zz=1,3", "i_sigma_begin=2,4"]).axes


@pytest.mark.parametrize("specs, message", [
    (["zz=1,x"], "zz takes whole numbers, got 'x'"),
    (["zz=1.5"], "zz takes whole numbers"),
    (["rho=1,inf"], "rho takes finite numbers"),
    (["seed=1,2"], "'seed' cannot be swept; sweep one of interval_begin"),
    (["speed=1,2"], "'speed' is not a setting"),
    (["zz"], "write KEY=V1,V2,..."),
    (["zz=1,,2"], "an empty value"),
    (["zz=3,3"], "zz value 3 is given twice"),
    (["zz=1", "zz=2"], "over zz is given twice"),
])
def test_bad_sweeps_are_refused(specs, message):
    with pytest.raises(SettingError, match=re.escape(message)):
        parse_sweep(specs)


@pytest.mark.parametrize("flags, message", [
    (["--sweep", "zz=1,x"], "--sweep zz=1,x: zz takes whole numbers, got 'x'"),
    (["--sweep", "interval_end=1,7"], "--sweep cell interval_end=7: --interval-end must be between 0 and 2"),
    (["--sweep", "zz=" + ",".join(map(str, range(1, 66)))], "the sweep has 65 cells (zz 1, 2,"),
    (["--sweep", "zz=1,2,3", "--sweep", "rho=1,2", "--max-cells", "4"], "6 cells (zz 1, 2, 3 x rho 1, 2), more than 4"),
    (["--max-cells", "100"], "--max-cells applies to a --sweep only"),
])
def test_cli_refuses_bad_sweeps_in_one_line_before_loading(tmp_path, capsys, monkeypatch, flags, message):
    def no_loading(config):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("ivmixed.runner.load_pipeline", no_loading)
    with pytest.raises(SystemExit) as stop:
        main([*TINY, "--prompt", "a cat", "--output-dir", str(tmp_path), *flags])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "more than 64; give --max-cells 65" in err[0] or "65 cells" not in message


def test_more_than_64_cells_plan_with_max_cells_and_load_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("ivmixed.runner.load_pipeline", lambda config: pytest.fail("a model was loaded"))
    config = tiny_config(tmp_path)
    grid = {"zz": list(range(1, 14)), "interval_end": [0, 1, 2, 1, 2][:3], "rho": [5, 7]}
    with pytest.raises(SettingError, match="78 cells"):
        Sweep(config, grid)
    sweep = Sweep(config, grid, max_cells=78)
    assert len(sweep.cells) == 78 and sweep.cost.left == sweep.cost.total
    expected = sum(sum(count_network_calls(3, IVMixedSettings(zz=zz, interval_end=end, rho=rho)).values())
                   for rho, end, zz in itertools.product([5.0, 7.0], [0, 1, 2], range(1, 14)))
    assert sweep.cost.total == expected + 3
    assert not os.path.exists(tmp_path / "manifest.jsonl")


def test_iv_sweep_makes_4_cells_and_one_shared_standard(swept):
    folder, err = swept
    assert COST in err
    lines = manifest_lines(folder)
    assert len(lines) == 4
    assert len(glob.glob(os.path.join(folder, "*_iv_mix.mp4"))) == 4
    (standard,) = glob.glob(os.path.join(folder, "*_standard.mp4"))
    assert err.count(f"wrote {os.path.basename(standard)}") == 1
    made = records(folder)
    assert {r["files"]["standard"] for r in made} == {os.path.basename(standard)}
    by_values = {(r["settings"]["zz"], r["settings"]["interval_end"]): r for r in made}
    assert set(by_values) == {(1, 1), (1000, 1), (1, 2), (1000, 2)}
    for (zz, end), record in by_values.items():
        assert record["network_calls"]["iv_mix"] == count_network_calls(STEPS, IVMixedSettings(zz=zz, interval_end=end))
        if zz == 1:
            assert record["network_calls"]["iv_mix"]["image"] == 0
        else:
            assert record["network_calls"]["iv_mix"]["image"] > 0
        assert record["seed"] == 23523
    assert sum(sum(r["network_calls"]["iv_mix"].values()) for r in made) + STEPS == 60
    videos = {key: iio.imread(os.path.join(folder, r["files"]["iv_mix"])) for key, r in by_values.items()}
    videos["standard"] = iio.imread(standard)
    assert all(v.shape == (2, 64, 64, 3) for v in videos.values())
    for a, b in itertools.combinations(videos, 2):
        assert not np.array_equal(videos[a], videos[b]), (a, b)


def test_grid_files_and_sweep_file(swept):
    folder, err = swept
    data = sweep_file(folder)
    assert data["complete"]
    assert data["axes"] == [{"key": "zz", "values": [1, 1000]}, {"key": "interval_end", "values": [1, 2]}]
    assert [c["label"] for c in data["cells"]] == ["zz=1, interval_end=1", "zz=1000, interval_end=1",
                                                   "zz=1, interval_end=2", "zz=1000, interval_end=2"]
    (prompt,) = data["prompts"]
    assert [c["fingerprint"] for c in prompt["cells"]] == [
        next(line["fingerprint"] for line in manifest_lines(folder) if line["files"]["iv_mix"] == c["iv_mix"])
        for c in prompt["cells"]]
    assert prompt["baseline"].endswith("_standard.mp4") and data["baseline"]["shared_with_cells"]
    assert prompt["grid_video"].startswith("a-red-fox_23523_Animatediff_sweep_")
    video = iio.imread(os.path.join(folder, prompt["grid_video"]))
    assert video.shape[0] == 2 and video.shape[1] > 2 * 64 and video.shape[2] > 3 * 64  # 2 rows, baseline + 2 columns
    sheet = iio.imread(os.path.join(folder, prompt["grid_image"]))
    assert sheet.shape[0] > 5 * 128  # the baseline and 4 cells, one row each
    assert f"wrote {prompt['grid_video']}" in err and f"wrote {prompt['grid_image']}" in err
    assert not [name for name in os.listdir(folder) if "partial" in name]


def test_interrupted_sweep_resumes_without_remaking_finished_cells(tmp_path, pipelines):
    config = tiny_config(tmp_path)
    grid = {"zz": [1, 1000], "interval_end": [1, 2]}
    cells_done = lambda: len(glob.glob(os.path.join(tmp_path, "*_iv_mix.mp4")))  # noqa: E731
    with pytest.raises(RunStopped):
        run_sweep(config, grid, pipelines=pipelines, should_stop=lambda: cells_done() >= 2, progress_bars=False)
    assert cells_done() == 2 and len(manifest_lines(tmp_path)) == 2
    assert not glob.glob(os.path.join(tmp_path, "*_grid.*"))
    first = {name: os.path.getmtime(os.path.join(tmp_path, name)) for name in os.listdir(tmp_path)
             if name.endswith(".mp4")}

    sampled, started = [], []
    sweep = Sweep(config, grid, pipelines=pipelines, progress_bars=False,
                  on_step=lambda kind, step, total: sampled.append(kind) if step == 1 else None,
                  on_cell=lambda n, total, values: started.append((n, total, values)))
    assert sweep.describe_cost().endswith("; 25 of them already made, 30 left")  # baseline 3 + 11 + 11 made
    report = sweep.run()
    assert sampled == ["iv_mix", "iv_mix"] and len(report.made) == 2 and report.skipped == 2
    assert started == [(3, 4, {"zz": 1, "interval_end": 2}), (4, 4, {"zz": 1000, "interval_end": 2})]
    assert not report.baselines_made and len(report.grids) == 2
    assert all(os.path.getmtime(os.path.join(tmp_path, name)) == t for name, t in first.items())
    assert len(manifest_lines(tmp_path)) == 4

    sampled.clear()
    again = Sweep(config, grid, pipelines=pipelines, progress_bars=False,
                  on_step=lambda kind, step, total: sampled.append(kind))
    report = again.run()
    assert sampled == [] and report.made == [] and report.grids == [] and report.skipped == 4


def test_guidance_sweep_compares_with_the_base_standard_video(tmp_path, pipelines):
    config = tiny_config(tmp_path, guidance_scale=7.5)
    sweep = Sweep(config, ["guidance_scale=3,9"], pipelines=pipelines, progress_bars=False)
    assert sweep.describe_cost() == ("sweep: 2 cells (guidance_scale 3, 9): 2 cells x 15 calls + 3 for the baseline "
                                     "= 33 guided network calls")
    report = sweep.run()
    assert len(report.baselines_made) == 1 and len(report.made) == 2
    assert all(set(r["files"]) == {"iv_mix", "record"} for r in report.made)  # no standard video per cell
    assert [r["settings"]["guidance_scale"] for r in report.made] == [3.0, 9.0]
    (standard,) = glob.glob(os.path.join(tmp_path, "*_standard.mp4"))
    assert os.path.basename(standard) == sweep.prompts[0].baseline
    data = sweep_file(tmp_path)
    assert data["baseline"]["label"] == "baseline (standard sampler, guidance 7.5, 3 steps)"
    assert not data["baseline"]["shared_with_cells"]


def test_evaluate_scores_every_cell_and_plots_them(swept, clip_folder, tmp_path):  # noqa: F811
    folder, _ = swept
    assert ev.main([folder, "--clip-model", clip_folder, "--device", "cpu"]) == 0
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        table = [row for row in csv.DictReader(f) if row["id"] != "mean"]
    data = sweep_file(folder)
    (prompt,) = data["prompts"]
    scores = {(row["variant"], row["file"]): (float(row["clip_score"]), float(row["frame_consistency"]))
              for row in table}
    assert len(table) == 8 and len(scores) == 5  # 4 records x (IV-mixed, standard), one standard video

    stem = glob.glob(os.path.join(folder, "*.sweep.json"))[0][: -len(".sweep.json")]
    assert os.path.getsize(stem + "_plot.png") > 10_000
    from ivmixed.evaluate import plot_sweep

    rows = [{**row, "clip_score": float(row["clip_score"]), "frame_consistency": float(row["frame_consistency"])}
            for row in table]
    plot = plot_sweep(data, rows, str(tmp_path / "again_plot.png"))
    expected = [(cell["label"], *scores[("iv_mix", files["iv_mix"])])
                for cell, files in zip(data["cells"], prompt["cells"])]
    expected.append(("baseline", *scores[("standard", prompt["baseline"])]))
    assert [label for label, _, _ in plot.points] == [label for label, _, _ in expected]
    assert np.allclose([p[1:] for p in plot.points], [e[1:] for e in expected])
    with open(stem + "_points.csv", newline="") as f:
        points = list(csv.DictReader(f))
    assert [p["label"] for p in points] == [e[0] for e in expected]
    assert np.allclose([(float(p["clip_score"]), float(p["frame_consistency"])) for p in points],
                       [e[1:] for e in expected])
    assert points[0]["zz"] == "1" and points[0]["interval_end"] == "1"
