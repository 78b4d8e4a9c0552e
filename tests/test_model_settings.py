"""The settings that choose models and the sampler: how they are spelled (flags, YAML, the web app), refused where
a pipeline cannot take them, and what they add to a video's fingerprint."""

import re
from dataclasses import replace

import pytest

from ivmixed.app.fields import PIPELINE_OWN
from ivmixed.app.state import App
from ivmixed.cli import build_parser
from ivmixed.config import ConfigError, build_config, build_config_with_layers, check, load_yaml_config
from ivmixed.outputs import identities, output_set
from ivmixed.prompts import Job

JOB = Job("a cat", 1, None)


def config(**given):
    return build_config({"prompt": "a cat", **given})


def test_motion_lora_is_repeatable_on_the_command_line_and_a_list_in_yaml(tmp_path):
    args = build_parser().parse_args(["--prompt", "a", "--motion-lora", "guoyww/animatediff-motion-lora-zoom-out:0.6",
                                      "--motion-lora", "pan.safetensors"])
    assert args.motion_lora == ["guoyww/animatediff-motion-lora-zoom-out:0.6", "pan.safetensors"]
    assert config(motion_lora=args.motion_lora).motion_lora == ("guoyww/animatediff-motion-lora-zoom-out:0.6",
                                                                "pan.safetensors")
    preset = tmp_path / "p.yaml"
    preset.write_text("motion_lora:\n  - a/b\n  - c/d:0.5\nscheduler: euler\ntimestep_spacing: trailing\n")
    values = load_yaml_config(str(preset))
    assert values["motion_lora"] == ("a/b", "c/d:0.5") and values["scheduler"] == "euler"
    preset.write_text("motion_lora: one/lora\n")
    assert load_yaml_config(str(preset))["motion_lora"] == ("one/lora",)
    preset.write_text("motion_lora: [1, 2]\n")
    with pytest.raises(ConfigError, match="must be text or a list of texts"):
        load_yaml_config(str(preset))


@pytest.mark.parametrize("given, message", [
    ({"pipeline": "ModelScope", "motion_lora": ("a/b",)}, "motion_lora applies to pipeline Animatediff only"),
    ({"pipeline": "VideoCrafter", "video_model_config": "a/b"}, "video_model_config applies to pipeline Animatediff only"),
    ({"motion_lora": ("a/b:inf",)}, "scale must be a finite number"),
    ({"motion_lora": (":0.5",)}, "needs a hub id or a file"),
    ({"scheduler": "heun"}, "scheduler must be one of ddim, euler, euler-a, dpm++, dpm++-sde, lcm"),
])
def test_model_settings_a_run_cannot_take_are_refused(given, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(config(tiny=True, **given))


def test_under_tiny_the_extra_model_sources_are_reported_unused():
    _, layers = build_config_with_layers({"prompt": "a", "tiny": True, "vae": "stabilityai/sd-vae-ft-mse"})
    assert any("vae" in str(w) and "not loaded" in str(w) for w in check(_))


def test_fingerprints_stay_as_they_were_until_a_new_setting_is_given():
    base = config(device="cpu", dtype="fp32")
    ids = identities(base, JOB, None)["iv_mix"]
    assert "scheduler_settings" not in ids and "motion_lora" not in ids and set(ids["models"]) == {
        "video_model", "motion_adapter", "image_model"}
    fingerprints = {output_set(base, JOB, None).fingerprint}
    for given in ({"scheduler": "euler"}, {"timestep_spacing": "trailing"}, {"beta_schedule": "linear"},
                  {"vae": "stabilityai/sd-vae-ft-mse"}, {"image_model_config": "some/config"}):
        changed = replace(base, **given)  # the fingerprint alone: these hub ids are not in the cache here
        fingerprints.add(output_set(changed, JOB, None).fingerprint)
        standard = identities(changed, JOB, None)["standard"]
        assert given.items() <= {**standard.get("scheduler_settings", {}), **standard["models"]}.items()
    assert len(fingerprints) == 6  # each setting makes other videos, standard ones too


def test_a_single_file_model_is_known_by_its_content(tmp_path):
    from sd_layout import write_header_only

    weights = tmp_path / "model.safetensors"
    unet = "model.diffusion_model.input_blocks.0.0.weight"
    write_header_only(str(weights), {unet: (32, 4, 3, 3)})
    base = config(device="cpu", dtype="fp32")
    first = identities(replace(base, image_model=str(weights)), JOB, None)["standard"]
    write_header_only(str(weights), {unet: (32, 4, 3, 3)}, dtype="F32")
    second = identities(replace(base, image_model=str(weights)), JOB, None)["standard"]
    assert first["models"]["image_model"].startswith("sha256:")
    assert first["models"]["image_model"] != second["models"]["image_model"]


def test_the_app_maps_its_model_fields_to_settings(tmp_path):
    app = App(output_dir=str(tmp_path), tiny=True)
    given = app.given({"prompt": "a cat", "scheduler": PIPELINE_OWN, "timestep_spacing": "trailing",
                       "motion_lora": "a/b:0.5\n\n  c/d  \n", "vae": "  ", "video_model": ""})
    assert given["scheduler"] is None and given["timestep_spacing"] == "trailing"
    assert given["motion_lora"] == ("a/b:0.5", "c/d") and given["vae"] is None and given["video_model"] is None
    made = app.config({"prompt": "a cat", "motion_lora": "a/b:0.5\nc/d", "scheduler": "euler"})
    line = app.command_line(made)
    assert line[line.index("--scheduler") + 1] == "euler"
    assert [line[i + 1] for i, part in enumerate(line) if part == "--motion-lora"] == ["a/b:0.5", "c/d"]


def test_a_config_source_without_a_single_file_is_reported_unused(tmp_path):
    folder = tmp_path / "configs"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    warnings = check(config(device="cpu", image_model_config=str(folder), image_model=str(folder)))
    assert [str(w) for w in warnings] == ["image_model_config does nothing: image_model is not a single file (a "
                                          "folder or hub id holds its own configs)"]
