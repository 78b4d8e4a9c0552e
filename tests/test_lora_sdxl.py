"""LoRA for the SDXL image model: kohya files in SDXL's original (SGM) block names, merged exactly.

The files are synthesized here for the tiny SDXL UNet. Their names come from this file's own diffusers -> SGM
mapping (:func:`sgm_path`), itself checked against diffusers' single-file checkpoint converter, so the test does
not lean on the LoRA conversion it tests. Every expected change is ``scale * alpha / rank * up @ down``, in
float64, and every other weight must stay bit for bit.
"""

import logging
import re

import pytest
import torch
from runs import only_record, run_main
from safetensors.torch import save_file

from ivmixed.lora import apply_lora_to_pipeline, merge_lora
from ivmixed.pipelines.animatediff_sdxl import IVMixedAnimateDiffSDXLPipeline
from ivmixed.testing import save_tiny_animatediff_sdxl, save_tiny_sdxl, tiny_image_unet, tiny_sdxl_unet

SCALE = 0.7

# diffusers' module names -> SGM (ldm) names: the resnet parts and the layers outside the blocks.
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
       "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
       "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def sgm_path(path, unet):
    """The SGM name of the diffusers module (or parameter) ``path`` of ``unet``: input_blocks count conv_in, then
    per down block ``layers_per_block`` (resnet .0, attention .1) and its downsampler; output_blocks count
    ``layers_per_block + 1`` per up block, the upsampler after the attention (.2) or the resnet (.1)."""
    n = unet.config.layers_per_block
    for old, new in TOP.items():
        if path == old or path.startswith(old + "."):
            return new + path[len(old):]

    def inside(kind, rest):
        if kind != "resnets":
            return rest  # attentions keep diffusers' names (proj_in, transformer_blocks.0.attn1.to_q, ...)
        head, _, tail = rest.partition(".")
        return RESNET[head] + ("." + tail if tail else "")

    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", path):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{1 + block * (n + 1) + n}.0.{rest.replace('conv', 'op', 1)}"
        return f"input_blocks.{1 + block * (n + 1) + j}.{0 if kind == 'resnets' else 1}.{inside(kind, rest)}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", path):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j if kind == 'resnets' else 1}.{inside(kind, rest)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", path):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            after = 2 if hasattr(unet.up_blocks[block], "attentions") else 1
            return f"output_blocks.{block * (n + 1) + n}.{after}.{rest}"
        return f"output_blocks.{block * (n + 1) + j}.{0 if kind == 'resnets' else 1}.{inside(kind, rest)}"
    raise KeyError(path)


def kohya_name(prefix, path):
    return f"{prefix}_{path.replace('.', '_')}"


# diffusers module path -> (rank, alpha or None): attention projections, ff, proj_in/out, resnet convs, the
# time embedding, down/upsampler and conv_in/out, with ranks and alphas that differ between layers.
UNET_LAYERS = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (4, 2.0),
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (2, 8.0),
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v": (3, 1.0),
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0": (4, 4.0),
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q": (1, 0.25),
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": (3, 6.0),
    "up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2": (2, None),
    "down_blocks.1.attentions.0.proj_in": (2, 1.0),
    "up_blocks.0.attentions.1.proj_out": (4, 16.0),
    "down_blocks.0.resnets.0.conv1": (2, 0.5),
    "up_blocks.1.resnets.0.conv_shortcut": (3, 3.0),
    "mid_block.resnets.1.time_emb_proj": (2, 2.0),
    "up_blocks.1.resnets.1.conv2": (1, 1.0),
    "down_blocks.0.downsamplers.0.conv": (2, 4.0),
    "up_blocks.0.upsamplers.0.conv": (3, 1.5),
    "conv_in": (1, 2.0),
    "conv_out": (2, 1.0),
}


def lora_entries(name, weight, rank, alpha, generator):
    """kohya entries for one layer whose base weight is ``weight`` (linear, or conv with a 1x1 ``up``)."""
    down = torch.randn(rank, *weight.shape[1:], generator=generator) * 0.1
    up = torch.randn(weight.shape[0], rank, *([1, 1] if weight.ndim == 4 else []), generator=generator) * 0.1
    entries = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    if alpha is not None:
        entries[f"{name}.alpha"] = torch.tensor(alpha)
    return entries


def expected_delta(entries, name, shape, scale):
    down = entries[f"{name}.lora_down.weight"].double()
    up = entries[f"{name}.lora_up.weight"].double()
    alpha = entries.get(f"{name}.alpha")
    ratio = 1.0 if alpha is None else alpha.item() / down.shape[0]
    return scale * ratio * (up.flatten(1) @ down.flatten(1)).reshape(shape)


def weights(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_changed_exactly(before, model, entries, layers, scale):
    """``model``'s weights are ``before`` plus the LoRA on ``layers`` ({kohya name: module path}), and bit for bit
    ``before`` everywhere else."""
    after = weights(model)
    assert after.keys() == before.keys()
    changed = {f"{path}.weight": name for name, path in layers.items()}
    for key in before:
        if key in changed:
            delta = after[key].double() - before[key].double()
            expected = expected_delta(entries, changed[key], before[key].shape, scale)
            assert torch.allclose(delta, expected, rtol=0, atol=2e-7), key
            assert expected.abs().max() > 1e-3, key  # the layer really changed
        else:
            assert torch.equal(after[key], before[key]), key


def sdxl_unet_lora(unet, seed=0):
    """A kohya SDXL LoRA of :data:`UNET_LAYERS` in SGM names; returns (entries, {kohya name: module path})."""
    generator = torch.Generator().manual_seed(seed)
    entries, layers = {}, {}
    for path, (rank, alpha) in UNET_LAYERS.items():
        name = kohya_name("lora_unet", sgm_path(path, unet))
        entries.update(lora_entries(name, unet.get_submodule(path).weight, rank, alpha, generator))
        layers[name] = path
    return entries, layers


def text_lora(first, second, seed=1):
    """kohya ``lora_te1_``/``lora_te2_`` layers of SDXL's two text encoders (transformers 4 names)."""
    generator = torch.Generator().manual_seed(seed)
    entries, layers = {}, {"lora_te1": {}, "lora_te2": {}}
    for prefix, encoder, paths in (("lora_te1", first, [("encoder.layers.0.self_attn.q_proj", 4, 2.0),
                                                        ("encoder.layers.1.mlp.fc2", 2, None)]),
                                   ("lora_te2", second, [("encoder.layers.0.self_attn.out_proj", 3, 6.0),
                                                         ("encoder.layers.1.mlp.fc1", 1, 0.5)])):
        for path, rank, alpha in paths:
            module_path = path if hasattr(encoder, "encoder") else "text_model." + path  # transformers 5 / 4
            name = kohya_name(prefix, "text_model." + path)
            entries.update(lora_entries(name, encoder.get_submodule(module_path).weight, rank, alpha, generator))
            layers[prefix][name] = module_path
    return entries, layers


def write(path, entries):
    save_file(entries, str(path))
    return str(path)


@pytest.fixture(scope="module")
def shared_paths(tmp_path_factory):
    """The tiny AnimateDiff-SDXL checkpoints: the image model shares the video model's text encoders."""
    return save_tiny_animatediff_sdxl(str(tmp_path_factory.mktemp("sdxl-shared")))


@pytest.fixture(scope="module")
def own_paths(tmp_path_factory, shared_paths):
    """The same, but the image model brings text encoders of its own (other seeds)."""
    root = tmp_path_factory.mktemp("sdxl-own")
    return {**shared_paths, "image_model": save_tiny_sdxl(str(root / "image-model"), seed=3)}


def load(paths):
    pipe = IVMixedAnimateDiffSDXLPipeline.from_checkpoints(**paths)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def snapshots(pipe):
    names = ("unet", "image_unet", "text_encoder", "text_encoder_2", "image_text_encoder", "image_text_encoder_2")
    return {name: weights(getattr(pipe, name)) for name in names if getattr(pipe, name, None) is not None}


def assert_unchanged(pipe, before, names):
    for name in names:
        after = weights(getattr(pipe, name))
        assert after.keys() == before[name].keys()
        assert all(torch.equal(after[key], before[name][key]) for key in after), name


def test_sgm_names_are_the_checkpoint_layout():
    """This file's SGM mapping renames the tiny UNet's state dict into a checkpoint that diffusers' single-file
    converter turns back into the very same state dict."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = tiny_sdxl_unet(seed=3)
    state = unet.state_dict()
    checkpoint = {}
    for key, value in state.items():
        module, _, parameter = key.rpartition(".")
        checkpoint[f"model.diffusion_model.{sgm_path(module, unet)}.{parameter}"] = value
    back = convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[key], state[key]) for key in state)


@pytest.mark.parametrize("layout", ["sgm", "diffusers"])
def test_every_linear_and_conv_layer_of_the_sdxl_unet_can_be_named(layout):
    """Each of the tiny SDXL UNet's linear and conv layers, named as kohya names SDXL layers (SGM) or as files in
    diffusers' layout do, is found and merged exactly."""
    unet = tiny_sdxl_unet(seed=3)
    generator = torch.Generator().manual_seed(2)
    entries, layers = {}, {}
    for path, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            name = kohya_name("lora_unet", sgm_path(path, unet) if layout == "sgm" else path)
            entries.update(lora_entries(name, module.weight, 1 + len(layers) % 3, 0.5 + len(layers) % 4, generator))
            layers[name] = path
    before = weights(unet)
    report = merge_lora(entries, [("lora_unet", unet)], SCALE)
    assert report == {"merged_layers": len(layers), "unmatched": []} and len(layers) == 85
    assert_changed_exactly(before, unet, entries, layers, SCALE)


def test_sdxl_kohya_file_changes_named_layers_exactly(shared_paths, tmp_path, caplog):
    pipe = load(shared_paths)
    assert pipe.image_text_encoder is None  # shared encoders: the text-encoder part is set aside
    entries, layers = sdxl_unet_lora(pipe.image_unet)
    text_entries, _ = text_lora(pipe.text_encoder, pipe.text_encoder_2)
    path = write(tmp_path / "sdxl-style.safetensors", {**entries, **text_entries})
    before = snapshots(pipe)
    with caplog.at_level(logging.INFO, logger="ivmixed.lora"):
        record = apply_lora_to_pipeline(pipe, path, SCALE, "image")
    assert record == {"name": "sdxl-style", "path": path, "kind": "file", "scale": SCALE, "target": "image",
                      "merged_layers": len(UNET_LAYERS), "unmatched": []}
    assert_changed_exactly(before["image_unet"], pipe.image_unet, entries, layers, SCALE)
    assert_unchanged(pipe, before, ["unet", "text_encoder", "text_encoder_2"])
    messages = [r.getMessage() for r in caplog.records]
    assert (f"4 text-encoder layers of {path} not applied: the image model shares the video model's text encoders"
            in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_text_encoder_parts_go_to_the_image_models_own_encoders(own_paths, tmp_path):
    pipe = load(own_paths)
    assert pipe.image_text_encoder is not None and pipe.image_text_encoder_2 is not None
    entries, layers = sdxl_unet_lora(pipe.image_unet, seed=4)
    text_entries, text_layers = text_lora(pipe.image_text_encoder, pipe.image_text_encoder_2, seed=5)
    path = write(tmp_path / "with-te.safetensors", {**entries, **text_entries})
    before = snapshots(pipe)
    record = apply_lora_to_pipeline(pipe, path, SCALE, "image")
    assert record["merged_layers"] == len(UNET_LAYERS) + 4 and record["unmatched"] == []
    assert_changed_exactly(before["image_unet"], pipe.image_unet, entries, layers, SCALE)
    assert_changed_exactly(before["image_text_encoder"], pipe.image_text_encoder, text_entries,
                           text_layers["lora_te1"], SCALE)
    assert_changed_exactly(before["image_text_encoder_2"], pipe.image_text_encoder_2, text_entries,
                           text_layers["lora_te2"], SCALE)
    assert_unchanged(pipe, before, ["unet", "text_encoder", "text_encoder_2"])
    assert not hasattr(pipe.image_text_encoder, "peft_config")  # unloaded: nothing of the adapter is left


def test_unknown_layers_are_warned_and_a_file_matching_nothing_is_refused(shared_paths, tmp_path, caplog):
    pipe = load(shared_paths)
    unet = pipe.image_unet
    entries, layers = sdxl_unet_lora(unet, seed=6)
    generator = torch.Generator().manual_seed(7)
    q = unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q").weight
    stray = {
        # a block the tiny UNet does not have (SDXL's third level)
        **lora_entries("lora_unet_input_blocks_7_1_transformer_blocks_0_attn1_to_q", q, 2, 1.0, generator),
        # a real layer with another width
        **lora_entries("lora_unet_middle_block_1_proj_in", torch.empty(32, 16), 2, 1.0, generator),
    }
    path = write(tmp_path / "stray.safetensors", {**entries, **stray})
    before = snapshots(pipe)
    with caplog.at_level(logging.WARNING, logger="ivmixed.lora"):
        record = apply_lora_to_pipeline(pipe, path, SCALE)
    unmatched = ["lora_unet_input_blocks_7_1_transformer_blocks_0_attn1_to_q", "lora_unet_middle_block_1_proj_in"]
    assert record["merged_layers"] == len(UNET_LAYERS) and record["unmatched"] == unmatched
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"2 layers of {path} match no model layer") and all(n in warning for n in unmatched)
    assert_changed_exactly(before["image_unet"], pipe.image_unet, entries, layers, SCALE)

    nothing = write(tmp_path / "nothing.safetensors", stray)
    before = snapshots(pipe)
    with pytest.raises(ValueError) as info:
        apply_lora_to_pipeline(pipe, nothing, SCALE)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"no layer of {nothing} matches a layer of the model")
    assert str(info.value).endswith("is it a kohya-format LoRA for SDXL?")
    assert_unchanged(pipe, before, ["image_unet", "unet"])


def sd15_lora(with_text_encoder, seed=8):
    """A kohya LoRA for the tiny Stable Diffusion 1.5 UNet (diffusers' block names, 32-wide text context)."""
    unet = tiny_image_unet(seed=1)
    generator = torch.Generator().manual_seed(seed)
    entries = {}
    for path in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                 "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                 "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
                 "up_blocks.0.resnets.0.conv1"):
        entries.update(lora_entries(kohya_name("lora_unet", path), unet.get_submodule(path).weight, 2, 1.0,
                                    generator))
    if with_text_encoder:
        entries.update(lora_entries("lora_te_text_model_encoder_layers_0_self_attn_q_proj", torch.empty(32, 32), 2,
                                    1.0, generator))
    return entries


@pytest.mark.parametrize("with_text_encoder,says", [
    (True, "is a LoRA for Stable Diffusion 1.x (its text-encoder layers are lora_te_..., SDXL's are "
           "lora_te1_.../lora_te2_...) and the image model is SDXL; pass a LoRA made for SDXL"),
    (False, "is a LoRA for another model family: its cross-attention layers "
            "(lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k) take a 32-wide text context, "
            "and the image model (SDXL) takes 64; pass a LoRA made for SDXL"),
], ids=["with-text-encoder", "unet-only"])
def test_an_sd15_lora_on_the_sdxl_image_model_is_refused(shared_paths, tmp_path, with_text_encoder, says):
    pipe = load(shared_paths)
    path = write(tmp_path / "sd15.safetensors", sd15_lora(with_text_encoder))
    before = snapshots(pipe)
    with pytest.raises(ValueError) as info:
        apply_lora_to_pipeline(pipe, path, SCALE, "image")
    assert str(info.value) == f"{path} {says}"
    assert_unchanged(pipe, before, ["image_unet", "unet"])


def test_an_sdxl_lora_on_an_sd15_model_is_refused(animatediff_pipe, shared_paths, tmp_path):
    unet = tiny_sdxl_unet(seed=3)
    entries, _ = sdxl_unet_lora(unet)
    with_text = {**entries, **lora_entries("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                                           torch.empty(32, 32), 2, 1.0, torch.Generator().manual_seed(0))}
    before = weights(animatediff_pipe.image_unet)
    with pytest.raises(ValueError) as info:
        apply_lora_to_pipeline(animatediff_pipe, write(tmp_path / "xl.safetensors", with_text), SCALE, "image")
    assert str(info.value).endswith("is a LoRA for SDXL (its text-encoder layers are lora_te1_.../lora_te2_...) "
                                    "and the image model is Stable Diffusion 1.x; pass a LoRA made for "
                                    "Stable Diffusion 1.x")
    # UNet layers only: the 64-wide text context of its cross-attention gives it away.
    with pytest.raises(ValueError, match=r"is a LoRA for another model family: .* take a 64-wide text context, "
                                         r"and the model \(Stable Diffusion 1.x\) takes 32"):
        merge_lora(entries, [("lora_unet", animatediff_pipe.image_unet)], SCALE)
    after = weights(animatediff_pipe.image_unet)
    assert all(torch.equal(after[key], before[key]) for key in before)


def test_a_converted_sd15_folder_cannot_replace_the_sdxl_image_model(shared_paths, tmp_path):
    folder = tmp_path / "converted"
    tiny_image_unet().save_config(str(folder / "unet"))  # what the converter writes for SD 1.5, config first
    pipe = load(shared_paths)
    with pytest.raises(ValueError) as info:
        apply_lora_to_pipeline(pipe, str(folder), target="image")
    assert str(info.value) == (f"{folder} is a converted Stable Diffusion 1.x folder and the image model is SDXL; "
                               "pass a LoRA .safetensors file made for SDXL")


def test_cli_run_with_an_sdxl_lora(tmp_path, capsys):
    entries, layers = sdxl_unet_lora(tiny_sdxl_unet(seed=3), seed=9)
    path = write(tmp_path / "cli-style.safetensors", entries)
    out = tmp_path / "out"
    code, err = run_main(["--tiny", "--pipeline", "AnimatediffSDXL", "--prompt", "a cat", "--lora", path,
                          "--num-frames", "2", "--inference-step", "2", "--output-dir", str(out)], capsys)
    assert code == 0, err
    lora = only_record(str(out))["lora"]
    assert lora["path"] == path and lora["kind"] == "file" and lora["target"] == "image"
    assert lora["merged_layers"] == len(layers) and lora["unmatched"] == []
