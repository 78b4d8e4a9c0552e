"""The fast paths: each opt-in knob keeps the outputs of the default path; the decode guard's fault paths."""

import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput

from ivmixed import IVMixedAnimateDiffPipeline, IVMixedModelScopePipeline
from ivmixed.performance import apply_performance_options, attention_processors
from ivmixed.pipelines import NonFiniteLatentsError
from ivmixed.testing import VIDEO_LATENT_SIZE, save_tiny_checkpoints

FRAMES, SIZE = 3, 64  # an odd frame count, so a batch size of 2 leaves a remainder


def fresh_animatediff(paths):
    """A pipeline of its own, for tests that change its modules."""
    pipe = IVMixedAnimateDiffPipeline.from_checkpoints(**paths)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def modelscope_pipe(tmp_path_factory):
    pipe = IVMixedModelScopePipeline.from_checkpoints(
        **save_tiny_checkpoints(str(tmp_path_factory.mktemp("modelscope-perf")), "ModelScope")
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def animatediff_call(pipe, **kwargs):
    latents = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    args = dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
                num_inference_steps=2, output_type="latent", latents=latents)
    return pipe(**{**args, **kwargs})


def count_forward_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


# -- image_batch_size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_batch_size", [1, 2])
def test_image_batch_size_equals_all_frames_in_one_call(animatediff_pipe, image_batch_size):
    whole = animatediff_call(animatediff_pipe)
    calls, handle = count_forward_calls(animatediff_pipe.image_unet)
    try:
        batched = animatediff_call(animatediff_pipe, image_batch_size=image_batch_size)
    finally:
        handle.remove()
    assert torch.allclose(batched.frames, whole.frames, rtol=1e-4, atol=1e-4), (batched.frames - whole.frames).abs().max()
    assert batched.network_calls == whole.network_calls == {"video": 6, "image": 4}
    # every guided image call is split into ceil(frames / image_batch_size) UNet calls
    assert len(calls) == 4 * -(-FRAMES // image_batch_size)


def test_image_batch_size_on_a_resizing_text_to_video_pipeline(modelscope_pipe):
    kwargs = dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, num_inference_steps=2,
                  output_type="latent", zz=1000)
    shape = (1, 4, FRAMES, VIDEO_LATENT_SIZE, VIDEO_LATENT_SIZE)
    whole = modelscope_pipe(latents=torch.randn(shape, generator=torch.Generator().manual_seed(0)), **kwargs)
    batched = modelscope_pipe(latents=torch.randn(shape, generator=torch.Generator().manual_seed(0)),
                              image_batch_size=2, **kwargs)
    assert torch.allclose(batched.frames, whole.frames, rtol=1e-4, atol=1e-4), (batched.frames - whole.frames).abs().max()


def test_image_batch_size_must_be_positive(animatediff_pipe):
    with pytest.raises(ValueError, match="image_batch_size"):
        animatediff_call(animatediff_pipe, image_batch_size=0)


# -- the decode guard -------------------------------------------------------------------------------------------


def nan_at_last_step(pipe, i, t, tensors):
    latents = tensors["latents"]
    if i == pipe.num_timesteps - 1:
        latents = latents.clone()
        latents[0, 0, 0, 0, 0] = float("nan")
    return {"latents": latents}


def test_nonfinite_latents_fail_before_decoding(animatediff_pipe, monkeypatch):
    decoded = []
    monkeypatch.setattr(animatediff_pipe.vae, "decode", lambda *a, **k: decoded.append(1))
    with pytest.raises(NonFiniteLatentsError, match="--dtype fp32"):
        animatediff_call(animatediff_pipe, output_type="np", callback_on_step_end=nan_at_last_step)
    assert decoded == []


def test_nonfinite_latents_fail_on_text_to_video_pipelines(modelscope_pipe):
    with pytest.raises(NonFiniteLatentsError, match="guidance"):
        modelscope_pipe(prompt="a horse", num_frames=2, num_inference_steps=2, output_type="np",
                        callback_on_step_end=nan_at_last_step)


def overflowing_in(vae, dtypes):
    """``vae.decode`` that returns infinite pixels while the VAE's dtype is one of ``dtypes`` (as fp16 VAEs do
    on some latents), and decodes normally otherwise."""
    decode = vae.decode

    def faulty(z, *args, **kwargs):
        if vae.dtype in dtypes:
            n, _, h, w = z.shape
            return DecoderOutput(sample=torch.full((n, 3, 8 * h, 8 * w), float("inf"), dtype=vae.dtype))
        return decode(z, *args, **kwargs)

    return faulty


def test_fp16_vae_with_nonfinite_pixels_decodes_again_in_fp32(animatediff_paths, monkeypatch):
    pipe = fresh_animatediff(animatediff_paths)
    pipe.vae.to(torch.float16).to(torch.float32)  # the weights the float32 retry will see
    expected = animatediff_call(pipe, output_type="np").frames
    pipe.vae.to(torch.float16)
    monkeypatch.setattr(pipe.vae, "decode", overflowing_in(pipe.vae, (torch.float16,)))
    got = animatediff_call(pipe, output_type="np").frames
    assert pipe.vae.dtype == torch.float16  # put back after the retry
    assert got.shape == expected.shape and abs(got - expected).max() < 1e-5


def test_vae_nonfinite_in_fp32_too_raises(animatediff_paths, monkeypatch):
    pipe = fresh_animatediff(animatediff_paths)
    pipe.vae.to(torch.float16)
    monkeypatch.setattr(pipe.vae, "decode", overflowing_in(pipe.vae, (torch.float16, torch.float32)))
    with pytest.raises(NonFiniteLatentsError, match="also tried float32"):
        animatediff_call(pipe, output_type="np")
    assert pipe.vae.dtype == torch.float16


# -- apply_performance_options -------------------------------------------------------------------------------


def test_offload_needs_cuda(animatediff_pipe):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for mode in ("model", "sequential"):
        with pytest.raises(ValueError, match="offload='none'"):
            apply_performance_options(animatediff_pipe, device="cpu", offload=mode)


def test_unknown_offload_mode(animatediff_pipe):
    with pytest.raises(ValueError, match="none, model, model-swap, sequential"):
        apply_performance_options(animatediff_pipe, device="cpu", offload="disk")


def test_every_attention_is_pytorch_sdpa(animatediff_pipe):
    found = attention_processors(animatediff_pipe)
    assert found == {"unet": ["AttnProcessor2_0"], "image_unet": ["AttnProcessor2_0"], "vae": ["AttnProcessor2_0"],
                     "text_encoder": ["sdpa"]}
    assert any("motion_modules" in name for name in animatediff_pipe.unet.attn_processors)


def test_channels_last_and_vae_slicing_and_tiling_keep_the_output(animatediff_paths):
    pipe = fresh_animatediff(animatediff_paths)
    expected = animatediff_call(pipe, output_type="np").frames
    record = apply_performance_options(pipe, device="cpu", channels_last=True, vae_slicing=True, vae_tiling=True)
    assert record["channels_last_convs"]["unet"] > 0 and record["channels_last_convs"]["image_unet"] > 0
    assert pipe.image_unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    got = animatediff_call(pipe, output_type="np").frames
    assert abs(got - expected).max() < 1e-4


def test_channels_last_leaves_3d_convolutions_alone(modelscope_pipe):
    record = apply_performance_options(modelscope_pipe, device="cpu", channels_last=True)
    assert record["channels_last_convs"]["unet"] > 0
    conv3d = [m for m in modelscope_pipe.unet.modules() if isinstance(m, torch.nn.Conv3d)]
    assert conv3d and all(m.weight.is_contiguous() for m in conv3d)
    modelscope_pipe(prompt="a horse", num_frames=2, num_inference_steps=1, output_type="latent")


def test_compile_wraps_both_unets(animatediff_paths):
    """Wiring only: compiling the tiny UNets costs about a minute of CPU (see docs/BENCHMARKS.md)."""
    pipe = fresh_animatediff(animatediff_paths)
    record = apply_performance_options(pipe, device="cpu", compile=True)
    assert record["compiled"] == ["image_unet", "unet"]
    for name in ("unet", "image_unet"):
        module = getattr(pipe, name)
        assert isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
        assert module.config.sample_size == module._orig_mod.config.sample_size  # the pipeline reads configs through it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="model offload needs a CUDA GPU")
def test_model_offload_keeps_the_output(animatediff_paths):
    plain, offloaded = fresh_animatediff(animatediff_paths), fresh_animatediff(animatediff_paths)
    apply_performance_options(plain, device="cuda")
    apply_performance_options(offloaded, device="cuda", offload="model")
    expected, got = animatediff_call(plain).frames, animatediff_call(offloaded).frames
    assert torch.allclose(got.cpu(), expected.cpu(), rtol=1e-4, atol=1e-4)
