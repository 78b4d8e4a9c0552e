"""Long videos (FreeNoise context windows) and prompt travel (dict prompts) through IVMixedAnimateDiffPipeline,
and the prompt-schedule / context-window helpers of ivmixed.prompt_schedule."""

import pytest
import torch
from runs import stock_components
from diffusers import AnimateDiffPipeline

from ivmixed import IVMixedAnimateDiffPipeline, IVMixedSettings, count_network_calls
from ivmixed.prompt_schedule import (
    context_settings,
    describe_schedule,
    is_prompt_schedule,
    parse_prompt_schedule,
    prompt_schedule_from_mapping,
)

SIZE = 64  # 8x8 latents
FRAMES, CONTEXT = 20, (8, 4)  # windows [0, 8), [4, 12), [8, 16), [12, 20)
SCHEDULE = {0: "a red cat", 6: "a blue dog", 15: "a green bird"}
NEGATIVE_SCHEDULE = {0: "blurry", 12: "dark"}


@pytest.fixture(scope="module")
def pipes(animatediff_paths):
    """Our pipeline and diffusers' stock one over the same components: their own copies, so that FreeNoise
    (which swaps the motion modules' blocks) stays out of the session-wide pipeline."""
    ours = IVMixedAnimateDiffPipeline.from_checkpoints(**animatediff_paths)
    stock = AnimateDiffPipeline(**stock_components(ours, AnimateDiffPipeline))
    for p in (ours, stock):
        p.set_progress_bar_config(disable=True)
    return ours, stock


def free_noise(pipes, context=CONTEXT):
    for p in pipes:
        p.enable_free_noise(context_length=context[0], context_stride=context[1])


def no_free_noise(pipes):
    for p in pipes:
        if p.free_noise_enabled:
            p.disable_free_noise()


def latents_for(frames, seed=0):
    return torch.randn(1, 4, frames, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


def call(pipe, prompt, frames=FRAMES, steps=2, **kwargs):
    kwargs = {"height": SIZE, "width": SIZE, "num_inference_steps": steps, "output_type": "latent", **kwargs}
    return pipe(prompt, num_frames=frames, **kwargs)


class UNetCalls:
    """Every forward call of a UNet: its input sample and encoder_hidden_states."""

    def __init__(self, unet):
        self.samples, self.embeds = [], []
        self.handle = unet.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.samples.append(args[0].clone())
        self.embeds.append(kwargs["encoder_hidden_states"].clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# -- stock parity with iv_mixed=False ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, negative_prompt, guidance_scale",
    [
        ("a cat", None, 7.5),
        ("a cat", "blurry", 1.0),
        (SCHEDULE, None, 7.5),
        (SCHEDULE, "blurry", 7.5),
        (SCHEDULE, NEGATIVE_SCHEDULE, 7.5),
        (SCHEDULE, None, 1.0),
    ],
)
def test_free_noise_off_iv_mixed_equals_stock(pipes, prompt, negative_prompt, guidance_scale):
    free_noise(pipes)
    ours, stock = pipes
    kwargs = dict(negative_prompt=negative_prompt, guidance_scale=guidance_scale)
    got = call(ours, prompt, generator=torch.Generator().manual_seed(3), iv_mixed=False, **kwargs)
    want = call(stock, prompt, generator=torch.Generator().manual_seed(3), **kwargs).frames
    assert got.frames.shape == (1, 4, FRAMES, SIZE // 8, SIZE // 8)
    assert torch.equal(got.frames, want)
    assert got.network_calls == {"video": 2, "image": 0}


def test_free_noise_prompt_travel_decoded_equals_stock(pipes):
    free_noise(pipes)
    ours, stock = pipes
    kwargs = dict(output_type="np", steps=1)
    got = call(ours, SCHEDULE, generator=torch.Generator().manual_seed(4), iv_mixed=False, **kwargs).frames
    want = call(stock, SCHEDULE, generator=torch.Generator().manual_seed(4), **kwargs).frames
    assert got.shape == (1, FRAMES, SIZE, SIZE, 3)
    assert (got == want).all()


# -- IV-mixed with windows: call counts --------------------------------------------------------------------------


@pytest.mark.parametrize("windows", [True, False])
def test_iv_mixed_call_counts_are_unchanged_by_windows(pipes, windows):
    free_noise(pipes) if windows else no_free_noise(pipes)
    ours = pipes[0]
    steps, zz = 3, 2  # steps 0 and 2 zigzag with the image model, step 1 with the video model
    with UNetCalls(ours.unet) as video, UNetCalls(ours.image_unet) as image:
        out = call(ours, SCHEDULE, steps=steps, zz=zz, latents=latents_for(FRAMES))
    expected = count_network_calls(steps, IVMixedSettings(zz=zz))
    assert expected == {"video": 3 + 2 * 2 + 4, "image": 2 * 2}
    assert out.network_calls == expected
    # one guided call is one pass of each UNet over all frames (all windows), both halves batched
    assert len(video.samples) == expected["video"] and len(image.samples) == expected["image"]
    assert all(s.shape == (2, 4, FRAMES, 8, 8) for s in video.samples)
    assert torch.isfinite(out.frames).all()


def test_iv_mixed_above_the_adapter_window(pipes):
    """40 frames on the 32-frame tiny adapter: windows of 16 frames with stride 4, and the image model's automatic
    cap of 16 frames per call, equal within float tolerance to all 40 frames in one call."""
    ours = pipes[0]
    frames, max_frames = 40, ours.motion_adapter.config.motion_max_seq_length
    assert max_frames == 32
    windows = context_settings(frames, max_frames)
    assert windows == (16, 4)
    free_noise(pipes, windows)
    kwargs = dict(frames=frames, steps=1, latents=latents_for(frames, seed=2), prompt="a cat")
    with UNetCalls(ours.image_unet) as capped:
        auto = call(ours, **kwargs)
    with UNetCalls(ours.image_unet) as whole:
        one_call = call(ours, image_batch_size=frames, **kwargs)
    expected = count_network_calls(1, IVMixedSettings())
    assert auto.network_calls == one_call.network_calls == expected == {"video": 3, "image": 2}
    assert [s.shape[0] for s in capped.samples] == [32, 32, 16] * 2  # 16 + 16 + 8 frames, both halves each
    assert [s.shape[0] for s in whole.samples] == [80] * 2
    assert auto.frames.shape == (1, 4, frames, 8, 8)
    assert torch.allclose(auto.frames, one_call.frames, atol=1e-5, rtol=1e-5), (auto.frames - one_call.frames).abs().max()


# -- each frame's own embedding, for both models -----------------------------------------------------------------


def text_embedding(pipe, text):
    """The CLIP text encoder's last hidden state for one prompt, computed here without the pipeline."""
    ids = pipe.tokenizer(text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0][0]


def frame_embeddings(pipe, schedule, frames):
    """One embedding per frame: linear interpolation between scheduled frames, the last prompt held after it."""
    keys = sorted(schedule)
    keyed = {k: text_embedding(pipe, schedule[k]) for k in keys}
    rows = []
    for f in range(frames):
        before = max(k for k in keys if k <= f)
        after = [k for k in keys if k > f]
        if not after:
            rows.append(keyed[before])
            continue
        alpha = (f - before) / (after[0] - before)
        rows.append((1 - alpha) * keyed[before] + alpha * keyed[after[0]])
    return torch.stack(rows)


@torch.no_grad()
@pytest.mark.parametrize(
    "windows, image_batch_size, negative_prompt",
    [(True, None, None), (True, 6, NEGATIVE_SCHEDULE), (False, None, "blurry"), (False, 7, None)],
)
def test_image_model_gets_each_frames_own_embedding(pipes, windows, image_batch_size, negative_prompt):
    free_noise(pipes) if windows else no_free_noise(pipes)
    ours = pipes[0]
    latents = latents_for(FRAMES, seed=5)
    with UNetCalls(ours.unet) as video, UNetCalls(ours.image_unet) as image:
        call(ours, SCHEDULE, steps=1, latents=latents, negative_prompt=negative_prompt,
             image_batch_size=image_batch_size)

    cond = frame_embeddings(ours, SCHEDULE, FRAMES)
    negative = NEGATIVE_SCHEDULE if isinstance(negative_prompt, dict) else {0: negative_prompt or ""}
    uncond = frame_embeddings(ours, negative, FRAMES)
    # scheduled frames are the prompts themselves; frames in between differ from both ends
    assert torch.allclose(cond[6], text_embedding(ours, "a blue dog"), atol=1e-6)
    assert not torch.allclose(cond[3], cond[0]) and not torch.allclose(cond[3], cond[6])

    # the video model: [uncond frames; cond frames], frame by frame
    for embeds in video.embeds:
        assert embeds.shape == (2 * FRAMES, 77, cond.shape[-1])
        assert torch.allclose(embeds, torch.cat([uncond, cond]), atol=1e-5)

    # the image model: one zigzag step = 2 guided calls, each split into chunks of image_batch_size frames
    chunk = image_batch_size or FRAMES
    starts = list(range(0, FRAMES, chunk))
    assert len(image.embeds) == 2 * len(starts)
    for n, (sample, embeds) in enumerate(zip(image.samples, image.embeds)):
        start = starts[n % len(starts)]
        rows = range(start, min(start + chunk, FRAMES))
        k = len(rows)
        assert sample.shape == (2 * k, 4, 8, 8) and embeds.shape == (2 * k, 77, cond.shape[-1])
        for r, f in enumerate(rows):
            # row r of each half is frame f: its own uncond / cond embedding, the same the video model uses
            assert torch.allclose(embeds[r], uncond[f], atol=1e-5)
            assert torch.allclose(embeds[k + r], cond[f], atol=1e-5)
            assert torch.equal(embeds[r], video.embeds[0][f].to(embeds.dtype))
            assert torch.equal(embeds[k + r], video.embeds[0][FRAMES + f].to(embeds.dtype))
    # the first image call sees the initial latents: row r is frame start + r, in both halves
    for n, start in enumerate(starts):
        sample = image.samples[n]
        k = sample.shape[0] // 2
        frames = latents[0, :, start:start + k].permute(1, 0, 2, 3)
        assert torch.equal(sample[:k], frames) and torch.equal(sample[k:], frames)


# -- errors -------------------------------------------------------------------------------------------------------


def test_video_shorter_than_the_window_fails_clearly(pipes):
    free_noise(pipes)
    with pytest.raises(ValueError, match="context windows of 8 frames"):
        call(pipes[0], "a cat", frames=6)


def test_schedule_with_prompt_embeds_or_past_the_end_fails(pipes):
    no_free_noise(pipes)
    ours = pipes[0]
    with pytest.raises(ValueError, match="prompt schedule"):
        call(ours, None, prompt_embeds=torch.zeros(1, 77, 32), negative_prompt={0: "blurry"})
    with pytest.raises(ValueError, match="maximum frame index"):
        call(ours, {0: "a", FRAMES: "b"})


# -- prompt schedule syntax ---------------------------------------------------------------------------------------


def test_parse_prompt_schedule():
    assert parse_prompt_schedule("0: a cat sitting | 24: a cat jumping") == {0: "a cat sitting", 24: "a cat jumping"}
    # order, spaces, colons inside the prompt, a single segment
    assert parse_prompt_schedule(" 24 :b|0:  style: anime , a cat ", num_frames=25) == {0: "style: anime , a cat",
                                                                                        24: "b"}
    assert parse_prompt_schedule("0: a cat") == {0: "a cat"}
    assert list(parse_prompt_schedule("30: c | 0: a | 10: b")) == [0, 10, 30]
    # a schedule starting later holds its first prompt from frame 0
    assert parse_prompt_schedule("8: a | 24: b") == {0: "a", 8: "a", 24: "b"}


@pytest.mark.parametrize(
    "text, num_frames, message",
    [
        ("x: a cat", None, r"segment 1 .*whole number, got 'x'"),
        ("0: a | 1.5: b", None, r"segment 2 .*whole number, got '1.5'"),
        ("0: a | -3: b", None, r"must be 0 or more, got -3"),
        ("0: a | 4: b | 4: c", None, r"frame 4 is scheduled twice"),
        ("0: a | 16: b", 16, r"frame 16 is past the video's last frame \(num_frames=16: frames 0 to 15\)"),
        ("0: a | 8:  ", None, r"prompt for frame 8 is empty"),
        ("0: a | 8 b", None, r"segment 2 .*colon"),
        ("0: a |", None, r"segment 2 is empty"),
        ("   ", None, r"empty"),
        ("0: a", 0, r"num_frames"),
    ],
)
def test_parse_prompt_schedule_errors(text, num_frames, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt_schedule(text, num_frames=num_frames)


def test_prompt_schedule_from_mapping():
    assert prompt_schedule_from_mapping({"24": " a cat jumping ", "0": "a cat sitting"}) == {
        0: "a cat sitting", 24: "a cat jumping"}
    assert prompt_schedule_from_mapping({0: "a", 5: "b"}, num_frames=6) == {0: "a", 5: "b"}
    assert prompt_schedule_from_mapping({"4": "a"}) == {0: "a", 4: "a"}
    for bad, message in [
        ({"one": "a"}, "whole number"),
        ({"0": "a", "00": "b"}, "scheduled twice"),
        ({"0": 3}, "must be text"),
        ({True: "a"}, "whole number"),
        ({}, "empty"),
        (["0: a"], "mapping"),
    ]:
        with pytest.raises(ValueError, match=message):
            prompt_schedule_from_mapping(bad)
    with pytest.raises(ValueError, match="past the video's last frame"):
        prompt_schedule_from_mapping({"0": "a", "8": "b"}, num_frames=8)


def test_describe_schedule_round_trips():
    schedule = {24: "a cat  jumping", 0: "a cat sitting"}
    text = describe_schedule(schedule)
    assert text == "0: a cat sitting | 24: a cat jumping"
    assert parse_prompt_schedule(text) == {0: "a cat sitting", 24: "a cat jumping"}


def test_is_prompt_schedule():
    assert is_prompt_schedule("0: a cat | 8: a dog") and is_prompt_schedule(" 12 : a dog")
    assert not is_prompt_schedule("a cat: sitting") and not is_prompt_schedule("3 cats: a photo")
    assert not is_prompt_schedule("1920s: a photo")


# -- context windows ----------------------------------------------------------------------------------------------


def test_context_settings():
    assert context_settings(16, 32) is None  # fits: no windows unless asked
    assert context_settings(32, 32) is None
    assert context_settings(40, 32) == (16, 4)  # above the adapter's window: diffusers' defaults
    assert context_settings(64, 16) == (16, 4)
    assert context_settings(20, 8) == (8, 4)  # the default length never exceeds the adapter's window
    assert context_settings(20, 2) == (2, 2)  # ... and the default stride never the length
    assert context_settings(40, 32, context_length=24, context_stride=8) == (24, 8)
    assert context_settings(20, 32, context_length=8) == (8, 4)  # asked within the limit
    assert context_settings(20, 32, context_stride=2) == (16, 2)
    assert context_settings(12, 32, context_stride=2) == (12, 2)


@pytest.mark.parametrize(
    "args, message",
    [
        ((40, 32, 48), "longer than the motion adapter's window of 32"),
        ((20, 32, 24), r"longer than the video \(num_frames=20\)"),
        ((40, 32, 16, 0), "context_stride must be at least 1"),
        ((40, 32, 16, 17), "context_stride 17 is longer than context_length 16"),
        ((40, 32, 0), "context_length must be at least 1"),
        ((40, 32, 2.5), "context_length must be a whole number"),
        ((0, 32), "num_frames must be at least 1"),
        ((40, 0), "max_frames must be at least 1"),
    ],
)
def test_context_settings_errors(args, message):
    with pytest.raises(ValueError, match=message):
        context_settings(*args)
