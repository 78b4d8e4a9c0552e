"""Long videos and prompt travel from the command line: context windows above the adapter's window, schedules."""

import os

import imageio.v3 as iio
import pytest
from runs import only_record, records, run_main

from ivmixed.config import build_config
from ivmixed.runner import Runner

TINY = ["--tiny", "--inference-step", "2", "--device", "cpu"]


def test_forty_frames_on_the_32_frame_tiny_adapter_use_context_windows(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--num-frames", "40", "--no-standard", "--prompt", "a cat", "--output-dir", str(out)],
                         capsys)
    assert code == 0, err
    assert "40 frames: sampling in context windows of 16 frames, stride 4 (FreeNoise)" in err
    record = only_record(out)
    assert record["context_windows"] == {"length": 16, "stride": 4, "method": "FreeNoise"}
    assert iio.imread(out / record["files"]["iv_mix"]).shape == (40, 64, 64, 3)
    # one guided call is one pass over all windows: the counts are those of an unwindowed run
    assert record["network_calls"]["iv_mix"] == record["expected_network_calls"]["iv_mix"] == {"video": 6, "image": 4}


def test_within_the_window_nothing_changes_unless_asked(tmp_path):
    config = build_config({"prompt": "a cat", "tiny": True, "num_frames": 8, "output_dir": str(tmp_path)})
    runner = Runner(config)
    runner.plan()
    assert runner.context is None
    config = build_config({"prompt": "a cat", "tiny": True, "num_frames": 8, "context_length": 4,
                           "output_dir": str(tmp_path)})
    runner = Runner(config)
    windowed = runner.plan().todo[0].outputs
    assert runner.context == (4, 4)
    plain = Runner(build_config({"prompt": "a cat", "tiny": True, "num_frames": 8,
                                 "output_dir": str(tmp_path)})).plan().todo[0].outputs
    assert windowed.standard_fingerprint != plain.standard_fingerprint  # windows change the frames: new files


def test_prompt_schedule_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--num-frames", "8", "--context-length", "4", "--prompt",
                          "0: a cat sitting | 5: a cat jumping", "--output-dir", str(out)], capsys)
    assert code == 0, err
    record = only_record(out)
    assert record["prompt"] == "0: a cat sitting | 5: a cat jumping"
    assert record["files"]["iv_mix"].startswith("0-a-cat-sitting-5-a-cat-jumping-")
    assert iio.imread(out / record["files"]["iv_mix"]).shape[0] == 8


@pytest.mark.parametrize("args,message", [
    (["--pipeline", "ModelScope", "--prompt", "0: a | 4: b"], "prompt schedules (\"0: ... | 24: ...\") work with --pipeline Animatediff only"),
    (["--prompt", "0: a | 9: b", "--num-frames", "8"], "frame"),
    (["--num-frames", "8", "--context-length", "40"], "--context-length 40 is longer than"),
    (["--num-frames", "40", "--context-stride", "20"], "--context-stride 20 is longer than --context-length 16"),
    (["--pipeline", "ModelScope", "--context-length", "8"], "--context-length applies to --pipeline Animatediff only"),
])
def test_bad_long_video_input_is_one_line(tmp_path, capsys, args, message):
    if "--prompt" not in args:
        args = [*args, "--prompt", "a cat"]
    code, err = run_main([*TINY, *args, "--output-dir", str(tmp_path)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err


def test_prompt_file_schedule_field(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": {"0": "a red car", "4": "a blue car"}, "id": "cars"}\n')
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--num-frames", "8", "--no-standard", "--prompt-file", str(prompts),
                          "--output-dir", str(out)], capsys)
    assert code == 0, err
    assert only_record(out)["prompt"] == "0: a red car | 4: a blue car"


def test_a_sweep_of_a_windowed_video_shares_one_baseline(tmp_path, capsys):
    """Cells and the baseline are named with the same context windows: one standard video, grids found."""
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--num-frames", "8", "--context-length", "4", "--prompt", "a cat",
                          "--sweep", "zz=1,1000", "--output-dir", str(out)], capsys)
    assert code == 0, err
    standards = [name for name in os.listdir(out) if name.endswith("_standard.mp4")]
    assert len(standards) == 1
    assert len([name for name in os.listdir(out) if name.endswith("_grid.mp4")]) == 1
    for record in records(out):
        assert record["files"]["standard"] == standards[0]
        assert record["context_windows"] == {"length": 4, "stride": 4, "method": "FreeNoise"}
