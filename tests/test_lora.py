"""LoRA: the converter's merge against the formula, direct loading against the converted folder, and errors.

The LoRA files are synthesized here in kohya's format for the tiny models; every expected weight is computed
independently as ``W + strength * (alpha / rank) * up @ down``.
"""

import logging
import os
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from ivmixed import IVMixedAnimateDiffPipeline
from ivmixed.lora import apply_lora_to_pipeline, convert_lora, kohya_layer_names, merge_lora, resolve_lora
from ivmixed.testing import tiny_image_unet, tiny_text_encoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "lora", "convert_lora_safetensor_to_diffusers.py")
STRENGTH = 0.8

# kohya name -> (component, module path, rank, file alpha or None)
LAYERS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 4, 2.0),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k":
        ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 4, 4.0),
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0":
        ("unet", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0", 2, None),
    "lora_unet_down_blocks_0_attentions_0_proj_in": ("unet", "down_blocks.0.attentions.0.proj_in", 2, 1.0),
    "lora_unet_up_blocks_0_resnets_0_conv_shortcut": ("unet", "up_blocks.0.resnets.0.conv_shortcut", 3, 8.0),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj":
        ("text_encoder", "encoder.layers.0.self_attn.q_proj", 4, 1.0),
    "lora_te_text_model_encoder_layers_1_mlp_fc1": ("text_encoder", "encoder.layers.1.mlp.fc1", 2, 4.0),
}


def lora_entries(name, weight, rank, alpha, generator):
    """kohya entries for one layer whose base weight is ``weight`` (linear, or conv with a 1x1 ``up``)."""
    down = torch.randn(rank, *weight.shape[1:], generator=generator)
    up = torch.randn(weight.shape[0], rank, *([1, 1] if weight.ndim == 4 else []), generator=generator)
    entries = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    if alpha is not None:
        entries[f"{name}.alpha"] = torch.tensor(alpha)
    return entries


def expected_weight(base, entries, name, strength):
    down, up = entries[f"{name}.lora_down.weight"], entries[f"{name}.lora_up.weight"]
    alpha = entries.get(f"{name}.alpha")
    ratio = 1.0 if alpha is None else alpha.item() / down.shape[0]
    return base + strength * ratio * (up.flatten(1) @ down.flatten(1)).reshape(base.shape)


def weights(model):
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_merged(before, after, entries, layers, strength):
    """``after`` equals ``before`` plus the LoRA on ``layers`` ({name: module path}) and is unchanged elsewhere."""
    expected = dict(before)
    for name, path in layers.items():
        expected[f"{path}.weight"] = expected_weight(before[f"{path}.weight"], entries, name, strength)
    assert after.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(after[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)


def layers_of(component):
    return {name: path for name, (comp, path, _, _) in LAYERS.items() if comp == component}


@pytest.fixture(scope="module")
def base(animatediff_paths):
    """The AnimateDiff image model's folder, so the converted folder can stand in for the pipeline's image UNet."""
    return animatediff_paths["image_model"]


@pytest.fixture(scope="module")
def lora_sd(base):
    models = {
        "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
        "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
    }
    generator = torch.Generator().manual_seed(0)
    entries = {}
    for name, (component, path, rank, alpha) in LAYERS.items():
        weight = models[component].get_submodule(path).weight
        entries.update(lora_entries(name, weight, rank, alpha, generator))
    return entries


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, lora_sd):
    path = str(tmp_path_factory.mktemp("lora") / "style.safetensors")
    save_file(lora_sd, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, base, lora_file):
    path = str(tmp_path_factory.mktemp("converted") / "style")
    report = convert_lora(base, lora_file, path, alpha=STRENGTH)
    assert report == {"merged_layers": len(LAYERS), "unmatched": []}
    return path


def test_converter_merges_exactly(base, converted, lora_sd):
    for component, model_class in (("unet", UNet2DConditionModel), ("text_encoder", CLIPTextModel)):
        before = weights(model_class.from_pretrained(base, subfolder=component))
        after = weights(model_class.from_pretrained(converted, subfolder=component))
        assert_merged(before, after, lora_sd, layers_of(component), STRENGTH)
    pipe = StableDiffusionPipeline.from_pretrained(converted)
    assert pipe.safety_checker is None and pipe.tokenizer is not None


def test_every_layer_kohya_can_name_is_merged():
    """All linear and conv layers of the tiny UNet and text encoder, named as kohya names them, map and merge."""
    unet, encoder = tiny_image_unet(seed=5), tiny_text_encoder(seed=5)
    generator = torch.Generator().manual_seed(1)
    entries, expected_layers = {}, {}
    for model, prefix, stem in ((unet, "lora_unet", ""), (encoder, "lora_te", "text_model.")):
        layers = {
            f"{prefix}_{(stem + path).replace('.', '_')}": path
            for path, module in model.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        }
        for name, path in layers.items():
            entries.update(lora_entries(name, model.get_submodule(path).weight, 1, 0.5, generator))
        expected_layers[prefix] = layers
    before = {"lora_unet": weights(unet), "lora_te": weights(encoder)}
    report = merge_lora(entries, [("lora_unet", unet), ("lora_te", encoder)], scale=1.5)
    assert report["unmatched"] == []
    assert report["merged_layers"] == sum(map(len, expected_layers.values())) > 40
    assert_merged(before["lora_unet"], weights(unet), entries, expected_layers["lora_unet"], 1.5)
    assert_merged(before["lora_te"], weights(encoder), entries, expected_layers["lora_te"], 1.5)


def test_text_encoder_names_follow_transformers_4_layout():
    names = kohya_layer_names(tiny_text_encoder(), "lora_te")
    assert not hasattr(tiny_text_encoder(), "text_model")  # transformers 5 layout, which the mapping bridges
    assert names["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == "encoder.layers.0.self_attn.q_proj"


def test_unmatched_entries_are_reported_and_skipped(lora_sd, caplog):
    unet, encoder = tiny_image_unet(seed=3), tiny_text_encoder(seed=3)
    generator = torch.Generator().manual_seed(2)
    q_proj = encoder.get_submodule("encoder.layers.0.self_attn.q_proj").weight
    extra = {
        **lora_entries("lora_unet_down_blocks_3_attentions_0_proj_in", torch.empty(32, 32, 1, 1), 2, 1.0, generator),
        **lora_entries("lora_te_text_model_encoder_layers_7_self_attn_q_proj", q_proj, 2, 1.0, generator),
        # right name, wrong width (an SD 2 layer, say)
        **lora_entries("lora_te_text_model_encoder_layers_0_self_attn_k_proj", torch.empty(64, 64), 2, 1.0, generator),
        # DoRA: its down/up alone would merge wrongly
        **lora_entries("lora_unet_mid_block_resnets_0_conv1", torch.empty(64, 64, 3, 3), 2, 1.0, generator),
        "lora_unet_mid_block_resnets_0_conv1.dora_scale": torch.ones(1, 64, 1, 1),
    }
    with caplog.at_level(logging.WARNING, logger="ivmixed.lora"):
        report = merge_lora({**lora_sd, **extra}, [("lora_unet", unet), ("lora_te", encoder)], STRENGTH, source="f")
    assert report["merged_layers"] == len(LAYERS)
    assert report["unmatched"] == sorted([
        "lora_unet_down_blocks_3_attentions_0_proj_in",
        "lora_te_text_model_encoder_layers_7_self_attn_q_proj",
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj",
        "lora_unet_mid_block_resnets_0_conv1",
    ])
    [message] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert message.startswith("4 layers of f match no model layer")
    assert all(name in message for name in report["unmatched"])


def test_custom_prefixes(lora_sd):
    unet = tiny_image_unet(seed=3)
    renamed = {key.replace("lora_unet_", "my_unet_"): value for key, value in lora_sd.items()}
    report = merge_lora(renamed, [("my_unet", unet)], STRENGTH)
    assert report["merged_layers"] == len(layers_of("unet"))
    assert len(report["unmatched"]) == len(layers_of("text_encoder"))


@pytest.mark.parametrize("content", ["mismatched", "corrupt"])
def test_unusable_file_is_an_error_and_writes_nothing(tmp_path, base, content):
    path = str(tmp_path / "bad.safetensors")
    if content == "corrupt":
        with open(path, "wb") as f:
            f.write(os.urandom(2048))
        message = "not a readable .safetensors file"
    else:
        entries = lora_entries("lora_unet_down_blocks_7_attentions_0_proj_in", torch.empty(32, 32, 1, 1), 2, 1.0,
                               torch.Generator().manual_seed(0))
        save_file({**entries, "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 32)},
                  path)
        message = "no layer of .* matches a layer"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=message):
        convert_lora(base, path, str(out / "style"), alpha=STRENGTH)
    assert os.listdir(out) == []


def test_direct_file_equals_converted_folder(animatediff_paths, lora_file, converted):
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(**animatediff_paths)
    video_before, text_before = weights(pipe.unet), weights(pipe.text_encoder)
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))

    def image_output():
        with torch.no_grad():
            return pipe.image_unet(sample, 500, encoder_hidden_states=context).sample

    record = apply_lora_to_pipeline(pipe, lora_file, scale=STRENGTH, target="image")
    assert record == {"name": "style", "path": lora_file, "kind": "file", "scale": STRENGTH, "target": "image",
                      "merged_layers": len(layers_of("unet")), "unmatched": []}
    direct = image_output()
    torch.testing.assert_close(
        weights(pipe.image_unet), weights(UNet2DConditionModel.from_pretrained(converted, subfolder="unet")),
        atol=1e-6, rtol=1e-6,
    )
    # The image model shares the video model's text encoder: target "image" leaves both video-side models alone.
    torch.testing.assert_close(weights(pipe.unet), video_before, atol=0, rtol=0)
    torch.testing.assert_close(weights(pipe.text_encoder), text_before, atol=0, rtol=0)

    record = apply_lora_to_pipeline(pipe, converted, target="image")
    assert record == {"name": "style", "path": converted, "kind": "folder", "scale": None, "target": "image"}
    assert pipe.config.image_unet[1] == "UNet2DConditionModel"
    torch.testing.assert_close(image_output(), direct, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="can only replace the image model"):
        apply_lora_to_pipeline(pipe, converted, target="video")


def test_target_both_reaches_motion_unet_and_text_encoder(animatediff_paths, lora_file, lora_sd):
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(**animatediff_paths)
    before = {name: weights(getattr(pipe, name)) for name in ("unet", "image_unet", "text_encoder")}
    record = apply_lora_to_pipeline(pipe, lora_file, scale=0.5, target="both")
    assert record["merged_layers"] == len(LAYERS) and record["unmatched"] == []
    assert_merged(before["image_unet"], weights(pipe.image_unet), lora_sd, layers_of("unet"), 0.5)
    assert_merged(before["text_encoder"], weights(pipe.text_encoder), lora_sd, layers_of("text_encoder"), 0.5)
    assert_merged(before["unet"], weights(pipe.unet), lora_sd, layers_of("unet"), 0.5)  # the motion UNet


def test_resolve_lora(tmp_path, converted, lora_file):
    lora_dir = tmp_path / "lora"
    (lora_dir / "amechass" / "unet").mkdir(parents=True)
    (lora_dir / "amechass" / "unet" / "config.json").write_text("{}")
    (lora_dir / "beauty.safetensors").write_bytes(b"")
    (lora_dir / "empty").mkdir()
    (lora_dir / "notes.txt").write_text("")
    lora_dir = str(lora_dir)
    assert resolve_lora("amechass", [lora_dir]) == ("folder", os.path.join(lora_dir, "amechass"))
    assert resolve_lora("beauty", [lora_dir]) == ("file", os.path.join(lora_dir, "beauty.safetensors"))
    assert resolve_lora(converted, [lora_dir]) == ("folder", converted)
    assert resolve_lora(lora_file, [lora_dir]) == ("file", lora_file)
    with pytest.raises(FileNotFoundError, match="available: amechass, beauty$"):
        resolve_lora("nope", [lora_dir])
    with pytest.raises(FileNotFoundError, match="LoRA file not found"):
        resolve_lora("missing.safetensors", [lora_dir])
    with pytest.raises(ValueError, match="not a converted LoRA folder"):
        resolve_lora("empty", [lora_dir])
    with pytest.raises(ValueError, match="not a .safetensors file"):
        resolve_lora(os.path.join(lora_dir, "notes.txt"), [lora_dir])
    with pytest.raises(ValueError, match="target must be one of"):
        apply_lora_to_pipeline(None, "amechass", target="audio", lora_dirs=[lora_dir])


def test_script_end_to_end(tmp_path, base, lora_file, lora_sd, capsys):
    out = str(tmp_path / "style")
    args = [sys.executable, SCRIPT, "--base_model_path", base, "--checkpoint_path", lora_file, "--dump_path", out,
            "--alpha", "0.5", "--to_safetensors"]
    result = subprocess.run(args, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"merged {len(LAYERS)} layers" in result.stderr
    assert os.path.isfile(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))
    before = weights(UNet2DConditionModel.from_pretrained(base, subfolder="unet"))
    after = weights(UNet2DConditionModel.from_pretrained(out, subfolder="unet"))
    assert_merged(before, after, lora_sd, layers_of("unet"), 0.5)
    # A bad argument exits 2 with one line and writes nothing (run in-process: the import alone takes seconds).
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import convert_lora_safetensor_to_diffusers as script
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--base_model_path", base, "--checkpoint_path", str(tmp_path / "gone.safetensors"),
                     "--dump_path", str(tmp_path / "other")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: LoRA file not found: {tmp_path / 'gone.safetensors'}\n"
    assert sorted(os.listdir(tmp_path)) == ["style"]


def test_generation_with_direct_file_equals_converted_folder(animatediff_paths, lora_file, converted):
    kwargs = dict(prompt="a horse", num_frames=2, height=64, width=64, num_inference_steps=2, output_type="latent",
                  latents=torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(3)))
    outputs = []
    for spec, scale in ((lora_file, STRENGTH), (converted, None), (None, None)):
        pipe = IVMixedAnimateDiffPipeline.from_checkpoints(**animatediff_paths)
        pipe.set_progress_bar_config(disable=True)
        if spec is not None:
            apply_lora_to_pipeline(pipe, spec, scale=scale, target="image")
        outputs.append(pipe(**kwargs).frames)
    direct, folder, plain = outputs
    torch.testing.assert_close(direct, folder, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(direct, plain, atol=1e-3)  # the LoRA does change the IV-mixed generation


def test_cli_records_the_lora(tmp_path, lora_file):
    from runs import only_record

    from ivmixed.cli import main

    out = tmp_path / "out"
    code = main(["--tiny", "--prompt", "a cat", "--inference-step", "2", "--num-frames", "2", "--no-standard",
                 "--lora", lora_file, "--lora-scale", "0.5", "--output-dir", str(out)])
    assert code == 0
    record = only_record(out)
    assert record["lora"]["path"] == lora_file and record["lora"]["scale"] == 0.5
    assert record["lora"]["kind"] == "file" and record["lora"]["merged_layers"] == len(layers_of("unet"))


def test_converter_checks_its_paths_before_loading(tmp_path, lora_file, monkeypatch):
    from ivmixed.errors import ModelLoadError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        convert_lora("org/any-model", lora_file, str(blocker / "sub" / "out"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelLoadError, match="`hf download ivmixed-test/no-such-sd` while online") as info:
        convert_lora("ivmixed-test/no-such-sd", lora_file, str(tmp_path / "out"))
    assert info.value.render(lambda name: "--" + name).endswith("with --base_model_path)")
    assert not (tmp_path / "out").exists()


def test_converter_script_says_one_line_for_an_uncached_base_model(tmp_path, lora_file):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lora",
                          "convert_lora_safetensor_to_diffusers.py")
    result = subprocess.run([sys.executable, script, "--base_model_path", "ivmixed-test/no-such-sd", "--checkpoint_path",
                             lora_file, "--dump_path", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hub")})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[-1]]
    assert "hf download ivmixed-test/no-such-sd" in result.stderr
