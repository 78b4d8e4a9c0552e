"""What diffusers users expect of every pipeline: step callbacks with tensor inputs, ``interrupt``, explicit
signatures, and presets taken from the registry."""

import inspect

import pytest
import torch
from runs import stock_pipeline, video_frames
from diffusers import AnimateDiffPipeline

from ivmixed import IVMixedAnimateDiffPipeline, IVMixedModelScopePipeline, IVMixedVideoCrafterPipeline
from ivmixed.registry import PIPELINES as SPECS
from ivmixed.sampler import IVMixedSettings, count_network_calls
from ivmixed.testing import VIDEO_LATENT_SIZE, save_tiny_checkpoints

CLASSES = {"Animatediff": IVMixedAnimateDiffPipeline, "ModelScope": IVMixedModelScopePipeline,
           "VideoCrafter": IVMixedVideoCrafterPipeline}
ALL_TENSORS = ["latents", "prompt_embeds", "negative_prompt_embeds"]
FRAMES, SIZE = 2, 64


@pytest.fixture(scope="module")
def modelscope_pipe(tmp_path_factory):
    pipe = IVMixedModelScopePipeline.from_checkpoints(
        **save_tiny_checkpoints(str(tmp_path_factory.mktemp("modelscope")), "ModelScope"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def animatediff_kwargs(**extra):
    latents = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    return dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                num_inference_steps=4, latents=latents, output_type="latent", **extra)


def test_animatediff_lists_the_stock_callback_tensors():
    assert AnimateDiffPipeline._callback_tensor_inputs == ALL_TENSORS
    assert IVMixedAnimateDiffPipeline._callback_tensor_inputs == ALL_TENSORS


def test_callback_reads_and_replaces_tensors_as_in_stock_animatediff(animatediff_pipe):
    def make_callback(log):
        def on_step(pipe, i, t, tensors):
            log.append({k: v.clone() for k, v in tensors.items()})
            if i == 0:  # later steps must use the replaced embeddings and latents
                return {"latents": tensors["latents"] * 0.9, "prompt_embeds": tensors["prompt_embeds"].flip(1)}
            return {"latents": tensors["latents"] + 0.01 * i}
        return on_step

    ours_log, stock_log = [], []
    kwargs = animatediff_kwargs(callback_on_step_end_tensor_inputs=ALL_TENSORS)
    ours = animatediff_pipe(iv_mixed=False, callback_on_step_end=make_callback(ours_log), **kwargs)
    stock = stock_pipeline(animatediff_pipe, AnimateDiffPipeline)(callback_on_step_end=make_callback(stock_log),
                                                                  **kwargs)
    assert torch.equal(ours.frames, video_frames(stock))
    assert len(ours_log) == len(stock_log) == 4
    for mine, theirs in zip(ours_log, stock_log):
        assert mine.keys() == theirs.keys() == set(ALL_TENSORS)
        assert all(torch.equal(mine[k], theirs[k]) for k in ALL_TENSORS)
    # the replacement did change the result
    plain = animatediff_pipe(iv_mixed=False, **animatediff_kwargs())
    assert not torch.allclose(plain.frames, ours.frames)


def test_interrupt_ends_the_loop_as_in_stock_animatediff(animatediff_pipe):
    def stop_after_step_1(pipe, i, t, tensors):
        if i == 1:
            pipe._interrupt = True
        return {}

    ours = animatediff_pipe(iv_mixed=False, callback_on_step_end=stop_after_step_1, **animatediff_kwargs())
    stock = stock_pipeline(animatediff_pipe, AnimateDiffPipeline)(callback_on_step_end=stop_after_step_1,
                                                                  **animatediff_kwargs())
    assert animatediff_pipe.interrupt
    assert torch.equal(ours.frames, video_frames(stock))
    assert ours.network_calls == {"video": 2, "image": 0}
    # with IV-mixed on, two zigzag steps (image model each) and their main steps, then nothing
    mixed = animatediff_pipe(callback_on_step_end=stop_after_step_1, **animatediff_kwargs())
    assert mixed.network_calls == {"video": 2 * 3, "image": 2 * 2}
    # a new call starts with interrupt cleared
    assert animatediff_pipe(iv_mixed=False, **animatediff_kwargs()).network_calls == {"video": 4, "image": 0}


def test_interrupt_on_a_text_to_video_pipeline(modelscope_pipe):
    def stop_at_once(pipe, i, t, tensors):
        pipe._interrupt = True

    out = modelscope_pipe("a red fox", num_frames=FRAMES, num_inference_steps=3, output_type="latent",
                          callback_on_step_end=stop_at_once)
    assert modelscope_pipe.interrupt
    assert out.network_calls == {"video": 3, "image": 2}


def test_replaced_prompt_embeds_drive_the_later_video_steps(modelscope_pipe):
    """With IV-mixed off: step 0 on the prompt's embeddings, then the replacement's, written out by hand."""
    pipe = modelscope_pipe
    pos_a, neg = pipe.encode_prompt("a red fox", "cpu", 1, True, "blurry")
    pos_b, _ = pipe.encode_prompt("a blue car", "cpu", 1, True, "blurry")
    embeds_a, embeds_b = torch.cat([neg, pos_a]), torch.cat([neg, pos_b])
    side = VIDEO_LATENT_SIZE
    latents = torch.randn(1, 4, FRAMES, side, side, generator=torch.Generator().manual_seed(4))
    seen = []

    def swap(p, i, t, tensors):
        seen.append(tensors["prompt_embeds"])
        return {"prompt_embeds": embeds_b} if i == 0 else None

    out = pipe("a red fox", negative_prompt="blurry", num_frames=FRAMES, num_inference_steps=3, guidance_scale=9.0,
               latents=latents.clone(), output_type="latent", iv_mixed=False, callback_on_step_end=swap,
               callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert torch.equal(seen[0], embeds_a) and torch.equal(seen[1], embeds_b)

    sched = pipe.scheduler
    sched.set_timesteps(3)
    x = latents.clone()
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            embeds = embeds_a if i == 0 else embeds_b
            u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample.chunk(2)
            x = sched.step(u + 9.0 * (c - u), t, x).prev_sample
    assert torch.equal(out.frames, x)


def test_animatediff_image_unet_follows_replaced_prompt_embeds(animatediff_pipe):
    seen = []
    hook = animatediff_pipe.image_unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    replacement = {}

    def swap(pipe, i, t, tensors):
        if i == 0:
            replacement["embeds"] = tensors["prompt_embeds"] * 0.5
            return {"prompt_embeds": replacement["embeds"]}

    try:
        animatediff_pipe(num_inference_steps=2, callback_on_step_end=swap,
                         callback_on_step_end_tensor_inputs=["prompt_embeds"],
                         **{k: v for k, v in animatediff_kwargs().items() if k != "num_inference_steps"})
    finally:
        hook.remove()
    assert len(seen) == 4  # moves 1 and 3 of two zigzag steps
    assert not torch.equal(seen[2], seen[0]) and torch.equal(seen[2], replacement["embeds"])


@pytest.mark.parametrize("name", list(CLASSES))
def test_unknown_callback_tensor_is_refused(name, animatediff_pipe, modelscope_pipe):
    pipe = animatediff_pipe if name == "Animatediff" else modelscope_pipe
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe("a horse", num_frames=FRAMES, num_inference_steps=2, callback_on_step_end=lambda *a: {},
             callback_on_step_end_tensor_inputs=["latents", "noise_pred"])


@pytest.mark.parametrize("name", list(CLASSES))
def test_signatures_are_explicit_and_presets_come_from_the_registry(name):
    cls, spec = CLASSES[name], SPECS[name]
    params = inspect.signature(cls.__call__).parameters
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
    assert params["zz"].default is None and cls.default_zz == spec.defaults["zz"]
    assert ("fps" in params) == (name == "VideoCrafter")
    loader = inspect.signature(cls.from_checkpoints).parameters
    for checkpoint in spec.checkpoints:
        assert loader[checkpoint.key].default == checkpoint.default
    extra = {"dtype", "scheduler_settings", "image_model_config", "vae"}
    assert set(loader) - {c.key for c in spec.checkpoints} == extra | (
        {"video_model_config"} if spec.takes("video_model_config") else set())


def test_videocrafter_fps_is_a_call_argument(tmp_path):
    pipe = IVMixedVideoCrafterPipeline.from_checkpoints(**save_tiny_checkpoints(str(tmp_path), "VideoCrafter"))
    pipe.set_progress_bar_config(disable=True)
    assert inspect.signature(IVMixedVideoCrafterPipeline.__call__).parameters["fps"].default == \
        SPECS["VideoCrafter"].defaults["fps_condition"]
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["fps"]), with_kwargs=True)
    try:
        out = pipe("a red fox", num_frames=FRAMES, num_inference_steps=2, fps=8, output_type="latent")
    finally:
        hook.remove()
    assert seen == [8] * out.network_calls["video"] and not hasattr(pipe, "_fps")


def test_zz_none_is_the_preset(modelscope_pipe):
    kwargs = dict(prompt="a red fox", num_frames=FRAMES, num_inference_steps=3, output_type="latent")
    preset = modelscope_pipe(zz=None, **kwargs).network_calls
    assert preset == count_network_calls(3, IVMixedSettings(zz=SPECS["ModelScope"].defaults["zz"]))
    assert modelscope_pipe(zz=1, **kwargs).network_calls == count_network_calls(3, IVMixedSettings(zz=1)) != preset
