"""The few-step presets (configs/animatelcm.yaml, configs/animatediff-lightning.yaml): they hold their model cards'
values, build checked configurations, and a run of the same settings on tiny models (local LoRA files instead of
the hub's) samples with their scheduler and the LoRA fused into the video UNet."""

import os

import pytest
import torch
import yaml

from ivmixed.config import build_config, build_config_with_layers, load_yaml_config
from ivmixed.registry import PIPELINES

from runs import only_record
from test_motion_lora import base_lora, delta, motion_lora, write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LCM, LIGHTNING = "animatelcm.yaml", "animatediff-lightning.yaml"
# The values each model card gives (see the comments in the files).
MODEL_CARDS = {
    LCM: {"pipeline": "Animatediff", "motion_adapter": "wangfuyun/AnimateLCM",
          "motion_lora": ("wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors:0.8",), "scheduler": "lcm",
          "beta_schedule": "linear", "guidance_scale": 2.0, "inference_step": 6,
          "negative_prompt": "bad quality, worse quality, low resolution"},
    LIGHTNING: {"pipeline": "Animatediff",
                "motion_adapter": "ByteDance/AnimateDiff-Lightning/animatediff_lightning_4step_diffusers.safetensors",
                "scheduler": "euler", "timestep_spacing": "trailing", "beta_schedule": "linear", "guidance_scale": 1.0,
                "inference_step": 4},
}
SCHEDULER_CLASSES = {LCM: "LCMScheduler", LIGHTNING: "EulerDiscreteScheduler"}
# The pipeline's own defaults the presets keep.
KEPT = {"video_model": "SG161222/Realistic_Vision_V5.1_noVAE",
        "image_model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "num_frames": 16, "height": 512, "width": 512,
        "zz": 1000, "interval_begin": 0}


def preset(name):
    return load_yaml_config(os.path.join(ROOT, "configs", name))


@pytest.mark.parametrize("name", sorted(MODEL_CARDS))
def test_a_preset_holds_its_model_card_values(name):
    data = preset(name)
    assert {k: data.get(k) for k in MODEL_CARDS[name]} == MODEL_CARDS[name]
    assert {k: data[k] for k in KEPT} == KEPT
    assert LCM != name or "timestep_spacing" not in data  # LCM picks its own timesteps
    assert LIGHTNING != name or "motion_lora" not in data and "negative_prompt" not in data  # no CFG at 1.0


@pytest.mark.parametrize("name", sorted(MODEL_CARDS))
def test_a_preset_builds_a_checked_tiny_configuration(name):
    data = preset(name)
    config, layers = build_config_with_layers({"prompt": "a cat", "tiny": True,
                                               "inference_step": data["inference_step"]}, data)
    assert config.spec is PIPELINES["Animatediff"] and config.inference_step == data["inference_step"]
    assert (config.scheduler, config.beta_schedule, config.guidance_scale) == (
        data["scheduler"], data["beta_schedule"], data["guidance_scale"])
    assert config.motion_lora == data.get("motion_lora", ())
    # What tiny leaves out: the preset's own motion adapter, and its hub LoRA (made for the real base UNet).
    left_out = "motion_adapter and motion_lora are" if data.get("motion_lora") else "motion_adapter is"
    assert [str(w) for w in layers.warnings] == [f"{left_out} not loaded: tiny uses random tiny models instead"]


def test_the_animatelcm_preset_builds_a_full_size_configuration():
    config, layers = build_config_with_layers({"prompt": "a cat"}, preset(LCM))
    assert (config.inference_step, config.height, config.num_frames) == (6, 512, 16)
    assert layers.warnings == ()


def test_the_lightning_preset_builds_a_full_size_configuration():
    """Needs single-file motion adapters (a hub file owner/repo/name.safetensors as motion_adapter)."""
    config, layers = build_config_with_layers({"prompt": "a cat"}, preset(LIGHTNING))
    assert config.motion_adapter == MODEL_CARDS[LIGHTNING]["motion_adapter"] and config.inference_step == 4
    assert layers.warnings == ()


# -- preset-like runs on tiny models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    """The tiny Animatediff pipeline as --tiny loads it, before any LoRA (its random weights are seeded)."""
    from ivmixed.testing import load_tiny

    return load_tiny(PIPELINES["Animatediff"])


def preset_like(name, tmp_path, reference):
    """The preset with local files for what it takes from the hub: the tiny motion adapter, and a tiny LoRA of
    the kind the preset uses (AnimateLCM: a LoRA of the base UNet at its 0.8; Lightning: a camera motion LoRA on
    top, at 1.0). Returns ``(settings, {module path: expected weight change})``."""
    from ivmixed.testing import save_tiny_checkpoints

    data = dict(preset(name))
    data["motion_adapter"] = save_tiny_checkpoints(str(tmp_path / "models"), "Animatediff")["motion_adapter"]
    if name == LCM:
        state, pairs = base_lora(reference.unet, "kohya")
        scale = 0.8
    else:
        state, pairs = motion_lora(reference.unet)
        scale = 1.0
    path = write(tmp_path / "lora" / "tiny_lora.safetensors", state)
    data["motion_lora"] = (f"{path}:{scale:g}",)
    return data, {p: scale * delta(a, b) for p, (a, b) in pairs.items()}


@pytest.fixture(scope="module", params=sorted(MODEL_CARDS))
def preset_run(request, tmp_path_factory, reference):
    """One run of a preset-like configuration through the Runner, the pipeline it loaded, and its record."""
    from ivmixed.runner import PipelineCache, Runner

    name = request.param
    tmp_path = tmp_path_factory.mktemp(name.removesuffix(".yaml"))
    data, expected = preset_like(name, tmp_path, reference)
    out = tmp_path / "out"
    config = build_config({"prompt": "a cat", "tiny": True, "num_frames": 2, "inference_step": data["inference_step"],
                           "no_standard": True, "output_dir": str(out)}, data)
    cache = PipelineCache()
    runner = Runner(config, pipelines=cache, progress_bars=False)
    runner.run()
    return name, cache.get(runner.config).pipe, only_record(out), expected


def test_a_preset_like_run_fuses_its_lora_into_the_video_unet_only(preset_run, reference):
    name, pipe, record, expected = preset_run
    (entry,) = record["motion_lora"]
    assert entry["scale"] == (0.8 if name == LCM else 1.0) and entry["layers"] == len(expected)
    assert entry["motion_module_layers"] == (0 if name == LCM else len(expected))
    after, before = pipe.unet.state_dict(), reference.unet.state_dict()
    assert set(after) == set(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"{p}.weight" for p in expected}
    for path, change in expected.items():
        torch.testing.assert_close(after[f"{path}.weight"] - before[f"{path}.weight"], change, rtol=1e-5, atol=1e-6)
    for component in ("image_unet", "text_encoder"):
        now, was = getattr(pipe, component).state_dict(), getattr(reference, component).state_dict()
        assert all(torch.equal(now[k], was[k]) for k in was), component


def test_a_preset_like_run_samples_with_its_scheduler(preset_run):
    """Needs the scheduler settings wired into the run (ivmixed.schedulers.make_scheduler)."""
    name, pipe, record, _ = preset_run
    assert type(pipe.scheduler).__name__ == SCHEDULER_CLASSES[name]
    assert record["scheduler"]["class"] == SCHEDULER_CLASSES[name]
    assert pipe.scheduler.config.beta_schedule == "linear"
    if name == LIGHTNING:
        assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert record["settings"]["guidance_scale"] == MODEL_CARDS[name]["guidance_scale"]


def test_the_command_line_takes_a_preset_like_file_and_a_motion_lora_flag(tmp_path, reference):
    """A ``--motion-lora`` flag replaces the file's list."""
    from ivmixed.cli import main

    data, _ = preset_like(LCM, tmp_path, reference)
    other = write(tmp_path / "lora" / "zoom.safetensors", motion_lora(reference.unet)[0])
    config_file = tmp_path / "animatelcm-like.yaml"
    config_file.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}))
    out = tmp_path / "out"
    code = main(["--tiny", "--config", str(config_file), "--prompt", "a cat", "--inference-step", "2",
                 "--num-frames", "2", "--no-standard", "--motion-lora", f"{other}:0.5", "--output-dir", str(out)])
    assert code == 0
    (entry,) = only_record(out)["motion_lora"]
    assert (entry["source"], entry["scale"], entry["motion_module_layers"]) == (other, 0.5, 8)
