"""The command line end to end on tiny models: flags, presets, files, records and one-line errors."""

import os
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
import yaml
from runs import files_of, manifest_lines, only_record

from ivmixed.cli import build_parser, main
from ivmixed.config import SETTINGS, build_config, load_yaml_config, preset
from ivmixed.registry import PIPELINES
from ivmixed.sampler import IVMixedSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The presets of the pipelines, one each (configs/ also holds presets of other models)
PIPELINE_PRESETS = [f"{name.lower()}.yaml" for name in PIPELINES]
REFERENCE_FLAGS = [
    "--pipeline", "--prompt", "--seed", "--inference_step", "--interval_begin", "--interval_end", "--zz",
    "--i_sigma_begin", "--i_sigma_end", "--v_sigma_begin", "--v_sigma_end", "--rho", "--lora", "--negative_prompt",
    "--num_frames", "--height", "--width", "--guidance_scale", "--fps", "--output_dir",
]


def run_cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "inference.py"), *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)


def test_every_setting_has_a_flag_in_both_spellings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in SETTINGS:
        assert "--" + name.replace("_", "-") in text, name
        assert "--" + name in text, name
    parser = build_parser()
    for spelling in REFERENCE_FLAGS:
        assert parser.parse_args([spelling, "1"] if spelling != "--prompt" else [spelling, "x"]) is not None


def test_both_spellings_give_the_same_setting():
    parser = build_parser()
    assert vars(parser.parse_args(["--interval_end", "3"]))["interval_end"] == 3
    assert vars(parser.parse_args(["--interval-end", "3"]))["interval_end"] == 3
    assert vars(parser.parse_args(["--output_dir", "x"]))["output_dir"] == "x"


def test_help_texts_of_the_iv_mixed_flags_come_from_the_settings(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    from dataclasses import fields

    for f in fields(IVMixedSettings):
        assert " ".join(f.metadata["help"].split())[:40] in text, f.name


def test_reference_defaults():
    c = build_config({"prompt": "x"})
    assert (c.pipeline, c.seed, c.inference_step, c.iv_mixed) == ("Animatediff", 23523, 50, IVMixedSettings())
    assert (c.iv_mixed.zz, c.iv_mixed.interval_end, c.iv_mixed.rho) == (1000, None, 7.0)
    assert (c.num_frames, c.height, c.width, c.guidance_scale, c.fps) == (16, 512, 512, 7.5, 8)
    assert (c.output_dir, c.format, c.no_standard) == ("outputs", "mp4", False)


def test_pipeline_names_ignore_case():
    assert build_config({"prompt": "x", "pipeline": "animatediff"}).pipeline == "Animatediff"
    assert build_config({"prompt": "x", "pipeline": "MODELSCOPE"}).pipeline == "ModelScope"
    c = build_config({"prompt": "x", "pipeline": "videocrafter"})
    assert (c.pipeline, c.iv_mixed.zz, c.height, c.width) == ("VideoCrafter", 3, 320, 512)


def test_tiny_end_to_end_writes_videos_and_record(tmp_path):
    prompt = "Two horses race across a grassy field at sunset."
    result = run_cli("--tiny", "--prompt", prompt, "--inference-step", "3", "--num-frames", "4",
                     "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "noise" in result.stderr  # --tiny says plainly what its output is
    record = only_record(tmp_path)
    for kind in ("iv_mix", "standard"):
        assert iio.imread(tmp_path / record["files"][kind]).shape == (4, 64, 64, 3)
        assert f"wrote {record['files'][kind]}" in result.stderr
    assert f"wrote {record['files']['record']}" in result.stderr
    assert record["network_calls"] == {"iv_mix": {"video": 9, "image": 6}, "standard": {"video": 3, "image": 0}}
    assert record["network_calls"] == record["expected_network_calls"]
    assert record["settings"]["inference_step"] == 3 and record["seed"] == 23523
    assert record["settings"]["interval_end"] == 2 and record["settings"]["device"] == "cpu"
    assert record["settings"]["dtype"] == "fp32" and record["dtype"] == "fp32"
    assert record["command_line"][1:] == ["--tiny", "--prompt", prompt, "--inference-step", "3", "--num-frames", "4",
                                          "--output-dir", str(tmp_path)]
    assert record["scheduler"]["class"] == "DDIMScheduler" and record["scheduler"]["config"]["steps_offset"] == 1
    assert set(record["timings"]) == {"iv_mix_s", "standard_s"} and record["load_s"] > 0
    assert record["versions"]["diffusers"] and record["models"]["image_model"] == "tiny-random"
    assert record["files"]["iv_mix"].startswith("two-horses-race-across-a-grassy-field-at-sunset-")
    assert "_23523_Animatediff_" in record["files"]["iv_mix"] and record["files"]["iv_mix"].endswith("_iv_mix.mp4")
    assert files_of(tmp_path) == sorted([*record["files"].values(), "manifest.jsonl"])


@pytest.mark.parametrize("pipeline,calls", [("ModelScope", {"video": 9, "image": 6}), ("VideoCrafter", {"video": 11, "image": 4})])
def test_tiny_end_to_end_other_pipelines(tmp_path, pipeline, calls):
    code = main(["--tiny", "--pipeline", pipeline.lower(), "--prompt", "a cat", "--inference-step", "3",
                 "--num-frames", "4", "--output-dir", str(tmp_path)])
    assert code == 0
    record = only_record(tmp_path)
    for kind in ("iv_mix", "standard"):
        assert iio.imread(tmp_path / record["files"][kind]).shape == (4, 64, 64, 3)
    assert record["network_calls"] == {"iv_mix": calls, "standard": {"video": 3, "image": 0}}
    assert record["settings"]["guidance_scale"] == 9.0  # the pipeline's own default
    assert record["pipeline"] == pipeline


def test_gif_without_standard_and_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"tiny": True, "inference_step": 2, "num_frames": 3, "format": "gif", "zz": 1}))
    code = main(["--config", str(config), "--prompt", "a cat", "--no-standard", "--fps", "4", "--seed", "7",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 0
    record = only_record(tmp_path / "out")
    assert set(record["files"]) == {"iv_mix", "record"} and record["files"]["iv_mix"].endswith("_iv_mix.gif")
    assert len(files_of(tmp_path / "out")) == 3
    assert iio.imread(tmp_path / "out" / record["files"]["iv_mix"]).shape[0] == 3
    assert record["network_calls"] == {"iv_mix": {"video": 10, "image": 0}}  # zz=1: the video model only


def test_precedence_defaults_pipeline_config_tiny_flags():
    c = build_config({"pipeline": "VideoCrafter", "prompt": "x"}, {"zz": 5})
    assert c.iv_mixed.zz == 5 and c.guidance_scale == PIPELINES["VideoCrafter"].defaults["guidance_scale"]
    c = build_config({"zz": 2, "tiny": True, "prompt": "x"}, {"zz": 5, "height": 128, "guidance_scale": 3.0})
    # flags beat the file; tiny sizes beat the file's sizes; the file beats the defaults elsewhere
    assert (c.iv_mixed.zz, c.height, c.num_frames, c.guidance_scale) == (2, 64, 8, 3.0)
    c = build_config({"tiny": True, "prompt": "x", "height": 96})
    assert c.height == 96


def test_tiny_with_a_full_size_preset_stays_tiny_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--tiny", "--config", os.path.join(ROOT, "configs", "modelscope.yaml"), "--prompt", "a cat",
                 "--inference-step", "2", "--num-frames", "2", "--no-standard", "--output-dir", str(out)])
    assert code == 0
    record = only_record(out)
    assert (record["settings"]["height"], record["settings"]["width"]) == (64, 64)
    assert "over the config file's height, width" in capsys.readouterr().err


@pytest.mark.parametrize("name", PIPELINE_PRESETS)
def test_presets_match_the_built_in_defaults(name):
    data = load_yaml_config(os.path.join(ROOT, "configs", name))
    assert data == preset(build_config({"pipeline": data["pipeline"], "prompt": "x"}))


def test_parser_defaults_are_none_so_presets_apply():
    args = build_parser().parse_args([])
    assert all(v is None or v is False for v in vars(args).values()), vars(args)


def test_installed_console_script_is_the_same_cli(tmp_path):
    """`pip install .` gives an `ivmixed` command: the same flags, from any folder."""
    exe = os.path.join(os.path.dirname(sys.executable), "ivmixed")
    if not os.path.exists(exe):
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    result = subprocess.run([exe, "--tiny", "--prompt", "a cat", "--inference-step", "2", "--num-frames", "2",
                             "--no-standard", "--output-dir", "out"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert len(manifest_lines(tmp_path / "out")) == 1


def test_bad_device_string_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--prompt", "a cat", "--device", "gpu0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device 'gpu0' is not a torch device" in err and len(err.strip().splitlines()) == 1


def test_cuda_without_cuda_is_refused(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["--prompt", "a cat", "--device", "cuda"])
    assert exit_info.value.code == 2 and "torch sees no CUDA GPU" in capsys.readouterr().err


def test_reference_compat_is_part_of_the_fingerprint(tmp_path):
    from ivmixed.runner import Runner

    def outputs(pipeline, compat):
        config = build_config({"prompt": "a cat", "pipeline": pipeline, "tiny": True, "reference_compat": compat,
                               "output_dir": str(tmp_path), "device": "cpu"})
        return Runner(config).plan().todo[0].outputs

    for pipeline, standard_changes in (("Animatediff", False), ("ModelScope", False), ("VideoCrafter", True)):
        default, compat = outputs(pipeline, False), outputs(pipeline, True)
        assert default.fingerprint != compat.fingerprint
        # the standard video changes only where the published code samples it differently (VideoCrafter's
        # per-frame main step)
        assert (default.standard_fingerprint != compat.standard_fingerprint) == standard_changes, pipeline


def test_reference_compat_run_records_its_counts(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--tiny", "--pipeline", "VideoCrafter", "--prompt", "a cat", "--inference-step", "4",
                 "--num-frames", "2", "--reference-compat", "--output-dir", str(out)]) == 0
    record = only_record(out)
    assert record["settings"]["reference_compat"] is True
    assert record["network_calls"] == record["expected_network_calls"]
    assert record["network_calls"]["iv_mix"] == {"video": 14, "image": 6}  # zz=3: steps 0, 1 image; 2 video; 3 image
    with pytest.raises(SystemExit) as exit_info:
        main(["--tiny", "--prompt", "a cat", "--inference-step", "51", "--reference-compat", "--output-dir", str(out)])
    assert exit_info.value.code == 2
    assert "--reference-compat supports at most 50 --inference-step" in capsys.readouterr().err
