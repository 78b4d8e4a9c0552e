"""IVMixedAnimateDiffPipeline: stock parity, the section-1 loop on the real UNets, counts, save/load."""

import pytest
import torch
from diffusers import AnimateDiffPipeline

from ivmixed import IVMixedAnimateDiffPipeline
from runs import reference_zigzag_run, stock_pipeline

FRAMES, SIZE = 4, 64  # 8x8 latents


def initial_latents(seed=0):
    return torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("guidance_scale", [7.5, 1.0])
def test_iv_mixed_off_equals_stock_animatediff(animatediff_pipe, guidance_scale):
    kwargs = dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                  num_inference_steps=3, guidance_scale=guidance_scale, output_type="latent")
    ours = animatediff_pipe(latents=initial_latents(), iv_mixed=False, **kwargs)
    stock = stock_pipeline(animatediff_pipe, AnimateDiffPipeline)(latents=initial_latents(), **kwargs)
    assert torch.equal(ours.frames, stock.frames[0] if isinstance(stock.frames, tuple) else stock.frames)
    assert ours.network_calls == {"video": 3, "image": 0}


def test_decoded_output_equals_stock(animatediff_pipe):
    kwargs = dict(prompt="a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=2, output_type="np")
    ours = animatediff_pipe(generator=torch.Generator().manual_seed(5), iv_mixed=False, **kwargs)
    stock = stock_pipeline(animatediff_pipe, AnimateDiffPipeline)(generator=torch.Generator().manual_seed(5), **kwargs)
    assert ours.frames.shape == (1, FRAMES, SIZE, SIZE, 3)
    assert (ours.frames == stock.frames).all()


def reference_iv_mixed(pipe, latents, n, gs, zz, w_image, w_video):
    """docs/ALGORITHM.md written against the pipeline's UNets directly (constant guidance weights)."""
    pos, neg = pipe.encode_prompt("a horse", "cpu", 1, True, None)
    video_emb = torch.cat([neg, pos]).repeat_interleave(FRAMES, dim=0)  # (2 * frames, 77, d)

    def video(x, t, w):
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=video_emb).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        frames = x[0].permute(1, 0, 2, 3)  # (f, c, h, w): each frame an image
        u, c = pipe.image_unet(torch.cat([frames, frames]), t, encoder_hidden_states=video_emb).sample.chunk(2)
        return (u + w * (c - u)).permute(1, 0, 2, 3)[None]

    return reference_zigzag_run(pipe.scheduler, latents, n, gs, zz, w_image, w_video, video, image)


@torch.no_grad()
def test_iv_mixed_matches_section_one_on_the_real_unets(animatediff_pipe):
    n, zz = 3, 2  # steps 0 and 2 zigzag with the image model, step 1 with the video model
    out = animatediff_pipe(
        "a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=n, guidance_scale=7.5,
        latents=initial_latents(1), output_type="latent", zz=zz, i_sigma_begin=3.0, i_sigma_end=3.0,
        v_sigma_begin=5.0, v_sigma_end=5.0,
    )
    want = reference_iv_mixed(animatediff_pipe, initial_latents(1), n, 7.5, zz, 3.0, 5.0)
    assert torch.allclose(out.frames, want, atol=1e-3, rtol=1e-4), (out.frames - want).abs().max()
    assert out.network_calls == {"video": 3 + 2 * 2 + 4, "image": 2 * 2}


def test_default_call_counts_and_zz_one(animatediff_pipe):
    kwargs = dict(prompt="a horse", num_frames=2, height=SIZE, width=SIZE, num_inference_steps=4, output_type="latent")
    assert animatediff_pipe(**kwargs).network_calls == {"video": 12, "image": 8}
    assert animatediff_pipe(zz=1, **kwargs).network_calls == {"video": 20, "image": 0}


def test_iv_mixed_changes_the_result_and_interval_limits_it(animatediff_pipe):
    kwargs = dict(prompt="a horse", num_frames=2, height=SIZE, width=SIZE, num_inference_steps=3, output_type="latent")
    lat = initial_latents()[:, :, :2]
    standard = animatediff_pipe(latents=lat, iv_mixed=False, **kwargs).frames
    mixed = animatediff_pipe(latents=lat, **kwargs).frames
    late_only = animatediff_pipe(latents=lat, interval_begin=2, **kwargs)
    assert not torch.allclose(standard, mixed)
    assert late_only.network_calls == {"video": 5, "image": 2}


def test_callback_on_step_end(animatediff_pipe):
    steps = []

    def on_step(pipe, i, t, kwargs):
        steps.append(i)
        return {"latents": kwargs["latents"] * 0}

    out = animatediff_pipe("a horse", num_frames=2, height=SIZE, width=SIZE, num_inference_steps=3,
                           output_type="latent", iv_mixed=False, callback_on_step_end=on_step)
    assert steps == [0, 1, 2]
    assert torch.equal(out.frames, torch.zeros_like(out.frames))


def test_bad_iv_mixed_values_fail_before_any_work(animatediff_pipe):
    with pytest.raises(ValueError, match="interval_end"):
        animatediff_pipe("a horse", num_frames=2, height=SIZE, width=SIZE, num_inference_steps=3, interval_end=3)


def test_save_and_load_keeps_the_image_unet(animatediff_pipe, tmp_path):
    animatediff_pipe.save_pretrained(tmp_path)
    loaded = IVMixedAnimateDiffPipeline.from_pretrained(tmp_path)
    assert set(loaded.components) == set(animatediff_pipe.components)
    for name, p in animatediff_pipe.image_unet.state_dict().items():
        assert torch.equal(p, loaded.image_unet.state_dict()[name])


def test_loader_uses_ddim_over_the_checkpoint_betas(animatediff_pipe):
    cfg = animatediff_pipe.scheduler.config
    assert type(animatediff_pipe.scheduler).__name__ == "DDIMScheduler"
    assert (cfg.clip_sample, cfg.timestep_spacing, cfg.steps_offset) == (False, "linspace", 1)
    assert cfg.beta_schedule == "scaled_linear" and cfg.beta_end == 0.012


def test_missing_weights_name_the_model(tmp_path):
    from ivmixed.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="motion adapter .*`hf download ivmixed-test/no-such-adapter`") as info:
        IVMixedAnimateDiffPipeline.from_checkpoints(motion_adapter="ivmixed-test/no-such-adapter")
    assert ("the motion adapter 'ivmixed-test/no-such-adapter' (`hf download ivmixed-test/no-such-adapter` while "
            "online, or a local folder with --motion-adapter)") in info.value.render(lambda n: "--" + n.replace("_", "-"))
