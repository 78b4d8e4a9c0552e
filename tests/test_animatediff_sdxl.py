"""IVMixedAnimateDiffSDXLPipeline: stock parity, docs/ALGORITHM.md on the real tiny UNets, what the image UNet is
conditioned on (seen by hooks), call counts, its own text encoders, and the command line."""

import json
import math
import os

import pytest
import torch
from diffusers import AnimateDiffSDXLPipeline, StableDiffusionXLPipeline

from ivmixed import IVMixedAnimateDiffSDXLPipeline, count_network_calls
from ivmixed.sampler import IVMixedSettings
from ivmixed.testing import save_tiny_animatediff_sdxl, save_tiny_sdxl

from runs import files_of, only_record, reference_zigzag_run, run_main, stock_pipeline, video_frames

FRAMES, SIZE = 3, 64  # 8x8 latents


@pytest.fixture(scope="module")
def sdxl_paths(tmp_path_factory):
    return save_tiny_animatediff_sdxl(str(tmp_path_factory.mktemp("sdxl")))


@pytest.fixture(scope="module")
def sdxl_pipe(sdxl_paths):
    pipe = IVMixedAnimateDiffSDXLPipeline.from_checkpoints(**sdxl_paths)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def own_encoders_pipe(sdxl_paths, tmp_path_factory):
    """The image model is another SDXL checkpoint, text encoders included."""
    other = save_tiny_sdxl(str(tmp_path_factory.mktemp("other-sdxl")), seed=4)
    pipe = IVMixedAnimateDiffSDXLPipeline.from_checkpoints(**{**sdxl_paths, "image_model": other})
    pipe.set_progress_bar_config(disable=True)
    return pipe, other


def noise(videos=1, seed=0, frames=FRAMES):
    return torch.randn(videos, 4, frames, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


# -- standard sampling is diffusers' -------------------------------------------------------------------------


@pytest.mark.parametrize("negative_prompt", [None, "blurry, low quality"])
def test_iv_mixed_off_equals_stock_animatediff_sdxl(sdxl_pipe, negative_prompt):
    kwargs = dict(prompt="a horse", negative_prompt=negative_prompt, num_frames=FRAMES, height=SIZE, width=SIZE,
                  num_inference_steps=3, guidance_scale=8.0)
    for output_type in ("latent", "np"):
        ours = sdxl_pipe(latents=noise(), generator=torch.Generator().manual_seed(3), iv_mixed=False,
                         output_type=output_type, **kwargs)
        stock = stock_pipeline(sdxl_pipe, AnimateDiffSDXLPipeline)(
            latents=noise(), generator=torch.Generator().manual_seed(3), output_type=output_type, **kwargs)
        assert ours.network_calls == {"video": 3, "image": 0}
        if output_type == "latent":
            assert torch.equal(ours.frames, video_frames(stock))
        else:
            assert ours.frames.shape == (1, FRAMES, SIZE, SIZE, 3) and (ours.frames == stock.frames).all()


def test_two_prompts_in_one_call_equal_stock(sdxl_pipe):
    kwargs = dict(prompt=["a horse", "a red boat"], negative_prompt=["blurry", "dark"], num_frames=FRAMES,
                  height=SIZE, width=SIZE, num_inference_steps=2, guidance_scale=8.0, output_type="latent")
    ours = sdxl_pipe(latents=noise(2), iv_mixed=False, **kwargs)
    stock = stock_pipeline(sdxl_pipe, AnimateDiffSDXLPipeline)(latents=noise(2), **kwargs)
    assert torch.equal(ours.frames, video_frames(stock))


def test_loader_uses_ddim_over_linear_betas_and_shares_equal_text_encoders(sdxl_pipe):
    cfg = sdxl_pipe.scheduler.config
    assert type(sdxl_pipe.scheduler).__name__ == "DDIMScheduler"
    assert (cfg.clip_sample, cfg.timestep_spacing, cfg.steps_offset, cfg.beta_schedule) == (False, "linspace", 1,
                                                                                              "linear")
    assert type(sdxl_pipe.unet).__name__ == "UNetMotionModel"
    # the tiny image model's text encoders are the base's (same seed), so no second copy is kept
    assert sdxl_pipe.image_text_encoder is None and sdxl_pipe.image_text_encoder_2 is None


def test_reference_compat_is_refused(sdxl_pipe):
    with pytest.raises(ValueError, match="no AnimateDiffSDXL pipeline"):
        sdxl_pipe("a horse", num_frames=2, height=SIZE, width=SIZE, num_inference_steps=2, reference_compat=True)


# -- IV-mixed: the algorithm, on the real tiny UNets ---------------------------------------------------------


def size_ids(videos_rows):
    """The six size numbers of a SIZE x SIZE call (original size, crop corner 0 0, target size), per row."""
    return torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32).repeat(videos_rows, 1)


def reference_iv_mixed(pipe, latents, n, gs, zz, w_image, w_video):
    """docs/ALGORITHM.md written against the pipeline's UNets, with SDXL's conditioning built here."""
    pos, neg, pooled, neg_pooled = pipe.encode_prompt("a horse", device="cpu", num_videos_per_prompt=1,
                                                      do_classifier_free_guidance=True)
    emb = torch.cat([neg, pos]).repeat_interleave(FRAMES, dim=0)  # (2 * frames, 77, d)
    video_added = {"text_embeds": torch.cat([neg_pooled, pooled]), "time_ids": size_ids(2)}
    image_added = {"text_embeds": video_added["text_embeds"].repeat_interleave(FRAMES, dim=0),
                   "time_ids": size_ids(2 * FRAMES)}

    def video(x, t, w):
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=emb, added_cond_kwargs=video_added).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        frames = x[0].permute(1, 0, 2, 3)  # (f, c, h, w): each frame an image
        u, c = pipe.image_unet(torch.cat([frames, frames]), t, encoder_hidden_states=emb,
                               added_cond_kwargs=image_added).sample.chunk(2)
        return (u + w * (c - u)).permute(1, 0, 2, 3)[None]

    return reference_zigzag_run(pipe.scheduler, latents, n, gs, zz, w_image, w_video, video, image)


@torch.no_grad()
def test_iv_mixed_matches_the_algorithm_on_the_real_unets(sdxl_pipe):
    n, zz = 3, 2  # steps 0 and 2 zigzag with the image model, step 1 with the video model
    out = sdxl_pipe("a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=n, guidance_scale=8.0,
                    latents=noise(seed=1), output_type="latent", zz=zz, i_sigma_begin=3.0, i_sigma_end=3.0,
                    v_sigma_begin=5.0, v_sigma_end=5.0)
    want = reference_iv_mixed(sdxl_pipe, noise(seed=1), n, 8.0, zz, 3.0, 5.0)
    assert torch.allclose(out.frames, want, atol=1e-4, rtol=1e-4), (out.frames - want).abs().max()
    assert out.network_calls == {"video": 3 + 2 * 2 + 4, "image": 2 * 2}
    standard = sdxl_pipe("a horse", num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=n,
                         latents=noise(seed=1), output_type="latent", iv_mixed=False).frames
    assert (out.frames - standard).abs().max() > 1e-3  # the zigzag does change the result


def record_calls(module):
    """Every forward call's conditioning: (encoder_hidden_states, text_embeds, time_ids, rows of x)."""
    calls = []

    def pre(_, args, kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append((kwargs["encoder_hidden_states"].clone(), added["text_embeds"].clone(),
                      added["time_ids"].clone(), args[0].shape[0]))

    return calls, module.register_forward_pre_hook(pre, with_kwargs=True)


@pytest.mark.parametrize("image_batch_size", [None, 2])
def test_each_image_call_gets_each_frames_video_conditioning(sdxl_pipe, image_batch_size):
    """Two videos of different prompts: every image-UNet row (a frame of a video, uncond or cond half) carries the
    embeddings, pooled embedding and time_ids the video UNet got for that video and half."""
    video_calls, h1 = record_calls(sdxl_pipe.unet)
    image_calls, h2 = record_calls(sdxl_pipe.image_unet)
    try:
        out = sdxl_pipe(["a horse", "a red boat"], negative_prompt=["blurry", ""], num_frames=FRAMES, height=SIZE,
                        width=SIZE, num_inference_steps=2, output_type="latent", latents=noise(2),
                        generator=[torch.Generator().manual_seed(s) for s in (1, 2)], image_batch_size=image_batch_size)
    finally:
        h1.remove()
        h2.remove()
    videos, frames = 2, FRAMES
    assert out.network_calls == count_network_calls(2, IVMixedSettings(zz=1000))  # {"video": 6, "image": 4}
    per_call = 1 if image_batch_size is None else math.ceil(videos * frames / image_batch_size)
    assert len(image_calls) == out.network_calls["image"] * per_call
    assert len(video_calls) == out.network_calls["video"]
    v_emb, v_pooled, v_ids, v_rows = video_calls[0]
    assert v_rows == 2 * videos and v_pooled.shape[0] == 2 * videos  # one pooled row per video and half
    assert all(torch.equal(c[0], v_emb) and torch.equal(c[1], v_pooled) and torch.equal(c[2], v_ids)
               for c in video_calls)
    assert not torch.equal(v_pooled[2], v_pooled[3])  # the two prompts differ: the layout matters
    # the rows each image call covers, in order: the frames (b f) of the uncond half, then the same of the cond half
    rows = [(half, r) for half in range(2) for r in range(videos * frames)]
    chunk = videos * frames if image_batch_size is None else image_batch_size
    order = []
    for start in range(0, videos * frames, chunk):
        order.append([(half, r) for half in range(2) for r in range(start, min(start + chunk, videos * frames))])
    assert sorted(sum(order, [])) == sorted(rows)
    for i, (emb, pooled, ids, n_rows) in enumerate(image_calls):
        covered = order[i % len(order)]
        assert n_rows == len(covered) and emb.shape[0] == pooled.shape[0] == ids.shape[0] == len(covered)
        for row, (half, r) in enumerate(covered):
            video_row = half * videos + r // frames  # the video UNet's row for this frame's video and half
            assert torch.equal(emb[row], v_emb[half * videos * frames + r])
            assert torch.equal(pooled[row], v_pooled[video_row])
            assert torch.equal(ids[row], v_ids[video_row])
            assert ids[row].tolist() == [SIZE, SIZE, 0, 0, SIZE, SIZE]


def test_image_model_with_its_own_text_encoders_encodes_with_them(own_encoders_pipe):
    pipe, folder = own_encoders_pipe
    assert pipe.image_text_encoder is not None and pipe.image_text_encoder_2 is not None
    own = StableDiffusionXLPipeline.from_pretrained(folder)
    pos, neg, pooled, neg_pooled = own.encode_prompt("a horse", negative_prompt="blurry", device="cpu",
                                                     num_images_per_prompt=1, do_classifier_free_guidance=True)
    image_calls, hook = record_calls(pipe.image_unet)
    video_calls, hook2 = record_calls(pipe.unet)
    try:
        out = pipe("a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                   num_inference_steps=2, output_type="latent", latents=noise())
    finally:
        hook.remove()
        hook2.remove()
    assert out.network_calls == {"video": 6, "image": 4} and len(image_calls) == 4
    want_emb = torch.cat([neg, pos]).repeat_interleave(FRAMES, dim=0)
    want_pooled = torch.cat([neg_pooled, pooled]).repeat_interleave(FRAMES, dim=0)
    for emb, text, ids, _ in image_calls:
        assert torch.equal(emb, want_emb) and torch.equal(text, want_pooled)
        assert ids.tolist() == size_ids(2 * FRAMES).tolist()
    assert not torch.allclose(video_calls[0][0], want_emb)  # not the video model's embeddings


# -- counts ---------------------------------------------------------------------------------------------------


def test_default_call_counts_and_zz_one(sdxl_pipe):
    kwargs = dict(prompt="a horse", num_frames=2, height=SIZE, width=SIZE, num_inference_steps=4, output_type="latent")
    assert sdxl_pipe(**kwargs).network_calls == {"video": 12, "image": 8} == count_network_calls(4, IVMixedSettings())
    assert sdxl_pipe(zz=1, **kwargs).network_calls == {"video": 20, "image": 0}
    late = sdxl_pipe(interval_begin=2, **kwargs).network_calls
    assert late == {"video": 4 + 2 * 2, "image": 2 * 2}


def test_callback_can_replace_the_pooled_embeddings(sdxl_pipe):
    """``add_text_embeds`` is a callback tensor, as in diffusers, and both UNets read the replaced one."""
    image_calls, hook = record_calls(sdxl_pipe.image_unet)

    def zero_pooled(pipe, i, t, tensors):
        return {"add_text_embeds": tensors["add_text_embeds"] * 0}

    try:
        sdxl_pipe("a horse", num_frames=2, height=SIZE, width=SIZE, num_inference_steps=2, output_type="latent",
                  callback_on_step_end=zero_pooled, callback_on_step_end_tensor_inputs=["add_text_embeds"])
    finally:
        hook.remove()
    assert image_calls[0][1].abs().sum() > 0 and image_calls[-1][1].abs().sum() == 0


# -- the command line -----------------------------------------------------------------------------------------


def test_cli_tiny_writes_both_videos_and_a_record(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_main(["--tiny", "--pipeline", "animatediffsdxl", "--prompt", "a cat", "--num-frames", "2",
                          "--inference-step", "2", "--output-dir", str(out)], capsys)
    assert code == 0, err
    names = files_of(out)
    assert sum(n.endswith("_iv_mix.mp4") for n in names) == 1 and sum(n.endswith("_standard.mp4") for n in names) == 1
    record = only_record(out)
    assert record["pipeline"] == "AnimatediffSDXL"
    assert record["network_calls"]["iv_mix"] == {"video": 6, "image": 4}
    assert record["network_calls"]["standard"] == {"video": 2, "image": 0}


@pytest.mark.parametrize("args, message", [
    (["--reference-compat"], "has no AnimatediffSDXL pipeline"),
    (["--num-frames", "33"], "more than the 32 frames the motion adapter takes at once"),
    (["--context-length", "8"], "applies to --pipeline Animatediff only"),
])
def test_cli_refusals_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code, err = run_main(["--tiny", "--pipeline", "AnimatediffSDXL", "--prompt", "a cat", "--output-dir", str(out),
                          *args], capsys)
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err
    assert not out.exists() or files_of(out) == []


def test_the_preset_names_the_pipeline_and_its_sources(tmp_path):
    import yaml

    from ivmixed.registry import PIPELINES

    root = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
    with open(os.path.join(root, "animatediffsdxl.yaml"), encoding="utf-8") as f:
        preset = yaml.safe_load(f)
    spec = PIPELINES["AnimatediffSDXL"]
    assert preset["pipeline"] == "AnimatediffSDXL"
    assert (preset["height"], preset["width"], preset["guidance_scale"]) == (1024, 1024, 8.0)
    assert preset["motion_adapter"] == spec.checkpoint("motion_adapter").default == \
        "guoyww/animatediff-motion-adapter-sdxl-beta"
    assert json.dumps(preset)  # plain data
