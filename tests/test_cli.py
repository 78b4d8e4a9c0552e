"""inference.py end to end on tiny models, its flags, its presets and its one-line errors."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
import yaml

from ivmixed.cli import build_parser, main
from ivmixed.prompts import slugify as prompt_slug
from ivmixed.config import PIPELINE_DEFAULTS, ConfigError, load_yaml_config, resolve_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--pipeline", "--prompt", "--seed", "--inference-step", "--interval_begin", "--interval_end", "--zz",
    "--i_sigma_begin", "--i_sigma_end", "--v_sigma_begin", "--v_sigma_end", "--rho", "--lora", "--negative-prompt",
    "--num-frames", "--height", "--width", "--guidance-scale", "--fps", "--output-dir", "--format", "--no-standard",
    "--config", "--device", "--dtype", "--video-model", "--motion-adapter", "--image-model", "--tiny",
    "--prompt-file", "--side-by-side", "--overwrite", "--unet", "--fps-condition", "--lora-scale", "--lora-target",
]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "inference.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, flag


def test_reference_defaults():
    s = resolve_settings({"prompt": "x"})
    assert (s["pipeline"], s["seed"], s["inference_step"], s["interval_begin"], s["interval_end"], s["zz"]) == (
        "Animatediff", 23523, 50, 0, None, 1000)
    assert (s["i_sigma_begin"], s["i_sigma_end"], s["v_sigma_begin"], s["v_sigma_end"], s["rho"]) == (4, 4, 4, 4, 7)
    assert (s["num_frames"], s["height"], s["width"], s["guidance_scale"], s["fps"]) == (16, 512, 512, 7.5, 8)
    assert (s["output_dir"], s["format"], s["no_standard"]) == ("outputs", "mp4", False)


def test_tiny_end_to_end_writes_videos_and_record(tmp_path):
    result = run_cli("--tiny", "--prompt", "Two horses race across a grassy field at sunset.", "--inference-step", "3",
                     "--num-frames", "4", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "noise" in result.stderr  # --tiny says plainly what its output is
    stem = f"{prompt_slug('Two horses race across a grassy field at sunset.')}_23523_Animatediff"
    for kind in ("iv_mix", "standard"):
        frames = iio.imread(tmp_path / f"{stem}_{kind}.mp4")
        assert frames.shape == (4, 64, 64, 3)
    record = json.loads((tmp_path / f"{stem}.json").read_text())
    assert record["network_calls"] == {"iv_mix": {"video": 9, "image": 6}, "standard": {"video": 3, "image": 0}}
    assert record["network_calls"] == record["expected_network_calls"]
    assert record["settings"]["inference_step"] == 3 and record["seed"] == 23523
    assert set(record["timings"]) == {"iv_mix_s", "standard_s"} and record["load_s"] > 0
    assert record["versions"]["diffusers"] and record["models"]["image_model"] == "tiny-random"
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


@pytest.mark.parametrize("pipeline,calls", [("ModelScope", {"video": 9, "image": 6}), ("VideoCrafter", {"video": 11, "image": 4})])
def test_tiny_end_to_end_other_pipelines(tmp_path, pipeline, calls):
    code = main(["--tiny", "--pipeline", pipeline, "--prompt", "a cat", "--inference-step", "3", "--num-frames", "4",
                 "--output-dir", str(tmp_path)])
    assert code == 0
    for kind in ("iv_mix", "standard"):
        assert iio.imread(tmp_path / f"a-cat_23523_{pipeline}_{kind}.mp4").shape == (4, 64, 64, 3)
    record = json.loads((tmp_path / f"a-cat_23523_{pipeline}.json").read_text())
    assert record["network_calls"] == {"iv_mix": calls, "standard": {"video": 3, "image": 0}}
    assert record["settings"]["guidance_scale"] == 9.0  # the pipeline's own default


def test_gif_without_standard_and_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"tiny": True, "inference_step": 2, "num_frames": 3, "format": "gif", "zz": 1}))
    code = main(["--config", str(config), "--prompt", "a cat", "--no-standard", "--fps", "4", "--seed", "7",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 0
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["a-cat_7_Animatediff.json", "a-cat_7_Animatediff_iv_mix.gif", "manifest.jsonl"]
    assert iio.imread(tmp_path / "out" / files[1]).shape[0] == 3
    record = json.loads((tmp_path / "out" / files[0]).read_text())
    assert record["network_calls"] == {"iv_mix": {"video": 10, "image": 0}}  # zz=1: the video model only


BAD_INPUTS = [
    (["--interval_begin", "5", "--interval_end", "3"], "interval_begin (5) must not be after interval_end (3)"),
    (["--interval_end", "50"], "interval_end must be between 0 and 49"),
    (["--zz", "0"], "zz must be at least 1"),
    (["--i_sigma_begin", "-1"], "i_sigma_begin must be"),
    (["--rho", "0"], "rho must be a positive"),
    (["--inference-step", "0"], "--inference-step must be at least 1"),
    (["--height", "500"], "--height must be a positive multiple of 8"),
    (["--num-frames", "0"], "--num-frames must be at least 1"),
    (["--pipeline", "ModelScope", "--motion-adapter", "x"], "--motion-adapter applies to --pipeline Animatediff"),
    (["--unet", "x"], "--unet applies to --pipeline VideoCrafter"),
    (["--fps-condition", "12"], "--fps-condition applies to --pipeline VideoCrafter"),
    (["--config", "/no/such/file.yaml"], "config file not found"),
    (["--device", "cuda"], "torch sees no CUDA GPU"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_exit_2(args, message, capsys):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["--prompt", "a cat", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_prompt(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--tiny"])
    assert exit_info.value.code == 2 and "a prompt is required" in capsys.readouterr().err


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("zz: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_yaml_config(str(bad))
    bad.write_text("zzz: 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_yaml_config(str(bad))


def test_missing_model_folder_is_a_usage_error_before_loading(tmp_path):
    result = run_cli("--prompt", "a cat", "--device", "cpu", "--motion-adapter", str(tmp_path / "missing"),
                     "--output-dir", str(tmp_path / "out"), env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0] == f"inference.py: error: --motion-adapter {tmp_path / 'missing'}: no such folder; give an existing checkpoint folder or a hub id"


def test_missing_hub_model_offline_says_how_to_get_it(tmp_path):
    result = run_cli("--prompt", "a cat", "--device", "cpu", "--image-model", "ivmixed-test/no-such-model",
                     "--output-dir", str(tmp_path / "out"), env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("inference.py: error: could not load the motion adapter 'guoyww/animatediff-motion")
    assert "huggingface-cli download guoyww/animatediff-motion-adapter-v1-5-3" in lines[0]


def test_precedence_flags_over_config_over_pipeline_defaults():
    s = resolve_settings({"pipeline": "VideoCrafter", "guidance_scale": None}, {"zz": 5})
    assert s["zz"] == 5 and s["guidance_scale"] == PIPELINE_DEFAULTS["VideoCrafter"]["guidance_scale"]
    s = resolve_settings({"zz": 2, "tiny": True}, {"zz": 5, "height": 128})
    assert s["zz"] == 2 and s["height"] == 128 and s["num_frames"] == 8


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_presets_match_the_built_in_defaults(name):
    preset = load_yaml_config(os.path.join(ROOT, "configs", name))
    defaults = resolve_settings({"pipeline": preset["pipeline"]})
    from ivmixed.cli import model_sources

    models = model_sources(defaults, {})
    for key, value in preset.items():
        assert value == (models[key] if key in models else defaults[key]), key


@pytest.mark.parametrize("prompt", ["a cat", "A/B \"quoted\" ../../etc", "日本の猫", "x" * 2000, "..."])
def test_prompt_slug_is_a_safe_file_name(prompt):
    slug = prompt_slug(prompt)
    assert slug and len(slug) <= 100 and "/" not in slug and not slug.startswith(".")
    assert slug.isascii() and all(c.isalnum() or c == "-" for c in slug)
    assert prompt_slug(prompt) == slug and prompt_slug(prompt + "!") != slug


def test_parser_defaults_are_none_so_presets_apply():
    args = build_parser().parse_args([])
    assert all(v is None or v is False for k, v in vars(args).items()), vars(args)
