"""LoRAs of the video model (motion LoRAs, few-step LoRAs of its base UNet): which weights they change, by how
much, what they leave alone, where they are read from, and the one-line errors for files that do not fit."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ivmixed.errors import ModelLoadError, SettingError
from ivmixed.motion_lora import (apply_motion_loras, locate_motion_lora, loaded_motion_loras, motion_lora_identity,
                                 motion_lora_problem, motion_lora_source_problem, parse_motion_lora)
from ivmixed.outputs import file_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two motion-module attention layers of the tiny UNetMotionModel (64 and 32 channels) and the projections a
# motion LoRA of guoyww's trains in each.
MOTION_ATTENTIONS = ("down_blocks.0.motion_modules.0.transformer_blocks.0.attn1",
                     "up_blocks.0.motion_modules.1.transformer_blocks.0.attn2")
PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
# Spatial layers of the base UNet a few-step LoRA trains (the second a cross-attention, 32 text channels in).
BASE_LAYERS = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
               "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
               "up_blocks.1.attentions.0.proj_in")


def weight_of(unet, path):
    return unet.get_submodule(path).weight


def lora_pair(unet, path, rank, generator):
    """A random (A, B) for the layer at ``path``, scaled so deltas stay small."""
    weight = weight_of(unet, path)
    down = torch.randn(rank, *weight.shape[1:], generator=generator) * 0.1
    up = torch.randn(weight.shape[0], rank, *([1] * (weight.ndim - 2)), generator=generator) * 0.1
    return down, up


def delta(down, up):
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])


def motion_lora(unet, seed=0, rank=4, attentions=MOTION_ATTENTIONS):
    """A motion LoRA spelled as guoyww's diffusers-format files: ``unet.<attention>.processor.to_q_lora.down.weight``.
    Returns ``(state dict, {module path: (A, B)})``."""
    g = torch.Generator().manual_seed(seed)
    state, pairs = {}, {}
    for attention in attentions:
        for old, proj in PROJECTIONS.items():
            down, up = lora_pair(unet, f"{attention}.{proj}", rank, g)
            state[f"unet.{attention}.processor.{old}_lora.down.weight"] = down
            state[f"unet.{attention}.processor.{old}_lora.up.weight"] = up
            pairs[f"{attention}.{proj}"] = (down, up)
    return state, pairs


def base_lora(unet, style, seed=1, rank=4, alpha=2.0):
    """A few-step-style LoRA of the base UNet's spatial layers, kohya's or peft's spelling, with one text-encoder
    layer that must be left out. Returns ``(state dict, {module path: (A, B * alpha / rank)})``."""
    g = torch.Generator().manual_seed(seed)
    state, pairs = {}, {}
    for path in BASE_LAYERS:
        down, up = lora_pair(unet, path, rank, g)
        if style == "kohya":
            name = "lora_unet_" + path.replace(".", "_")
            state.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                          f"{name}.alpha": torch.tensor(alpha)})
            pairs[path] = (down, up * alpha / rank)
        else:
            state.update({f"unet.{path}.lora_A.weight": down, f"unet.{path}.lora_B.weight": up})
            pairs[path] = (down, up)
    if style == "kohya":
        name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
        state.update({f"{name}.lora_down.weight": torch.randn(rank, 32),
                      f"{name}.lora_up.weight": torch.randn(32, rank),
                      f"{name}.alpha": torch.tensor(alpha)})
    else:
        state.update({"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(rank, 32),
                      "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, rank)})
    return state, pairs


def write(path, state):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return str(path)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture
def pipe(animatediff_pipe):
    """A private copy of the tiny Animatediff pipeline: applying a LoRA changes its weights."""
    return copy.deepcopy(animatediff_pipe)


@pytest.fixture
def before(pipe):
    return {name: snapshot(getattr(pipe, name)) for name in ("unet", "image_unet", "text_encoder")}


def assert_changed_exactly(pipe, before, expected):
    """``pipe.unet``'s weights are ``before`` plus ``expected`` (``{module path: delta}``), every other tensor of the
    video UNet, the image UNet and the text encoder is equal to before, and no adapter layer stayed behind."""
    after = pipe.unet.state_dict()
    assert set(after) == set(before["unet"])  # no lora_A/lora_B, no base_layer renaming left
    assert not getattr(pipe.unet, "peft_config", None)
    changed = {k for k in after if not torch.equal(after[k], before["unet"][k])}
    assert changed == {f"{path}.weight" for path in expected}
    for path, change in expected.items():
        torch.testing.assert_close(after[f"{path}.weight"] - before["unet"][f"{path}.weight"], change,
                                   rtol=1e-5, atol=1e-6)
    for name in ("image_unet", "text_encoder"):
        now = getattr(pipe, name).state_dict()
        assert all(torch.equal(now[k], v) for k, v in before[name].items()), name


def test_a_motion_lora_changes_exactly_the_motion_weights_it_names(pipe, before, tmp_path):
    state, pairs = motion_lora(pipe.unet)
    path = write(tmp_path / "zoom-out.safetensors", state)
    (record,) = apply_motion_loras(pipe, [f"{path}:0.6"])
    assert_changed_exactly(pipe, before, {p: 0.6 * delta(a, b) for p, (a, b) in pairs.items()})
    assert record["source"] == path and record["scale"] == 0.6 and record["kind"] == "file"
    assert record["sha256"] == file_digest(path) and record["fused"] is True
    assert (record["layers"], record["motion_module_layers"], record["base_unet_layers"]) == (8, 8, 0)
    assert record["adapter"] == "motion_lora_0_zoom_out" and record["skipped"] == []


def test_scale_zero_leaves_every_weight_as_it_was(pipe, before, tmp_path):
    path = write(tmp_path / "zoom.safetensors", motion_lora(pipe.unet)[0])
    (record,) = apply_motion_loras(pipe, [f"{path}:0"])
    assert_changed_exactly(pipe, before, {})
    assert record["fused"] is False and record["layers"] == 8


def test_two_loras_compose(pipe, before, tmp_path):
    """Fused one after the other: W + s1 * B1 @ A1 + s2 * B2 @ A2, also where both name the same layer."""
    first, first_pairs = motion_lora(pipe.unet, seed=0)
    second, second_pairs = motion_lora(pipe.unet, seed=5, rank=2, attentions=MOTION_ATTENTIONS[1:])
    paths = [write(tmp_path / "a.safetensors", first), write(tmp_path / "b.safetensors", second)]
    records = apply_motion_loras(pipe, [f"{paths[0]}:0.5", f"{paths[1]}:-1.5"])
    expected = {p: 0.5 * delta(a, b) for p, (a, b) in first_pairs.items()}
    for p, (a, b) in second_pairs.items():
        expected[p] = expected[p] - 1.5 * delta(a, b)
    assert_changed_exactly(pipe, before, expected)
    assert [r["adapter"] for r in records] == ["motion_lora_0_a", "motion_lora_1_b"]


@pytest.mark.parametrize("style", ["kohya", "peft"])
def test_a_few_step_lora_of_the_base_unet_changes_its_spatial_layers(pipe, before, tmp_path, style):
    state, pairs = base_lora(pipe.unet, style)
    path = write(tmp_path / "AnimateLCM_sd15_t2v_lora.safetensors", state)
    (record,) = apply_motion_loras(pipe, [f"{path}:0.8"])
    assert_changed_exactly(pipe, before, {p: 0.8 * delta(a, b) for p, (a, b) in pairs.items()})
    assert (record["layers"], record["motion_module_layers"], record["base_unet_layers"]) == (3, 0, 3)
    assert record["text_encoder_layers_skipped"] == 1  # the text encoder is the image model's too


def test_a_motion_lora_and_a_base_lora_together(pipe, before, tmp_path):
    motion, motion_pairs = motion_lora(pipe.unet)
    base, base_pairs = base_lora(pipe.unet, "kohya")
    specs = [write(tmp_path / "motion.safetensors", motion) + ":1.2",
             write(tmp_path / "lcm.safetensors", base) + ":0.8"]
    apply_motion_loras(pipe, specs)
    expected = {p: 1.2 * delta(a, b) for p, (a, b) in motion_pairs.items()}
    expected.update({p: 0.8 * delta(a, b) for p, (a, b) in base_pairs.items()})
    assert_changed_exactly(pipe, before, expected)


@pytest.mark.parametrize("target", ["image", "both"])
def test_composes_with_the_lora_fused_before(pipe, before, tmp_path, target):
    """The run applies ``lora`` (ivmixed.lora, fused) first: motion LoRAs add to what it left, wherever it went."""
    from ivmixed.lora import apply_lora_to_pipeline

    image_lora, _ = base_lora(pipe.image_unet, "kohya", seed=7)
    apply_lora_to_pipeline(pipe, write(tmp_path / "style.safetensors", image_lora), 0.5, target)
    merged = {name: snapshot(getattr(pipe, name)) for name in ("unet", "image_unet", "text_encoder")}
    key = f"{BASE_LAYERS[0]}.weight"
    assert not torch.equal(merged["image_unet"][key], before["image_unet"][key])
    assert torch.equal(merged["unet"][key], before["unet"][key]) == (target == "image")
    motion, motion_pairs = motion_lora(pipe.unet)
    base, base_pairs = base_lora(pipe.unet, "peft")  # the same layers the first LoRA changed, for "both"
    apply_motion_loras(pipe, [write(tmp_path / "motion.safetensors", motion),
                              write(tmp_path / "lcm.safetensors", base)])
    expected = {p: delta(a, b) for p, (a, b) in {**motion_pairs, **base_pairs}.items()}
    assert_changed_exactly(pipe, merged, expected)


def test_original_animatediff_motion_module_names_are_read(pipe, before, tmp_path):
    """``temporal_transformer`` and ``attention_blocks.N`` (AnimateDiff's own names) name the same modules."""
    state, pairs = motion_lora(pipe.unet)
    original = {}
    for key, value in state.items():
        key = key.removeprefix("unet.").replace(".motion_modules.0.", ".motion_modules.0.temporal_transformer.")
        key = key.replace(".motion_modules.1.", ".motion_modules.1.temporal_transformer.")
        original[key.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")] = value
    assert not any(".attn1." in key or ".attn2." in key for key in original)
    path = write(tmp_path / "mm_lora.safetensors", original)
    apply_motion_loras(pipe, [path])
    assert_changed_exactly(pipe, before, {p: delta(a, b) for p, (a, b) in pairs.items()})


def sdxl_like_lora(rank=4):
    """A kohya LoRA in SDXL's original block names: nothing in an SD 1.5 UNet has them."""
    state = {}
    for name in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                 "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_k"):
        state.update({f"{name}.lora_down.weight": torch.randn(rank, 640),
                      f"{name}.lora_up.weight": torch.randn(640, rank),
                      f"{name}.alpha": torch.tensor(float(rank))})
    state.update({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(rank, 768),
                  "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(3072, rank)})
    return state


def wrong_shapes_lora(unet, rank=4):
    """diffusers' names of this UNet's layers with SDXL's widths (2048 text channels into cross-attention)."""
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    out = weight_of(unet, path).shape[0]
    return {f"unet.{path}.lora_A.weight": torch.randn(rank, 2048), f"unet.{path}.lora_B.weight": torch.randn(out, rank)}


@pytest.mark.parametrize("content,says", [
    ("sdxl", "none of its 2 LoRA layers names a layer of the video UNet (UNetMotionModel)"),
    ("wrong_shapes", "1 of its 1 layers do not fit the video UNet's (down_blocks.0.attentions.0.transformer_blocks.0"
                     ".attn2.to_k: LoRA 2048 -> 32, layer 32 -> 32): a LoRA for another base model (SDXL?)"),
    ("not_lora", "holds no plain LoRA layers"),
    ("not_safetensors", "is not a readable .safetensors file"),
])
def test_a_file_that_fits_nothing_is_one_line_error_and_changes_nothing(pipe, before, tmp_path, content, says):
    path = str(tmp_path / "other.safetensors")
    if content == "sdxl":
        write(path, sdxl_like_lora())
    elif content == "wrong_shapes":
        write(path, wrong_shapes_lora(pipe.unet))
    elif content == "not_lora":  # a motion adapter's weights, not a LoRA
        write(path, {k: v for k, v in list(pipe.unet.state_dict().items())[:4]})
    else:
        with open(path, "wb") as f:
            f.write(b"not a safetensors file")
    good = write(tmp_path / "good.safetensors", motion_lora(pipe.unet)[0])
    with pytest.raises(ModelLoadError) as err:
        apply_motion_loras(pipe, [good, path])  # every file is checked before any weight changes
    message = str(err.value)
    assert "\n" not in message and says in message, message
    assert message.startswith(f"motion_lora {path}: ")
    assert err.value.render(lambda name: "--" + name.replace("_", "-")).startswith("--motion-lora ")
    assert_changed_exactly(pipe, before, {})


def test_a_motion_adapter_folder_is_no_lora(pipe, animatediff_paths):
    with pytest.raises(ModelLoadError, match="holds no plain LoRA layers"):
        apply_motion_loras(pipe, [animatediff_paths["motion_adapter"]])


def test_layers_naming_no_module_are_skipped_with_a_warning(pipe, before, tmp_path, caplog):
    state, pairs = motion_lora(pipe.unet)
    state.update(sdxl_like_lora())
    path = write(tmp_path / "partly.safetensors", state)
    (record,) = apply_motion_loras(pipe, [path])
    assert_changed_exactly(pipe, before, {p: delta(a, b) for p, (a, b) in pairs.items()})
    assert len(record["skipped"]) == 2 and record["text_encoder_layers_skipped"] == 1
    assert "2 layer(s) of motion LoRA" in caplog.text


def test_a_layer_that_is_no_plain_lora_is_not_applied_in_part(pipe, before, tmp_path):
    """A DoRA layer's A and B without its magnitudes would be a different change: the layer is skipped."""
    state, pairs = motion_lora(pipe.unet)
    dora_path = BASE_LAYERS[0]
    down, up = lora_pair(pipe.unet, dora_path, 4, torch.Generator().manual_seed(3))
    state.update({f"unet.{dora_path}.lora_A.weight": down, f"unet.{dora_path}.lora_B.weight": up,
                  f"unet.{dora_path}.lora_magnitude_vector": torch.ones(up.shape[0])})
    (record,) = apply_motion_loras(pipe, [write(tmp_path / "dora.safetensors", state)])
    assert_changed_exactly(pipe, before, {p: delta(a, b) for p, (a, b) in pairs.items()})
    assert dora_path in record["skipped"]


def test_a_folder_is_read_by_its_weight_name(pipe, before, tmp_path):
    state, pairs = motion_lora(pipe.unet)
    folder = tmp_path / "animatediff-motion-lora-zoom-in"
    write(folder / "diffusion_pytorch_model.safetensors", state)
    write(folder / "other.safetensors", sdxl_like_lora())  # the weight name wins over other files
    (record,) = apply_motion_loras(pipe, [f"{folder}:0.25"])
    assert record["kind"] == "folder" and record["path"] == str(folder / "diffusion_pytorch_model.safetensors")
    assert_changed_exactly(pipe, before, {p: 0.25 * delta(a, b) for p, (a, b) in pairs.items()})


def fake_hub_cache(root, repo, files):
    """``files`` ({name: state dict}) laid out as the hub cache holds a download of ``repo``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = os.path.join(root, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write(commit)
    for name, state in files.items():
        write(os.path.join(folder, "snapshots", commit, name), state)
    return os.path.join(folder, "snapshots", commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = str(tmp_path / "hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_hub_ids_and_hub_files_come_from_the_cache_offline(pipe, before, hub_cache):
    motion, motion_pairs = motion_lora(pipe.unet)
    base, base_pairs = base_lora(pipe.unet, "kohya")
    fake_hub_cache(hub_cache, "guoyww/animatediff-motion-lora-zoom-out",
                   {"diffusion_pytorch_model.safetensors": motion})
    snapshot_dir = fake_hub_cache(hub_cache, "wangfuyun/AnimateLCM", {"AnimateLCM_sd15_t2v_lora.safetensors": base})
    specs = ["guoyww/animatediff-motion-lora-zoom-out", "wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors:0.8"]
    records = apply_motion_loras(pipe, specs)
    expected = {p: delta(a, b) for p, (a, b) in motion_pairs.items()}
    expected.update({p: 0.8 * delta(a, b) for p, (a, b) in base_pairs.items()})
    assert_changed_exactly(pipe, before, expected)
    assert [(r["kind"], r["repo"], r["file"]) for r in records] == [
        ("hub", "guoyww/animatediff-motion-lora-zoom-out", "diffusion_pytorch_model.safetensors"),
        ("hub-file", "wangfuyun/AnimateLCM", "AnimateLCM_sd15_t2v_lora.safetensors")]
    digest = file_digest(os.path.join(snapshot_dir, "AnimateLCM_sd15_t2v_lora.safetensors"))
    assert records[1]["sha256"] == digest
    assert motion_lora_identity(specs) == [  # by id, as hub checkpoints: the same before and after a download
        {"hub": "guoyww/animatediff-motion-lora-zoom-out", "file": None, "scale": 1.0},
        {"hub": "wangfuyun/AnimateLCM", "file": "AnimateLCM_sd15_t2v_lora.safetensors", "scale": 0.8}]


def test_an_uncached_hub_lora_offline_is_one_line(pipe, before, hub_cache):
    spec = "wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors:0.8"
    with pytest.raises(ModelLoadError) as err:
        apply_motion_loras(pipe, [spec])
    message = str(err.value)
    assert "\n" not in message and "not in the local hub cache, and HF_HUB_OFFLINE is set" in message
    assert "`hf download wangfuyun/AnimateLCM AnimateLCM_sd15_t2v_lora.safetensors`" in message
    assert motion_lora_identity([spec]) == [{"hub": "wangfuyun/AnimateLCM",
                                             "file": "AnimateLCM_sd15_t2v_lora.safetensors", "scale": 0.8}]
    assert_changed_exactly(pipe, before, {})


def test_a_video_unet_that_takes_no_lora_is_refused(tmp_path):
    class Plain:
        unet = torch.nn.Linear(2, 2)

    with pytest.raises(SettingError, match="needs a video UNet that takes LoRAs"):
        apply_motion_loras(Plain(), [str(tmp_path / "x.safetensors")])


# -- spellings, checks and identity (no torch model) ------------------------------------------------------------


@pytest.mark.parametrize("text,source,scale", [
    ("guoyww/animatediff-motion-lora-zoom-out", "guoyww/animatediff-motion-lora-zoom-out", 1.0),
    ("guoyww/animatediff-motion-lora-zoom-out:0.7", "guoyww/animatediff-motion-lora-zoom-out", 0.7),
    ("wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors:0.8",
     "wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors", 0.8),
    ("a/b:-1.5", "a/b", -1.5),
    ("a/b:1e-1", "a/b", 0.1),
    (r"C:\loras\zoom.safetensors", r"C:\loras\zoom.safetensors", 1.0),
    (r"C:\loras\zoom.safetensors:0.5", r"C:\loras\zoom.safetensors", 0.5),
    ("D:/loras/zoom.safetensors:2", "D:/loras/zoom.safetensors", 2.0),
    (r"\\server\share\zoom.safetensors:0.3", r"\\server\share\zoom.safetensors", 0.3),
    ("loras/zoom:v2.safetensors", "loras/zoom:v2.safetensors", 1.0),
    (" a/b : 0.5", "a/b", 0.5),
])
def test_parse_motion_lora(text, source, scale):
    assert parse_motion_lora(text) == (source, scale)


@pytest.mark.parametrize("text,problem", [
    ("guoyww/animatediff-motion-lora-zoom-out:0.7", None),
    ("wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors:0.8", None),
    ("owner/repo/sub/folder/file.safetensors", None),
    (":0.5", "needs a hub id or a file before its scale"),
    ("a/b:nan", "scale must be a finite number"),
    ("a/b:inf", "scale must be a finite number"),
    (r"C:\loras\zoom.safetensors:0.5", r"C:\loras\zoom.safetensors: no such file or folder"),
    ("./loras/zoom.safetensors", "./loras/zoom.safetensors: no such file or folder"),
    ("~/no-such-lora-here.safetensors", "no such file or folder"),
    ("zoom.safetensors", "zoom.safetensors: no such file (a file on the hub is spelled owner/repo/name.safetensors)"),
    ("owner/zoom.safetensors", "no such file (a file on the hub"),
    ("v2_lora_ZoomIn.ckpt", "is not a .safetensors file"),
    ("zoom-out", "is neither a .safetensors file, a folder, a hub file"),
    ("a/b:x", "a/b:x: is not a valid hub repository id (owner/name)"),
    ("own..er/repo", "is not a valid hub repository id"),
    ("owner/repo:name/x.safetensors", "is not a valid hub repository id"),
])
def test_motion_lora_source_problem(text, problem):
    found = motion_lora_source_problem(text)
    assert found == problem if problem is None else problem in found, found


@pytest.mark.parametrize("text,problem", [
    (":0.5", "needs a hub id or a file before its scale"),
    ("a/b:nan", "scale must be a finite number"),
    ("v2_lora_ZoomIn.ckpt:0.5", "v2_lora_ZoomIn.ckpt: is not a .safetensors file"),
    ("pan.safetensors", None),  # whether it is there is asked when the run plans
    (r"C:\loras\zoom.safetensors:0.5", None),
])
def test_motion_lora_problem_asks_only_of_the_spelling(text, problem):
    found = motion_lora_problem(text)
    assert found == problem if problem is None else problem in found, found


def test_local_files_win_over_hub_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "owner" / "repo" / "x.safetensors", {"a": torch.zeros(1)})
    write(tmp_path / "loras" / "my:lora.safetensors", {"a": torch.zeros(1)})
    where, problem = locate_motion_lora("owner/repo/x.safetensors")
    assert problem is None and where.kind == "file" and where.path == str(tmp_path / "owner" / "repo" / "x.safetensors")
    assert parse_motion_lora("loras/my:lora.safetensors") == ("loras/my:lora.safetensors", 1.0)
    assert motion_lora_source_problem("loras/my:lora.safetensors:0.5") is None
    (tmp_path / "two").mkdir()
    write(tmp_path / "two" / "a.safetensors", {"a": torch.zeros(1)})
    write(tmp_path / "two" / "b.safetensors", {"a": torch.zeros(1)})
    assert "2 .safetensors files (a.safetensors, b.safetensors): give one" in motion_lora_source_problem("two")
    assert "no .safetensors file" in motion_lora_source_problem(str(tmp_path / "owner"))
    assert motion_lora_source_problem(str(tmp_path / "owner" / "repo")) is None  # its only .safetensors file


def test_the_run_configuration_checks_motion_loras():
    from ivmixed.config import build_config

    config = build_config({"prompt": "x", "motion_lora": ("guoyww/animatediff-motion-lora-zoom-out:0.7",)})
    assert config.motion_lora == ("guoyww/animatediff-motion-lora-zoom-out:0.7",)
    with pytest.raises(SettingError, match=r"^motion_lora v2_lora_PanLeft\.ckpt: is not a \.safetensors file"):
        build_config({"prompt": "x", "motion_lora": ("v2_lora_PanLeft.ckpt:0.5",)})
    with pytest.raises(SettingError, match="motion_lora applies to pipeline Animatediff only"):
        build_config({"prompt": "x", "pipeline": "ModelScope", "motion_lora": ("a/b",)})


def test_a_missing_file_stops_the_run_as_it_plans_before_any_model_loads(tmp_path, monkeypatch):
    """The run's fingerprint finds and hashes the files: a missing one is one line, before loading."""
    from ivmixed.config import build_config
    from ivmixed.runner import Runner

    config = build_config({"prompt": "x", "tiny": True, "output_dir": str(tmp_path / "out"),
                           "motion_lora": (r"C:\loras\zoom.safetensors:0.5",)})
    monkeypatch.setattr("ivmixed.runner.load_pipeline", lambda config: pytest.fail("loaded models"))
    with pytest.raises(ModelLoadError) as err:
        Runner(config, progress_bars=False).run()
    assert str(err.value) == r"motion_lora C:\loras\zoom.safetensors: no such file or folder"


def test_identity_follows_the_file_content_and_the_scale(tmp_path):
    path = write(tmp_path / "zoom.safetensors", {"unet.x.lora_A.weight": torch.zeros(2, 2)})
    first = motion_lora_identity([path + ":0.5"])
    assert first == [{"sha256": file_digest(path), "scale": 0.5}]
    assert motion_lora_identity([path + ":0.5"]) == first
    assert motion_lora_identity([path + ":0.6"]) != first
    write(tmp_path / "zoom.safetensors", {"unet.x.lora_A.weight": torch.ones(2, 2)})  # same size, new content
    assert motion_lora_identity([path + ":0.5"])[0]["sha256"] != first[0]["sha256"]
    assert motion_lora_identity(["guoyww/animatediff-motion-lora-zoom-out"])[0]["hub"] == \
        "guoyww/animatediff-motion-lora-zoom-out"
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        motion_lora_identity([str(tmp_path / "gone.safetensors")])


def test_identity_and_checks_load_no_torch(tmp_path):
    path = write(tmp_path / "zoom.safetensors", {"unet.x.lora_A.weight": torch.zeros(2, 2)})
    code = ("import sys\n"
            "from ivmixed.motion_lora import loaded_motion_loras, motion_lora_identity, motion_lora_problem\n"
            f"assert motion_lora_problem({path!r} + ':0.5') is None\n"
            f"assert motion_lora_identity([{path!r}, 'guoyww/animatediff-motion-lora-zoom-out'])[0]['sha256']\n"
            f"assert loaded_motion_loras([{path!r} + ':2', 'a/b'], True) == ({path!r} + ':2',)\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr


def test_tiny_runs_leave_out_hub_loras_and_keep_files(tmp_path):
    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"x")
    specs = ("guoyww/animatediff-motion-lora-zoom-out:0.5", f"{weights}:0.7", "a/b/c.safetensors")
    assert loaded_motion_loras(specs, tiny=True) == (f"{weights}:0.7",)
    assert loaded_motion_loras(specs, tiny=False) == specs
