"""Bad input and faults: one clear line, the right exit status, no traceback, and nothing already made is lost."""

import json
import logging
import os

import imageio.v3 as iio
import pytest
import torch

from runs import manifest_lines, only_record, run_main

from ivmixed.cli import main
from ivmixed.runner import Runner
from ivmixed.export import atomic_path, write_json
from ivmixed.testing import save_tiny_checkpoints


def error_line(err):
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def write(path, text):
    path.write_text(text)
    return str(path)


BAD_INPUTS = [
    (lambda tmp: ["--interval_begin", "9", "--inference-step", "5"], "--interval-begin must be between 0 and 4"),
    (lambda tmp: ["--interval_end", "-1"], "--interval-end must be between"),
    (lambda tmp: ["--v_sigma_end", "-0.5"], "--v-sigma-end must be a finite number >= 0"),
    (lambda tmp: ["--rho", "-2"], "--rho must be a positive"),
    (lambda tmp: ["--inference-step", "-3"], "--inference-step must be at least 1"),
    (lambda tmp: ["--fps", "0"], "--fps must be at least 1"),
    (lambda tmp: ["--width", "0"], "--width must be a positive multiple of 8"),
    (lambda tmp: ["--guidance-scale", "nan"], "--guidance-scale must be a finite number >= 0"),
    (lambda tmp: ["--prompt", "   "], "--prompt must not be empty"),
    (lambda tmp: ["--prompt-file", write(tmp / "p.txt", "x\n"), "--prompt", "y"], "give either --prompt or --prompt-file"),
    (lambda tmp: ["--prompt-file", write(tmp / "empty.txt", "\n# nothing\n")], "holds no prompts"),
    (lambda tmp: ["--prompt-file", str(tmp / "missing.csv")], "prompt file not found"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "zz: [1\n")], "is not valid YAML at line"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "steps: 3\n")], "unknown key(s) steps"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "zz: many\n")], "--zz must be a whole number"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "tiny: yes please\n")], "--tiny must be true or false"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "- a list\n")], "must hold a mapping"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "pipeline: Sora\n")], "unknown --pipeline 'Sora'"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "dtype: fp8\n")], "--dtype must be one of"),
    (lambda tmp: ["--lora", str(tmp / "nope.safetensors")], "--lora: LoRA file not found"),
    (lambda tmp: ["--lora", "no-such-style"], "LoRA 'no-such-style' not found"),
    (lambda tmp: ["--image-model", str(tmp / "no-folder")], "--image-model"),
    (lambda tmp: ["--output-dir", write(tmp / "a-file", "") + "/sub"], "cannot write to --output-dir"),
    (lambda tmp: ["--tiny", "--num-frames", "40", "--context-length", "33"],
     "--context-length 33 is longer than the motion adapter's window of 32 frames"),
    (lambda tmp: ["--inference-step", "1001"], "--inference-step 1001 is more than the 1000 timesteps"),
    (lambda tmp: ["--seed", str(2**64)], "--seed must be a whole number from 0 to 2**64 - 1"),
    (lambda tmp: ["--seed", "-1"], "--seed must be a whole number from 0 to 2**64 - 1"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "seed: 18446744073709551616\n")], "--seed must be a whole number"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "fps: null\n")], "--fps is empty (null)"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "seed: 1.9\n")], "--seed must be a whole number, got 1.9"),
    (lambda tmp: ["--config", write(tmp / "c.yaml", "seed: true\n")], "--seed must be a whole number, got True"),
    (lambda tmp: ["--no-standard", "--side-by-side"], "--side-by-side compares with the standard video"),
    (lambda tmp: ["--pipeline", "ModelScope", "--lora-target", "video"], "the ModelScope video model cannot take a LoRA"),
    (lambda tmp: ["--height", "8192", "--width", "8192", "--num-frames", "64"], "far more than any GPU can sample"),
    (lambda tmp: ["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
    (lambda tmp: ["--prompt-file", write(tmp / "p.jsonl", '{"prompt": "a", "negative_prompt": 3}\n')],
     "negative_prompt must be text"),
]


@pytest.mark.parametrize("make_args,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_table(tmp_path, capsys, make_args, message):
    args = make_args(tmp_path)
    if "--prompt" not in args and "--prompt-file" not in args:
        args = ["--prompt", "a cat", *args]
    code, err = run_main([*args, "--output-dir", str(tmp_path / "out")] if "--output-dir" not in args else args, capsys)
    assert code == 2, err
    line = error_line(err)
    assert message in line and line.startswith("ivmixed: error:")


def test_unknown_pipeline_and_dtype_are_one_line_usage_errors(capsys):
    for args, message in ((["--pipeline", "Sora"], "unknown --pipeline 'Sora'"),
                          (["--dtype", "fp8"], "--dtype must be one of fp16, bf16, fp32")):
        code, err = run_main(["--prompt", "x", *args], capsys)
        assert code == 2 and message in error_line(err)


def test_argparse_errors_are_short(capsys):
    code, err = run_main(["--prompt", "x", "--zz", "many"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage:") and "invalid int value: 'many'" in lines[1]


TINY = ["--tiny", "--inference-step", "2", "--num-frames", "2", "--device", "cpu"]


def test_out_of_memory_keeps_finished_videos(tmp_path, capsys, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\nsecond prompt\n")
    real_generate, calls = Runner._generate, []

    def generate(self, pipe, job, kind):
        calls.append(job.prompt)
        if job.prompt == "second prompt":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(self, pipe, job, kind)

    monkeypatch.setattr(Runner, "_generate", generate)
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--prompt-file", str(prompts), "--output-dir", str(out)], capsys)
    assert code == 1
    line = error_line(err)
    assert "out of GPU memory" in line and "--offload model" in line and "--num-frames" in line
    records = manifest_lines(out)
    assert [r["prompt"] for r in records] == ["first prompt"]
    for name in records[0]["files"].values():
        assert (out / name).exists()


def test_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(Runner, "_generate", broken)
    args = [*TINY, "--prompt", "a cat", "--output-dir", str(tmp_path)]
    code, err = run_main(args, capsys)
    assert code == 1
    assert error_line(err).endswith("RuntimeError: something broke (rerun with --debug for the traceback)")
    with pytest.raises(RuntimeError, match="something broke"):
        main([*args, "--debug"])


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    return save_tiny_checkpoints(str(tmp_path_factory.mktemp("ckpt")), "Animatediff")


def test_corrupt_weights_name_the_model(tmp_path, capsys, tiny_folders):
    import shutil

    video = tmp_path / "video"
    shutil.copytree(tiny_folders["video_model"], video)
    (video / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    args = ["--prompt", "a cat", "--device", "cpu", "--num-frames", "2", "--inference-step", "2", "--height", "64",
            "--width", "64", "--video-model", str(video), "--motion-adapter", tiny_folders["motion_adapter"],
            "--image-model", tiny_folders["image_model"], "--output-dir", str(tmp_path / "out")]
    code, err = run_main(args, capsys)
    assert code == 1
    line = error_line(err)
    assert f"could not load the video model '{video}'" in line and "--video-model" in line


def test_wrong_folder_layout_names_the_model(tmp_path, capsys, tiny_folders):
    args = ["--prompt", "a cat", "--device", "cpu", "--num-frames", "2", "--inference-step", "2", "--height", "64",
            "--width", "64", "--video-model", tiny_folders["motion_adapter"], "--motion-adapter",
            tiny_folders["motion_adapter"], "--image-model", tiny_folders["image_model"],
            "--output-dir", str(tmp_path / "out")]
    code, err = run_main(args, capsys)
    assert code == 1
    assert "could not load the video model" in error_line(err)


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    write_json({"a": 1}, str(target))
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write('{"half": ')
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["record.json"]


@pytest.mark.parametrize("prompt", ['../../etc/passwd "quoted" \\ back', "日本の猫が走る", "a" * 2000, "CON: <>|?*"])
def test_hostile_prompts_make_safe_files_inside_the_output_folder(tmp_path, capsys, prompt):
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--no-standard", "--prompt", prompt, "--output-dir", str(out)], capsys)
    assert code == 0, err
    names = sorted(os.listdir(out))
    assert len(names) == 3 and "manifest.jsonl" in names  # video, record, manifest: nothing outside
    for name in names:
        assert len(name) < 150 and name.isascii() and not name.startswith(".")
        assert all(c.isalnum() or c in "-_." for c in name)
    record = only_record(out)
    assert iio.imread(out / record["files"]["iv_mix"]).shape[0] == 2
    assert record["prompt"] == prompt
    assert not list(tmp_path.glob("etc*")) and not (tmp_path.parent / "etc").exists()


def test_rerun_never_overwrites_silently(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="ivmixed")
    out = tmp_path / "out"
    args = [*TINY, "--no-standard", "--prompt", "a cat", "--output-dir", str(out)]
    assert run_main(args, capsys)[0] == 0
    video = out / only_record(out)["files"]["iv_mix"]
    before = video.stat().st_mtime_ns
    code, err = run_main(args, capsys)
    assert code == 0 and video.stat().st_mtime_ns == before and "already finished" in err
    code, err = run_main([*args, "--overwrite"], capsys)
    assert code == 0 and video.stat().st_mtime_ns != before
    assert f"replacing {video.name} (--overwrite)" in err


def test_nan_latents_are_caught_before_decoding(tmp_path, capsys, monkeypatch):
    from ivmixed import IVMixedAnimateDiffPipeline

    original = IVMixedAnimateDiffPipeline.__call__

    def poisoned(self, *args, **kwargs):
        kwargs["callback_on_step_end"] = lambda pipe, i, t, tensors: {"latents": tensors["latents"] * float("nan")}
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IVMixedAnimateDiffPipeline, "__call__", poisoned)
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--prompt", "a cat", "--output-dir", str(out)], capsys)
    assert code == 1
    line = error_line(err)
    assert "NaN or infinite" in line and "--dtype fp32" in line
    assert not [p for p in os.listdir(out) if p.endswith((".mp4", ".json", ".jsonl"))]


@pytest.mark.parametrize("args,message", [
    (["--offload", "model", "--device", "cpu"], "--offload model moves weights between the CPU and a CUDA GPU"),
    (["--image-batch-size", "0"], "--image-batch-size must be at least 1"),
])
def test_performance_flags_are_checked_before_loading(tmp_path, capsys, args, message):
    code, err = run_main(["--prompt", "a cat", "--output-dir", str(tmp_path), *args], capsys)
    assert code == 2 and message in error_line(err)


def test_performance_flags_reach_the_run(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main([*TINY, "--prompt", "a cat", "--image-batch-size", "1", "--channels-last", "--vae-slicing",
                          "--no-standard", "--output-dir", str(out)], capsys)
    assert code == 0, err
    record = only_record(out)
    assert record["settings"]["image_batch_size"] == 1
    assert record["performance"]["channels_last"] and record["performance"]["vae_slicing"]
    assert record["network_calls"]["iv_mix"] == {"video": 6, "image": 4}  # batching splits calls, not guided evaluations
