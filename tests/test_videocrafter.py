"""The VideoCrafter2 UNet (fps condition, checkpoint names, loading) and IVMixedVideoCrafterPipeline."""

import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ivmixed import IVMixedVideoCrafterPipeline, VideoCrafterUNet3DConditionModel
from ivmixed.testing import (
    VIDEO_LATENT_SIZE,
    save_tiny_checkpoints,
    save_tiny_videocrafter_unet,
    tiny_video_unet,
    tiny_videocrafter_unet,
)

FRAMES = 2
PROMPT, NEGATIVE = "a red fox", "blurry"

# config.json of adamdad/videocrafterv2_diffusers, as shown on its Hub page
HUB_CONFIG = {
    "_class_name": "UNet3DVideoCrafterConditionModel",
    "_diffusers_version": "0.26.3",
    "act_fn": "silu",
    "attention_head_dim": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
    "downsample_padding": 1,
    "fps_cond": True,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "out_channels": 4,
    "sample_size": None,
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
}


def unet_inputs(batch=2):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 4, FRAMES, VIDEO_LATENT_SIZE, VIDEO_LATENT_SIZE, generator=g)
    return sample, torch.tensor(500), torch.randn(batch, 7, 32, generator=g)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the UNet -----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_without_fps_cond_it_is_the_3d_unet():
    plain, ours = tiny_video_unet(0, VIDEO_LATENT_SIZE), tiny_videocrafter_unet(5, fps_cond=False)
    ours.load_state_dict(plain.state_dict())  # strict: the very same parameter names
    sample, t, text = unet_inputs()
    assert torch.equal(ours(sample, t, text).sample, plain(sample, t, text).sample)


@torch.no_grad()
def test_fps_embedding_is_summed_into_the_time_embedding():
    ours = tiny_videocrafter_unet(0)
    extra = set(ours.state_dict()) - set(tiny_video_unet(0).state_dict())
    c0 = ours.config.block_out_channels[0]
    shapes = {k: tuple(ours.state_dict()[k].shape) for k in extra}
    assert shapes == {
        "fps_embedding.linear_1.weight": (4 * c0, c0),
        "fps_embedding.linear_1.bias": (4 * c0,),
        "fps_embedding.linear_2.weight": (4 * c0, 4 * c0),
        "fps_embedding.linear_2.bias": (4 * c0,),
    }
    sample, t, text = unet_inputs()
    at_24, at_8 = ours(sample, t, text, fps=24).sample, ours(sample, t, text, fps=8).sample
    assert not torch.allclose(at_24, at_8)
    assert torch.equal(ours(sample, t, text, fps=torch.tensor([24, 24])).sample, at_24)
    # the same weights in a plain 3D UNet whose time-embedding bias absorbs the (constant) fps embedding
    plain = tiny_video_unet(0, VIDEO_LATENT_SIZE)
    plain.load_state_dict({k: v for k, v in ours.state_dict().items() if k not in extra})
    fps_emb = ours.fps_embedding(ours.fps_proj(torch.tensor([24.0])))[0]
    plain.time_embedding.linear_2.bias += fps_emb
    torch.testing.assert_close(plain(sample, t, text).sample, at_24, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="fps"):
        ours(sample, t, text)


def test_save_load_round_trip(tmp_path):
    ours = tiny_videocrafter_unet(3)
    ours.save_pretrained(tmp_path)
    loaded = VideoCrafterUNet3DConditionModel.from_pretrained(tmp_path)
    assert same_state(ours, loaded) and loaded.config.fps_cond


@pytest.mark.parametrize("subfolder", [None, "unet"])
def test_loads_the_hub_layout_at_the_root_or_under_unet(tmp_path, subfolder):
    save_tiny_videocrafter_unet(str(tmp_path), seed=4, subfolder=subfolder)
    config_folder = tmp_path / subfolder if subfolder else tmp_path
    assert json.loads((config_folder / "config.json").read_text())["_class_name"] == HUB_CONFIG["_class_name"]
    loaded = VideoCrafterUNet3DConditionModel.from_pretrained(str(tmp_path))
    assert isinstance(loaded, VideoCrafterUNet3DConditionModel) and same_state(loaded, tiny_videocrafter_unet(4))


def test_hub_config_builds_the_checkpoint_size(tmp_path):
    """The Hub's config builds a model whose fp32 weights are the 5.65 GB of its safetensors file, with the
    fps MLP in it (without the fps MLP they would be 5.64 GB)."""
    (tmp_path / "config.json").write_text(json.dumps(HUB_CONFIG))
    with torch.device("meta"):
        model = VideoCrafterUNet3DConditionModel.from_config(VideoCrafterUNet3DConditionModel.load_config(tmp_path))
    state = model.state_dict()
    assert tuple(state["fps_embedding.linear_1.weight"].shape) == (1280, 320)
    assert round(sum(v.numel() for v in state.values()) * 4 / 1e9, 2) == 5.65


# -- the pipeline -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_tiny_checkpoints(str(tmp_path_factory.mktemp("videocrafter")), "VideoCrafter")


@pytest.fixture(scope="module")
def pipe(paths):
    pipe = IVMixedVideoCrafterPipeline.from_checkpoints(**paths)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial_latents(seed=0):
    shape = (1, 4, FRAMES, VIDEO_LATENT_SIZE, VIDEO_LATENT_SIZE)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_loads_components_and_dpm_solver(pipe, paths):
    assert isinstance(pipe.unet, VideoCrafterUNet3DConditionModel)
    assert same_state(pipe.unet, VideoCrafterUNet3DConditionModel.from_pretrained(paths["unet"]))
    assert pipe.scheduler.__class__ is DPMSolverMultistepScheduler
    assert pipe.scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert not torch.equal(
        pipe.image_text_encoder.get_input_embeddings().weight, pipe.text_encoder.get_input_embeddings().weight
    )


def clip_embeddings(tokenizer, text_encoder, text):
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def reference_videocrafter(pipe, latents, n, guidance_scale, zz, fps, seed, w_image, w_video):
    """docs/ALGORITHM.md on the pipeline's UNets: explicit DDIM zigzag moves with CFG by hand (frames at the
    video's own size for the image model), then DPM-Solver++ (SDE) main steps seeded like the pipeline."""
    calls = {"video": 0, "image": 0}
    video_emb = torch.cat([clip_embeddings(pipe.tokenizer, pipe.text_encoder, t) for t in (NEGATIVE, PROMPT)])
    image_emb = torch.cat([clip_embeddings(pipe.image_tokenizer, pipe.image_text_encoder, t) for t in (NEGATIVE, PROMPT)])
    image_emb = image_emb.repeat_interleave(FRAMES, dim=0)

    def video(x, t, w):
        calls["video"] += 1
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=video_emb, fps=fps).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        calls["image"] += 1
        b, ch, f, h, wd = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, ch, h, wd)
        u, c = pipe.image_unet(torch.cat([frames, frames]), t, encoder_hidden_states=image_emb).sample.chunk(2)
        return (u + w * (c - u)).reshape(b, f, ch, h, wd).permute(0, 2, 1, 3, 4)

    sched = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(n)
    alphas, D = sched.alphas_cumprod.double().tolist(), 1000 // n
    generator = torch.Generator().manual_seed(seed)

    def abar(s):
        return alphas[s] if s >= 0 else alphas[0]

    def move(x, eps, a_from, a_to):
        x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
        return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps

    x = latents.clone()
    for i, t in enumerate(sched.timesteps):
        t_int = int(t)
        model, w = (image, w_image) if i % zz < zz - 1 else (video, w_video)
        t1, t2 = max(t_int - D, 0), max(t_int - 2 * D, 0)
        x = move(x, model(x, t_int, w), abar(t_int), abar(t_int - D))
        x = move(x, video(x, t1, w_video), abar(t1), abar(t1 - D))
        x = move(x, model(x, t2, -w), abar(t1 - D), abar(t1))
        x = move(x, video(x, t1, -w_video), abar(t_int - D), abar(t_int))
        x = sched.step(video(x, t, guidance_scale), t, x, generator=generator).prev_sample
    return x, calls


@pytest.mark.parametrize("zz, expected", [(None, {"video": 14, "image": 6}), (1, {"video": 20, "image": 0})])
def test_iv_mixed_matches_section_1_with_dpm_solver(pipe, zz, expected):
    n, gs, fps, seed = 4, 9.0, 8, 11
    out = pipe(
        PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, num_inference_steps=n, guidance_scale=gs, fps=fps,
        latents=initial_latents(2), generator=torch.Generator().manual_seed(seed), output_type="latent", zz=zz,
        i_sigma_begin=3.0, i_sigma_end=3.0, v_sigma_begin=5.0, v_sigma_end=5.0,
    )
    with torch.no_grad():
        expected_latents, reference_calls = reference_videocrafter(
            pipe, initial_latents(2), n, gs, 3 if zz is None else zz, fps, seed, w_image=3.0, w_video=5.0
        )
    torch.testing.assert_close(out.frames, expected_latents, rtol=1e-4, atol=1e-5)
    assert out.network_calls == reference_calls == expected


def test_fps_reaches_the_unet(pipe):
    kwargs = dict(prompt=PROMPT, num_frames=FRAMES, num_inference_steps=1, latents=initial_latents(),
                  generator=torch.Generator().manual_seed(0), output_type="latent", iv_mixed=False)
    default = pipe(**kwargs).frames
    kwargs["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(pipe(fps=24, **kwargs).frames, default)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    assert not torch.allclose(pipe(fps=8, **kwargs).frames, default)


def test_default_size_without_unet_sample_size(pipe):
    """The converted checkpoint's config has no sample_size: the default is VideoCrafter2's 320x512."""
    components = {**pipe.components, "unet": tiny_videocrafter_unet(0, sample_size=None)}
    unsized = IVMixedVideoCrafterPipeline(**components)
    unsized.set_progress_bar_config(disable=True)
    out = unsized(PROMPT, num_frames=1, num_inference_steps=1, iv_mixed=False, output_type="latent")
    assert out.frames.shape == (1, 4, 1, 320 // 8, 512 // 8)


def test_pipeline_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = IVMixedVideoCrafterPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.unet, VideoCrafterUNet3DConditionModel) and same_state(loaded.unet, pipe.unet)
    assert same_state(loaded.image_unet, pipe.image_unet)
    assert loaded.scheduler.config.algorithm_type == "sde-dpmsolver++"


def test_ddim_main_scheduler_can_replace_dpm(pipe):
    """Any diffusers scheduler can be the main one; the zigzag is DDIM over its alphas either way."""
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config)
    try:
        out = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2, output_type="latent", latents=initial_latents())
    finally:
        pipe.scheduler = original
    assert out.network_calls == {"video": 6, "image": 4}
