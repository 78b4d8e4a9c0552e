"""Video-to-video under IV-mixed sampling: stock parity, the kept steps and their stride, the algorithm from the
noised video, every pipeline, and the command line."""

import os

import imageio.v3 as iio
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AnimateDiffVideoToVideoPipeline
from runs import files_of, only_record, reference_zigzag_run, run_main, stock_pipeline, video_frames

from ivmixed import count_network_calls
from ivmixed.sampler import IVMixedSettings
from ivmixed.testing import tiny_pipeline

FRAMES, SIZE, STEPS = 4, 64, 8


def frames_of(seed=0, size=SIZE, count=FRAMES):
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("negative_prompt", [None, "blurry"])
def test_iv_mixed_off_equals_stock_animatediff_video_to_video(animatediff_pipe, negative_prompt):
    kwargs = dict(prompt="a horse", negative_prompt=negative_prompt, video=frames_of(), num_inference_steps=STEPS,
                  strength=0.5, guidance_scale=7.5)
    for output_type in ("latent", "np"):
        ours = animatediff_pipe(iv_mixed=False, generator=torch.Generator().manual_seed(2), output_type=output_type,
                                **kwargs)
        stock = stock_pipeline(animatediff_pipe, AnimateDiffVideoToVideoPipeline)(
            generator=torch.Generator().manual_seed(2), output_type=output_type, **kwargs)
        assert ours.network_calls == {"video": 4, "image": 0}  # the last 4 of 8 steps
        if output_type == "latent":
            assert torch.equal(ours.frames, video_frames(stock))
        else:
            assert (ours.frames == stock.frames).all()


def test_half_strength_of_eight_steps_runs_the_last_four_with_the_stride_of_eight(animatediff_pipe):
    seen = []
    hook = animatediff_pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    try:
        out = animatediff_pipe("a horse", video=frames_of(), num_inference_steps=STEPS, strength=0.5,
                               output_type="latent")
    finally:
        hook.remove()
    assert out.network_calls == {"video": 12, "image": 8} == count_network_calls(4, IVMixedSettings())
    scheduler = animatediff_pipe.scheduler
    kept = scheduler.timesteps.tolist()[4:]
    stride = 1000 // STEPS  # 125: the spacing of the 8 main timesteps, not 1000 // 4
    # per kept step: the video model's moves 2 and 4 at t - D, then its main step at t (the image model moves 1, 3)
    want = [v for t in kept for v in (max(t - stride, 0), max(t - stride, 0), t)]
    assert seen == want


@torch.no_grad()
def test_iv_mixed_from_the_noised_video_matches_the_algorithm(animatediff_pipe):
    """With the noised video latents given, the kept steps equal docs/ALGORITHM.md run from step 4 of 8."""
    pipe, zz, gs = animatediff_pipe, 2, 7.5
    start_latents = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(4))
    out = pipe("a horse", video=frames_of(), latents=start_latents, num_inference_steps=STEPS, strength=0.5,
               guidance_scale=gs, output_type="latent", zz=zz, i_sigma_begin=3.0, i_sigma_end=3.0, v_sigma_begin=5.0,
               v_sigma_end=5.0)
    pos, neg = pipe.encode_prompt("a horse", "cpu", 1, True, None)
    emb = torch.cat([neg, pos]).repeat_interleave(FRAMES, dim=0)

    def video(x, t, w):
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        f = x[0].permute(1, 0, 2, 3)
        u, c = pipe.image_unet(torch.cat([f, f]), t, encoder_hidden_states=emb).sample.chunk(2)
        return (u + w * (c - u)).permute(1, 0, 2, 3)[None]

    want = reference_zigzag_run(pipe.scheduler, start_latents, STEPS, gs, zz, 3.0, 5.0, video, image, start=4)
    assert torch.allclose(out.frames, want, atol=1e-4, rtol=1e-4), (out.frames - want).abs().max()
    # zz=2 over the 4 steps that run: steps 0 and 2 with the image model, 1 and 3 with the video model
    assert out.network_calls == {"video": 4 + 2 * 2 + 2 * 4, "image": 2 * 2}


def test_interval_counts_the_steps_that_run(animatediff_pipe):
    out = animatediff_pipe("a horse", video=frames_of(), num_inference_steps=STEPS, strength=0.5, interval_begin=2,
                           output_type="latent")
    assert out.network_calls == {"video": 4 + 2 * 2, "image": 2 * 2}
    with pytest.raises(ValueError, match="keeps no step"):
        animatediff_pipe("a horse", video=frames_of(), num_inference_steps=STEPS, strength=0.1)


@pytest.mark.parametrize("name", ["ModelScope", "VideoCrafter", "AnimatediffSDXL"])
def test_every_pipeline_takes_video_to_video(name):
    pipe = tiny_pipeline(name)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    kwargs = dict(video=frames_of(size=size), num_inference_steps=STEPS, strength=0.5, height=size, width=size,
                  output_type="latent")
    standard = pipe("a horse", iv_mixed=False, generator=torch.Generator().manual_seed(1), **kwargs)
    again = pipe("a horse", iv_mixed=False, generator=torch.Generator().manual_seed(1), **kwargs)
    mixed = pipe("a horse", generator=torch.Generator().manual_seed(1), **kwargs)
    assert standard.network_calls == {"video": 4, "image": 0}
    settings = IVMixedSettings(zz=pipe.default_zz)
    assert mixed.network_calls == count_network_calls(4, settings)
    assert torch.equal(standard.frames, again.frames)
    # the video shapes the start: another video gives another result
    other = pipe("a horse", iv_mixed=False, generator=torch.Generator().manual_seed(1),
                 **{**kwargs, "video": frames_of(seed=9, size=size)})
    assert not torch.allclose(standard.frames, other.frames)


# -- the command line -----------------------------------------------------------------------------------------


def write_video(path, count=10, size=48):
    rng = np.random.default_rng(3)
    iio.imwrite(path, rng.integers(0, 255, (count, size, size + 16, 3), dtype=np.uint8), fps=8)
    return str(path)


def test_cli_tiny_video_to_video_makes_both_videos(tmp_path, capsys):
    video, out = write_video(tmp_path / "in.mp4"), tmp_path / "out"
    argv = ["--tiny", "--prompt", "a cat", "--init-video", video, "--strength", "0.5", "--num-frames", "4",
            "--inference-step", "4", "--output-dir", str(out), "--side-by-side"]
    code, err = run_main(argv, capsys)
    assert code == 0, err
    record = only_record(out)
    assert record["network_calls"] == {"iv_mix": {"video": 6, "image": 4}, "standard": {"video": 2, "image": 0}}
    assert record["settings"]["init_video"] == video and record["settings"]["strength"] == 0.5
    names = files_of(out)
    assert sum(n.endswith("_iv_mix.mp4") for n in names) == 1 and sum(n.endswith("_standard.mp4") for n in names) == 1
    # an edited input video makes new files: its content is in the fingerprint
    write_video(tmp_path / "in.mp4", count=11)
    code, err = run_main(argv, capsys)
    assert code == 0, err
    assert len([n for n in files_of(out) if n.endswith("_iv_mix.mp4")]) == 2


@pytest.mark.parametrize("make, message", [
    (lambda d: write_video(d / "short.mp4", count=2), "frames"),
    (lambda d: (d / "bad.mp4").write_bytes(os.urandom(2000)) and str(d / "bad.mp4"), "bad.mp4"),
    (lambda d: (d / "empty.mp4").write_bytes(b"") or str(d / "empty.mp4"), "empty.mp4"),
])
def test_cli_bad_init_videos_are_one_line_and_write_nothing(tmp_path, capsys, make, message):
    video, out = make(tmp_path), tmp_path / "out"
    code, err = run_main(["--tiny", "--prompt", "a cat", "--init-video", video, "--num-frames", "4",
                          "--output-dir", str(out)], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "--init-video" in lines[0] and message in lines[0], err
    assert "Traceback" not in err and not out.exists()


def test_cli_strength_without_a_video_and_a_strength_keeping_no_step_are_refused(tmp_path, capsys):
    code, err = run_main(["--tiny", "--prompt", "a cat", "--strength", "0.5", "--output-dir", str(tmp_path / "o")],
                         capsys)
    assert code == 2 and "no --init-video is given" in err
    video = write_video(tmp_path / "in.mp4")
    code, err = run_main(["--tiny", "--prompt", "a cat", "--init-video", video, "--strength", "0.05", "--num-frames",
                          "4", "--inference-step", "4", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "keeps no step" in err and not (tmp_path / "o").exists()


def test_the_contact_sheet_caption_names_the_inputs(tmp_path):
    from ivmixed.config import build_config
    from ivmixed.prompts import Job
    from ivmixed.runner import contact_caption

    video, image = write_video(tmp_path / "walk.mp4"), tmp_path / "style.png"
    PIL.Image.new("RGB", (8, 8)).save(image)
    config = build_config({"prompt": "a cat", "tiny": True, "init_video": video, "strength": 0.5,
                           "inference_step": 4, "num_frames": 4})
    caption = contact_caption(config, Job("a cat", 1))
    assert "from walk.mp4 at strength 0.5 (2 of 4 steps)" in caption and "interval 0-1" in caption
