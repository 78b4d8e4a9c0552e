"""IP-Adapter under IV-mixed sampling (ivmixed.ip_adapter): one state dict in both UNets, one image encoder, the
scale on both, stock AnimateDiff calls with an image prompt, and one-line refusals before anything changes."""

import os

import pytest
import torch
from runs import stock_pipeline, video_frames
from diffusers import AnimateDiffPipeline, AnimateDiffSDXLPipeline
from PIL import Image
from transformers import CLIPVisionModelWithProjection

from ivmixed.errors import ModelLoadError, SettingError
from ivmixed.ip_adapter import (DEFAULT_WEIGHTS, check_ip_adapter_source, ip_adapter_pipelines, ip_layer_shapes,
                                load_ip_adapter, locate_ip_adapter, set_ip_adapter_scale)
from ivmixed.registry import PIPELINES
from ivmixed.testing import save_tiny_ip_adapter, tiny_image_encoder, tiny_pipeline

FRAMES, SIZE = 2, 64  # 8x8 latents


def ip_processors(unet):
    return {name: p for name, p in unet.attn_processors.items() if hasattr(p, "to_k_ip")}


def one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text and text.startswith(("ip_adapter", "HF_HUB_OFFLINE")), text
    return text


def untouched(pipe):
    """Everything loading an adapter changes, to compare before and after a refusal."""
    return ({n: id(p) for n, p in pipe.unet.attn_processors.items()},
            {n: id(p) for n, p in pipe.image_unet.attn_processors.items()},
            pipe.unet.encoder_hid_proj, pipe.image_unet.encoder_hid_proj, pipe.image_encoder, pipe.feature_extractor)


def latents(seed=0):
    return torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


def reference_image():
    return Image.fromarray((torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(1)) * 255)
                           .to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def sd_pipe():
    """A tiny Animatediff pipeline of this module's own (loading an adapter changes it)."""
    return tiny_pipeline("Animatediff")


@pytest.fixture(scope="module")
def sd_adapter(sd_pipe, tmp_path_factory):
    return save_tiny_ip_adapter(str(tmp_path_factory.mktemp("ip-sd15")), sd_pipe.image_unet, seed=5)


@pytest.fixture(scope="module")
def sdxl_pipe():
    return tiny_pipeline("AnimatediffSDXL")


@pytest.fixture(scope="module")
def sdxl_adapter(sdxl_pipe, tmp_path_factory):
    return save_tiny_ip_adapter(str(tmp_path_factory.mktemp("ip-sdxl")), sdxl_pipe.image_unet, seed=6)


@pytest.fixture(scope="module")
def loaded_sd(sd_adapter):
    """A second tiny Animatediff pipeline with the tiny adapter loaded at scale 0.7, and the stock outputs
    computed before it was loaded."""
    pipe = tiny_pipeline("Animatediff")
    kwargs = dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                  num_inference_steps=2, guidance_scale=7.5, output_type="latent")
    before = video_frames(stock_pipeline(pipe, AnimateDiffPipeline)(
        latents=latents(), **kwargs))
    record = load_ip_adapter(pipe, sd_adapter, scale=0.7)
    return pipe, record, kwargs, before


# -- plain data ---------------------------------------------------------------------------------------------------


def test_pipelines_that_take_an_adapter_come_from_the_registry():
    assert ip_adapter_pipelines() == tuple(s.name for s in PIPELINES.values() if s.takes("motion_adapter"))
    assert set(ip_adapter_pipelines()) == {"Animatediff", "AnimatediffSDXL"}


def test_check_source_finds_the_h94_layout(sd_adapter, sdxl_adapter):
    where = check_ip_adapter_source(PIPELINES["Animatediff"], sd_adapter)
    assert where.weight_file == os.path.join(sd_adapter, "models", "ip-adapter_sd15.safetensors")
    assert where.image_encoder == os.path.join(sd_adapter, "models", "image_encoder")
    xl = check_ip_adapter_source(PIPELINES["AnimatediffSDXL"], sdxl_adapter)
    assert xl.weight_file == os.path.join(sdxl_adapter, "sdxl_models", "ip-adapter_sdxl.safetensors")
    # a local file: the image encoder is the folder beside it
    single = check_ip_adapter_source(PIPELINES["Animatediff"], where.weight_file)
    assert (single.kind, single.weight_file, single.image_encoder) == ("file", where.weight_file, where.image_encoder)


def test_hub_sources_and_the_h94_encoder_of_each_weight():
    sd = locate_ip_adapter("h94/IP-Adapter", "Stable Diffusion 1.5")
    assert (sd.root, sd.weight_in_root, sd.image_encoder_folder) == (
        "h94/IP-Adapter", "models/ip-adapter_sd15.safetensors", "models/image_encoder")
    xl = locate_ip_adapter("h94/IP-Adapter", "SDXL")
    assert (xl.weight_in_root, xl.image_encoder_folder) == ("sdxl_models/ip-adapter_sdxl.safetensors",
                                                            "sdxl_models/image_encoder")
    vit_h = locate_ip_adapter("h94/IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors", "SDXL")
    assert (vit_h.kind, vit_h.root, vit_h.subfolder, vit_h.image_encoder_folder) == (
        "hub-file", "h94/IP-Adapter", "sdxl_models", "models/image_encoder")
    assert locate_ip_adapter("someone/adapters/ip.bin", "SDXL").image_encoder_folder == "image_encoder"


def test_pipelines_with_3d_unets_are_refused_in_one_line():
    for name in ("ModelScope", "VideoCrafter"):
        with pytest.raises(SettingError) as exc:
            check_ip_adapter_source(PIPELINES[name], "h94/IP-Adapter")
        assert one_line(exc) == (f"ip_adapter works with AnimateDiff pipelines only (pipeline Animatediff or "
                                 f"AnimatediffSDXL); {name}'s video model is a 3D UNet, for which no IP-Adapter exists")
        assert exc.value.render(lambda n: "--" + n.replace("_", "-")).startswith("--ip-adapter works with")


def test_missing_paths_are_refused_in_one_line(tmp_path, sd_adapter):
    spec = PIPELINES["Animatediff"]
    with pytest.raises(SettingError) as exc:
        check_ip_adapter_source(spec, str(tmp_path / "nothing-here"))
    assert "no such folder" in one_line(exc)
    with pytest.raises(SettingError) as exc:
        check_ip_adapter_source(spec, str(tmp_path / "nothing.safetensors"))
    assert "no such file" in one_line(exc)
    with pytest.raises(SettingError) as exc:  # SD 1.5 weights only: an SDXL pipeline finds none of its own
        check_ip_adapter_source(PIPELINES["AnimatediffSDXL"], sd_adapter)
    assert one_line(exc).endswith("has no sdxl_models/ip-adapter_sdxl.safetensors (the SDXL IP-Adapter of the "
                                  "h94/IP-Adapter layout); it holds models/ip-adapter_sd15.safetensors (Stable "
                                  "Diffusion 1.5 weights); give a SDXL IP-Adapter folder or its .safetensors file")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "ip.safetensors").write_bytes(open(os.path.join(sd_adapter, "models", "ip-adapter_sd15.safetensors"),
                                                 "rb").read())
    with pytest.raises(SettingError) as exc:
        check_ip_adapter_source(spec, str(lonely / "ip.safetensors"))
    assert "no image encoder beside it" in one_line(exc)


def test_offline_and_uncached_is_one_line_with_the_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as exc:
        check_ip_adapter_source(PIPELINES["Animatediff"], "ivmixed-test/no-such-ip-adapter")
    assert one_line(exc) == (
        "HF_HUB_OFFLINE is set, and the IP-Adapter 'ivmixed-test/no-such-ip-adapter' is not in the local cache (no "
        "models/ip-adapter_sd15.safetensors, models/image_encoder/config.json, "
        "models/image_encoder/model.safetensors): `hf download ivmixed-test/no-such-ip-adapter --include \"models/ip-adapter_sd15.safetensors\" "
        "\"models/image_encoder/config.json\" \"models/image_encoder/model.safetensors\"` while online, or give a "
        "local folder laid out like h94/IP-Adapter with ip_adapter")


def fake_hub_cache(root, repo, folder):
    """``folder``'s files as the local hub cache holds a download of ``repo`` (one snapshot, refs/main)."""
    import shutil

    revision = "0" * 40
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    shutil.copytree(folder, base / "snapshots" / revision)
    return str(root)


# -- loading ------------------------------------------------------------------------------------------------------


def test_tiny_adapter_is_in_the_original_layout(sd_adapter, sd_pipe):
    from safetensors import safe_open

    with safe_open(os.path.join(sd_adapter, *DEFAULT_WEIGHTS["Stable Diffusion 1.5"]), "pt") as f:
        keys = set(f.keys())
    layers = len(ip_layer_shapes(sd_pipe.image_unet))
    assert keys == {"image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight",
                    "image_proj.norm.bias"} | {f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight" for i in range(layers)
                                               for kv in "kv"}
    # the motion UNet has the image UNet's attention layout: the same layers, sizes and order
    assert ip_layer_shapes(sd_pipe.unet) == ip_layer_shapes(sd_pipe.image_unet)


def test_both_unets_get_equal_ip_weights_and_one_image_encoder(loaded_sd):
    pipe, record, _, _ = loaded_sd
    video, image = ip_processors(pipe.unet), ip_processors(pipe.image_unet)
    assert set(video) == set(image) and len(image) == len(ip_layer_shapes(pipe.image_unet)) == 4
    for name, proc in image.items():
        for part in ("to_k_ip", "to_v_ip"):
            assert torch.equal(getattr(proc, part)[0].weight, getattr(video[name], part)[0].weight)
    v_proj = pipe.unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    i_proj = pipe.image_unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    assert v_proj.keys() == i_proj.keys() and all(torch.equal(v_proj[k], i_proj[k]) for k in v_proj)
    assert pipe.unet.config.encoder_hid_dim_type == pipe.image_unet.config.encoder_hid_dim_type == "ip_image_proj"
    encoders = [m for m in pipe.components.values() if isinstance(m, CLIPVisionModelWithProjection)]
    assert encoders == [pipe.image_encoder]
    assert pipe.feature_extractor is not None  # diffusers' default processor, sized to the encoder
    assert record == {
        "source": record["source"],
        "weight_file": os.path.join(record["source"], "models", "ip-adapter_sd15.safetensors"),
        "scale": 0.7,
        "image_encoder": os.path.join(record["source"], "models", "image_encoder"),
        "ip_attention_layers": {"video": 4, "image": 4},
    }


def test_scale_is_set_on_both_unets(loaded_sd):
    pipe = loaded_sd[0]
    scales = [p.scale for unet in (pipe.unet, pipe.image_unet) for p in ip_processors(unet).values()]
    assert scales == [[0.7]] * 8
    try:
        set_ip_adapter_scale(pipe, 0.25)
        assert [p.scale for unet in (pipe.unet, pipe.image_unet) for p in ip_processors(unet).values()] == [[0.25]] * 8
    finally:
        set_ip_adapter_scale(pipe, 0.7)
    with pytest.raises(SettingError) as exc:
        set_ip_adapter_scale(pipe, float("nan"))
    assert str(exc.value) == "ip_adapter_scale must be a finite number, got nan"


@torch.no_grad()
def test_image_unet_takes_per_frame_image_embeds_and_follows_the_scale(loaded_sd):
    """The 2D image UNet over frames needs the image embeddings once per frame (the motion UNet repeats them)."""
    pipe = loaded_sd[0]
    embeds = pipe.prepare_ip_adapter_image_embeds(reference_image(), None, "cpu", 1, False)  # [(1, 1, dim)]
    assert embeds[0].shape == (1, 1, pipe.image_encoder.config.projection_dim)
    x = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    context = torch.randn(FRAMES, 77, 32, generator=torch.Generator().manual_seed(3))
    per_frame = {"image_embeds": [e.repeat_interleave(FRAMES, dim=0) for e in embeds]}
    with_image = pipe.image_unet(x, 10, encoder_hidden_states=context, added_cond_kwargs=per_frame).sample
    try:
        set_ip_adapter_scale(pipe, 0.0)
        without = pipe.image_unet(x, 10, encoder_hidden_states=context, added_cond_kwargs=per_frame).sample
    finally:
        set_ip_adapter_scale(pipe, 0.7)
    assert not torch.allclose(with_image, without)


@torch.no_grad()
def test_stock_animatediff_call_with_an_image_prompt(loaded_sd):
    pipe, _, kwargs, before = loaded_sd
    stock = stock_pipeline(pipe, AnimateDiffPipeline)
    with_image = video_frames(stock(latents=latents(), ip_adapter_image=reference_image(), **kwargs))
    try:
        set_ip_adapter_scale(pipe, 0.0)
        off = video_frames(stock(latents=latents(), ip_adapter_image=reference_image(), **kwargs))
    finally:
        set_ip_adapter_scale(pipe, 0.7)
    assert torch.isfinite(with_image).all()
    assert not torch.allclose(with_image, off)  # the adapter does something ...
    torch.testing.assert_close(off, before)  # ... and nothing at scale 0


def test_a_second_load_reuses_the_image_encoder(loaded_sd, sd_adapter, tmp_path, monkeypatch):
    pipe = loaded_sd[0]
    encoder = pipe.image_encoder
    other = save_tiny_ip_adapter(str(tmp_path / "other"), pipe.image_unet, seed=9)

    def no_second_encoder(*args, **kwargs):
        raise AssertionError("the image encoder was loaded again")

    monkeypatch.setattr(CLIPVisionModelWithProjection, "from_pretrained", no_second_encoder)
    try:
        weight = os.path.join(other, "models", "ip-adapter_sd15.safetensors")  # a local file this time
        record = load_ip_adapter(pipe, weight, scale=0.7)
        assert record["weight_file"] == weight and record["ip_attention_layers"] == {"video": 4, "image": 4}
        assert pipe.image_encoder is encoder and record["image_encoder"].startswith("the pipeline's")
        name, proc = next(iter(ip_processors(pipe.image_unet).items()))
        assert torch.equal(proc.to_k_ip[0].weight, ip_processors(pipe.unet)[name].to_k_ip[0].weight)
    finally:
        load_ip_adapter(pipe, sd_adapter, scale=0.7)


def test_bin_files_read_as_the_nested_dict(sd_adapter, tmp_path):
    from ivmixed.ip_adapter import read_ip_adapter

    flat = read_ip_adapter(os.path.join(sd_adapter, "models", "ip-adapter_sd15.safetensors"))
    torch.save(flat, tmp_path / "ip-adapter.bin")
    nested = read_ip_adapter(str(tmp_path / "ip-adapter.bin"))
    assert flat.keys() == nested.keys() == {"image_proj", "ip_adapter"}
    assert all(torch.equal(flat[p][k], nested[p][k]) for p in flat for k in flat[p])


def test_a_hub_id_loads_offline_from_the_local_cache(sd_adapter, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", fake_hub_cache(tmp_path / "hub", "ivmixed-test/ip", sd_adapter))
    pipe = tiny_pipeline("Animatediff")
    record = load_ip_adapter(pipe, "ivmixed-test/ip", scale=0.5)
    assert record["weight_file"] == "ivmixed-test/ip/models/ip-adapter_sd15.safetensors"
    assert record["image_encoder"] == "ivmixed-test/ip/models/image_encoder"
    assert record["ip_attention_layers"] == {"video": 4, "image": 4}
    assert pipe.image_encoder.config.projection_dim == 16


@torch.no_grad()
def test_sdxl_adapter_in_both_sdxl_unets_and_a_stock_call(sdxl_pipe, sdxl_adapter):
    record = load_ip_adapter(sdxl_pipe, sdxl_adapter, scale=1.0)
    assert record["weight_file"].endswith(os.path.join("sdxl_models", "ip-adapter_sdxl.safetensors"))
    video, image = ip_processors(sdxl_pipe.unet), ip_processors(sdxl_pipe.image_unet)
    assert set(video) == set(image) and record["ip_attention_layers"] == {"video": len(image), "image": len(image)}
    for name, proc in image.items():
        assert torch.equal(proc.to_v_ip[0].weight, video[name].to_v_ip[0].weight)
        assert proc.scale == video[name].scale == [1.0]
    stock = stock_pipeline(sdxl_pipe, AnimateDiffSDXLPipeline)
    kwargs = dict(prompt="a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2,
                  guidance_scale=8.0, output_type="latent", ip_adapter_image=reference_image())
    on = video_frames(stock(latents=latents(), **kwargs))
    set_ip_adapter_scale(sdxl_pipe, 0.0)
    off = video_frames(stock(latents=latents(), **kwargs))
    assert torch.isfinite(on).all() and not torch.allclose(on, off)


# -- refusals that change nothing ---------------------------------------------------------------------------------


def test_sdxl_adapter_on_sd15_is_refused_before_any_unet_changes(sd_pipe, sdxl_adapter, tmp_path):
    import shutil

    # An SD 1.5 layout folder holding SDXL weights (the sizes, not the names, tell).
    folder = tmp_path / "mislabelled"
    shutil.copytree(os.path.join(sdxl_adapter, "sdxl_models"), folder / "models")
    os.rename(folder / "models" / "ip-adapter_sdxl.safetensors", folder / "models" / "ip-adapter_sd15.safetensors")
    before = untouched(sd_pipe)
    with pytest.raises(SettingError) as exc:
        load_ip_adapter(sd_pipe, str(folder))
    assert one_line(exc).endswith("its layers take a 64-wide text context, but the image UNet's cross_attention_dim "
                                  "is 32; give a Stable Diffusion 1.5 IP-Adapter (h94/IP-Adapter: "
                                  "models/ip-adapter_sd15.safetensors)")
    assert untouched(sd_pipe) == before and sd_pipe.image_encoder is None


def test_modelscope_pipeline_is_refused_in_one_line(sd_adapter):
    pipe = tiny_pipeline("ModelScope")
    with pytest.raises(SettingError) as exc:
        load_ip_adapter(pipe, sd_adapter)
    assert "AnimateDiff pipelines only (pipeline Animatediff or AnimatediffSDXL); ModelScope" in one_line(exc)
    assert not ip_processors(pipe.unet) and not ip_processors(pipe.image_unet)


def test_missing_folder_refused_on_load(sd_pipe, tmp_path):
    before = untouched(sd_pipe)
    with pytest.raises(SettingError) as exc:
        load_ip_adapter(sd_pipe, str(tmp_path / "no-adapter"))
    assert "no such folder" in one_line(exc)
    assert untouched(sd_pipe) == before


def test_an_encoder_of_another_width_is_refused_before_changes(sd_pipe, tmp_path):
    folder = save_tiny_ip_adapter(str(tmp_path / "ip"), sd_pipe.image_unet, image_embed_dim=16)
    tiny_image_encoder(0, image_embed_dim=24).save_pretrained(os.path.join(folder, "models", "image_encoder"))
    before = untouched(sd_pipe)
    with pytest.raises(SettingError) as exc:
        load_ip_adapter(sd_pipe, folder)
    assert "takes 16-wide image embeddings, but the image encoder" in one_line(exc)
    assert untouched(sd_pipe) == before


def test_a_failure_while_loading_puts_everything_back(sd_pipe, sd_adapter, monkeypatch):
    before = untouched(sd_pipe)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(type(sd_pipe.image_unet), "_load_ip_adapter_weights", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        load_ip_adapter(sd_pipe, sd_adapter)
    assert untouched(sd_pipe) == before
    assert sd_pipe.unet.config.encoder_hid_dim_type is None and not ip_processors(sd_pipe.unet)
