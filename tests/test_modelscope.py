"""IVMixedModelScopePipeline: loading, stock text-to-video parity, the section-1 loop with the resize, counts."""

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from ivmixed import IVMixedModelScopePipeline
from ivmixed.testing import LATENT_SIZE, VIDEO_LATENT_SIZE, save_tiny_checkpoints, tiny_video_unet

FRAMES = 2
PROMPT, NEGATIVE = "a red fox", "blurry"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return save_tiny_checkpoints(str(tmp_path_factory.mktemp("modelscope")), "ModelScope")


@pytest.fixture(scope="module")
def pipe(paths):
    pipe = IVMixedModelScopePipeline.from_checkpoints(**paths)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial_latents(seed=0):
    shape = (1, 4, FRAMES, VIDEO_LATENT_SIZE, VIDEO_LATENT_SIZE)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_loads_components_and_ddim(pipe):
    assert pipe.scheduler.__class__ is DDIMScheduler
    config = pipe.scheduler.config
    assert (config.clip_sample, config.timestep_spacing, config.steps_offset) == (False, "linspace", 1)
    # the image model brings its own text encoder (different weights from the video model's)
    assert not torch.equal(
        pipe.image_text_encoder.get_input_embeddings().weight, pipe.text_encoder.get_input_embeddings().weight
    )
    # the video runs at 4x4 latents by default, the image UNet's native size is 8x8: the resize path runs
    assert pipe.unet.config.sample_size == VIDEO_LATENT_SIZE != pipe.image_unet.config.sample_size == LATENT_SIZE


def stock_text_to_video(pipe):
    deprecated = pytest.importorskip("diffusers.pipelines.deprecated.text_to_video_synthesis")
    stock = deprecated.TextToVideoSDPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
    )
    stock.set_progress_bar_config(disable=True)
    return stock


@pytest.mark.parametrize("guidance_scale", [9.0, 1.0])
def test_iv_mixed_off_equals_stock_text_to_video(pipe, guidance_scale):
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, num_inference_steps=3,
                  guidance_scale=guidance_scale, output_type="latent")
    ours = pipe(latents=initial_latents(), iv_mixed=False, **kwargs)
    stock = stock_text_to_video(pipe)(latents=initial_latents(), **kwargs)
    assert torch.equal(ours.frames, stock.frames)
    assert ours.network_calls == {"video": 3, "image": 0}


def test_decoded_output_equals_stock(pipe):
    kwargs = dict(prompt=PROMPT, num_frames=FRAMES, num_inference_steps=2)  # default size and output_type "np"
    ours = pipe(generator=torch.Generator().manual_seed(3), iv_mixed=False, **kwargs)
    stock = stock_text_to_video(pipe)(generator=torch.Generator().manual_seed(3), **kwargs)
    size = VIDEO_LATENT_SIZE * pipe.vae_scale_factor
    assert isinstance(ours.frames, np.ndarray) and ours.frames.shape == (1, FRAMES, size, size, 3)
    assert np.array_equal(ours.frames, stock.frames)


def clip_embeddings(tokenizer, text_encoder, text):
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def karras(begin, end, i, n, rho):
    return (begin ** (1 / rho) + i / (n - 1) * (end ** (1 / rho) - begin ** (1 / rho))) ** rho


def reference_modelscope(pipe, latents, n, guidance_scale, zz, interval, sigmas, rho):
    """docs/ALGORITHM.md on the pipeline's UNets: explicit DDIM moves, CFG by hand, nearest resize for the
    image model, DDIM (eta 0) main steps. Returns the final latents and the guided calls per model."""
    calls = {"video": 0, "image": 0}
    video_emb = torch.cat([clip_embeddings(pipe.tokenizer, pipe.text_encoder, t) for t in (NEGATIVE, PROMPT)])
    image_emb = torch.cat([clip_embeddings(pipe.image_tokenizer, pipe.image_text_encoder, t) for t in (NEGATIVE, PROMPT)])
    image_emb = image_emb.repeat_interleave(FRAMES, dim=0)  # uncond for every frame, then cond for every frame

    def video(x, t, w):
        calls["video"] += 1
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=video_emb).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        calls["image"] += 1
        b, ch, f, h, wd = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, ch, h, wd)
        native = pipe.image_unet.config.sample_size
        frames = F.interpolate(frames, size=(native, native), mode="nearest")
        u, c = pipe.image_unet(torch.cat([frames, frames]), t, encoder_hidden_states=image_emb).sample.chunk(2)
        eps = F.interpolate(u + w * (c - u), size=(h, wd), mode="nearest")
        return eps.reshape(b, f, ch, h, wd).permute(0, 2, 1, 3, 4)

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(n)
    alphas, D = sched.alphas_cumprod.double().tolist(), 1000 // n

    def abar(s):
        return alphas[s] if s >= 0 else alphas[0]

    def move(x, eps, a_from, a_to):
        x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
        return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps

    i_begin, i_end, v_begin, v_end = sigmas
    x = latents.clone()
    for i, t in enumerate(sched.timesteps.tolist()):
        w_video = karras(v_begin, v_end, i, n, rho)
        if interval[0] <= i <= interval[1]:
            model, w = (image, karras(i_begin, i_end, i, n, rho)) if i % zz < zz - 1 else (video, w_video)
            t1, t2 = max(t - D, 0), max(t - 2 * D, 0)
            x = move(x, model(x, t, w), abar(t), abar(t - D))
            x = move(x, video(x, t1, w_video), abar(t1), abar(t1 - D))
            x = move(x, model(x, t2, -w), abar(t1 - D), abar(t1))
            x = move(x, video(x, t1, -w_video), abar(t - D), abar(t))
        x = move(x, video(x, t, guidance_scale), abar(t), abar(t - D))
    return x, calls


def count_forward_calls(*modules):
    counts = [0] * len(modules)
    hooks = []
    for k, module in enumerate(modules):
        hooks.append(module.register_forward_hook(lambda *args, k=k: counts.__setitem__(k, counts[k] + 1)))
    return counts, hooks


@pytest.mark.parametrize(
    "n, zz, interval, expected",
    [
        (4, None, (0, 3), {"video": 12, "image": 8}),  # default zz=1000: the image model zigzags every step
        (4, 2, (1, 2), {"video": 10, "image": 2}),  # step 1 video zigzag, step 2 image zigzag, 0 and 3 plain
        (2, 1, (0, 1), {"video": 10, "image": 0}),  # zz=1: never the image model
    ],
)
def test_iv_mixed_matches_section_1(pipe, n, zz, interval, expected):
    sigmas, rho, gs = (2.0, 6.0, 5.0, 3.0), 7.0, 9.0
    counts, hooks = count_forward_calls(pipe.unet, pipe.image_unet)
    try:
        out = pipe(
            PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, num_inference_steps=n, guidance_scale=gs,
            latents=initial_latents(1), output_type="latent", zz=zz, interval_begin=interval[0],
            interval_end=interval[1], i_sigma_begin=sigmas[0], i_sigma_end=sigmas[1], v_sigma_begin=sigmas[2],
            v_sigma_end=sigmas[3], rho=rho,
        )
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        expected_latents, reference_calls = reference_modelscope(
            pipe, initial_latents(1), n, gs, 1000 if zz is None else zz, interval, sigmas, rho
        )
    torch.testing.assert_close(out.frames, expected_latents, rtol=1e-4, atol=1e-5)
    assert out.network_calls == reference_calls == expected
    assert counts == [expected["video"], expected["image"]]


def test_fp16_prefers_the_variant_and_falls_back(paths, tmp_path):
    plain = IVMixedModelScopePipeline.from_checkpoints(**paths, dtype=torch.float16)  # no fp16 files at all
    assert plain.unet.dtype == plain.image_unet.dtype == plain.vae.dtype == torch.float16
    video_model = tmp_path / "with-fp16"
    shutil.copytree(paths["video_model"], video_model)
    tiny_video_unet(9, VIDEO_LATENT_SIZE).save_pretrained(video_model / "unet", variant="fp16")
    variant = IVMixedModelScopePipeline.from_checkpoints(str(video_model), paths["image_model"], dtype=torch.float16)
    expected = tiny_video_unet(9, VIDEO_LATENT_SIZE).half().state_dict()
    assert all(torch.equal(expected[k], v) for k, v in variant.unet.state_dict().items())


def test_without_image_model_only_video_sampling_runs(paths):
    pipe = IVMixedModelScopePipeline.from_pretrained(paths["video_model"])
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_unet is None
    with pytest.raises(ValueError, match="image model"):
        pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2)
    out = pipe(PROMPT, num_frames=FRAMES, num_inference_steps=2, zz=1, output_type="latent")
    assert out.network_calls == {"video": 10, "image": 0}


def test_prompt_embeddings_alone_cannot_drive_the_image_model(pipe):
    embeds = clip_embeddings(pipe.tokenizer, pipe.text_encoder, PROMPT)
    with pytest.raises(ValueError, match="prompt"):
        pipe(prompt_embeds=embeds, num_frames=FRAMES, num_inference_steps=2)
