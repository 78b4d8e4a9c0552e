"""The benchmark's FLOP counter (benchmarks/flops.py) against an independent count, and the harness's run order."""

import math
import os
import sys

import pytest
import torch
from diffusers.models.attention_processor import Attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import flops  # noqa: E402

FRAMES = 4


class IndependentCount:
    """2 x multiply-accumulates of every convolution and linear layer, from their shapes, plus the attention
    products (scores q k^T and values p v) of every diffusers ``Attention``, from the shapes of its projected
    queries, keys and values and its head count."""

    def __init__(self, module: torch.nn.Module):
        self.layers = 0
        self.attention = 0
        self.handles = []
        for sub in module.modules():
            if isinstance(sub, (torch.nn.Conv2d, torch.nn.Conv3d)):
                self.handles.append(sub.register_forward_hook(self._conv))
            elif isinstance(sub, torch.nn.Linear):
                self.handles.append(sub.register_forward_hook(self._linear))
            elif isinstance(sub, Attention):
                self._watch_attention(sub)

    def _conv(self, conv, inputs, output):
        per_output = (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
        self.layers += 2 * output.numel() * per_output

    def _linear(self, linear, inputs, output):
        rows = output.numel() // linear.out_features  # (some callers pass the input by keyword)
        self.layers += 2 * rows * linear.in_features * linear.out_features

    def _watch_attention(self, attn: Attention):
        seen = {}

        def keep(name):
            def hook(_module, _inputs, output):
                seen[name] = tuple(output.shape)
            return hook

        for name in ("to_q", "to_k", "to_v"):
            self.handles.append(getattr(attn, name).register_forward_hook(keep(name)))

        def done(_module, _inputs, _output):
            (batch, lq, inner_q), (_, lk, _), (_, _, inner_v) = seen["to_q"], seen["to_k"], seen["to_v"]
            heads = attn.heads
            head_dim, value_dim = inner_q // heads, inner_v // heads
            scores = 2 * batch * heads * lq * lk * head_dim
            values = 2 * batch * heads * lq * lk * value_dim
            self.attention += scores + values
            seen.clear()

        self.handles.append(attn.register_forward_hook(done))

    @property
    def total(self) -> int:
        return self.layers + self.attention

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def animatediff():
    from ivmixed.testing import tiny_pipeline

    return tiny_pipeline("Animatediff")


def guided_call(pipe, model: str):
    """One guided call as the pipeline makes it (ivmixed.pipelines.common.guided_predictor: one UNet call on
    ``[x, x]`` with ``[uncond; cond]`` embeddings), on the video UNet or on the image UNet's per-frame view."""
    from ivmixed.pipelines.common import guided_predictor, per_frame_predictor

    torch.manual_seed(0)
    size = pipe.unet.config.sample_size
    latents = torch.randn(1, 4, FRAMES, size, size)
    # AnimateDiff's [uncond; cond] embeddings, one per frame (IVMixedAnimateDiffPipeline._video_embeds)
    embeds = torch.randn(2, 77, pipe.text_encoder.config.hidden_size).repeat_interleave(FRAMES, dim=0)
    if model == "video":
        predictor = guided_predictor(pipe.unet, embeds, with_uncond=True)
    else:
        predictor = per_frame_predictor(guided_predictor(pipe.image_unet, embeds, with_uncond=True))
    return lambda: predictor(latents, 981, 7.5)


@pytest.mark.parametrize("model", ["video", "image"])
def test_flop_count_of_a_tiny_guided_call_matches_an_independent_count(animatediff, model):
    module = animatediff.unet if model == "video" else animatediff.image_unet
    call = guided_call(animatediff, model)
    recorder = flops.CallRecorder()
    independent = IndependentCount(module)
    handle = recorder.attach(module, model)
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
        independent.remove()
    assert recorder.forward_calls() == {model: 1}  # a guided call is one UNet call over both halves
    (spec, calls), = recorder.signatures(model)
    batch = spec[0][0].shape[0]
    assert batch == 2 * (1 if model == "video" else FRAMES)
    # the attention products are a large share here: a counter that missed them would be far off
    assert independent.attention > 0.05 * independent.total and independent.layers > 0
    on_meta = flops.count_recorded(recorder, {model: module})[model]["flops"]
    on_cpu = flops.count_recorded(recorder, {model: module}, device=None)[model]["flops"]
    for counted in (on_meta, on_cpu):
        assert counted == pytest.approx(independent.total, rel=0.01), (counted, independent.layers,
                                                                       independent.attention)


def test_attention_on_the_cpu_is_counted():
    """On the CPU scaled-dot-product attention runs a kernel FlopCounterMode has no formula for."""
    q = torch.randn(2, 3, 16, 8)
    with flops.flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 3 * 16 * 16 * 8)


def test_calls_are_grouped_by_shape_not_by_timestep():
    recorder = flops.CallRecorder()
    for t in (999, 979, 959):
        recorder.record("video", (torch.zeros(2, 4, 8, 8), t), {"encoder_hidden_states": torch.zeros(2, 77, 32)})
    recorder.record("video", (torch.zeros(2, 4, 8, 8), torch.tensor(999)),
                    {"encoder_hidden_states": torch.zeros(2, 77, 32)})
    recorder.record("video", (torch.zeros(4, 4, 8, 8), 999), {"encoder_hidden_states": torch.zeros(4, 77, 32)})
    sizes = sorted(n for _, n in recorder.signatures("video"))
    assert sizes == [1, 1, 3] and recorder.forward_calls() == {"video": 5}
    spec, n = recorder.signatures("video")[0]
    args, kwargs = flops.materialise(spec, "meta")
    assert args[0].shape == (2, 4, 8, 8) and args[0].device.type == "meta" and args[1] == 999
    assert kwargs["encoder_hidden_states"].shape == (2, 77, 32)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H200", 989), ("NVIDIA H100 PCIe", 756),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA GeForce RTX 4090", 165), ("NVIDIA A10G", None),
    ("Tesla T4", None), ("", None), (None, None),
])
def test_peak_by_device_name(name, peak):
    assert flops.peak_tflops(name) == peak


def test_peak_choice_needs_a_known_gpu_and_half_precision():
    import bench

    args = bench.build_parser().parse_args(["--tiny"])
    assert bench.choose_peak(args, {"cpu": "x"}, "fp32")["tflops"] is None
    assert bench.choose_peak(args, {"gpu": "NVIDIA H100 80GB HBM3"}, "fp16")["tflops"] == 989
    assert bench.choose_peak(args, {"gpu": "NVIDIA H100 80GB HBM3"}, "fp32")["tflops"] is None
    assert bench.choose_peak(args, {"gpu": "Mystery GPU"}, "bf16")["tflops"] is None
    given = bench.build_parser().parse_args(["--tiny", "--peak-tflops", "50"])
    assert bench.choose_peak(given, {"cpu": "x"}, "fp32") == {"tflops": 50.0, "source": "--peak-tflops"}


def test_runs_alternate_the_variants():
    import bench

    order = bench.run_order(warmup=1, repeats=2, breakdown_repeats=1)
    assert order == [
        ("warmup", "standard"), ("warmup", "iv_mixed"),
        ("end_to_end", "standard"), ("end_to_end", "iv_mixed"),
        ("breakdown", "standard"), ("breakdown", "iv_mixed"),
        ("end_to_end", "standard"), ("end_to_end", "iv_mixed"),
    ]
    for kind in ("warmup", "end_to_end", "breakdown"):
        names = [name for k, name in order if k == kind]
        assert names == ["standard", "iv_mixed"] * (len(names) // 2)
    # the calls are recorded for counting in a warm-up run, else a breakdown run, else the first plain run
    assert bench.recording_runs(order) == {"standard": 0, "iv_mixed": 1}
    assert bench.recording_runs(bench.run_order(0, 1, 1)) == {"standard": 2, "iv_mixed": 3}
    assert bench.recording_runs(bench.run_order(0, 2, 0)) == {"standard": 0, "iv_mixed": 1}


# -- AnimateDiff-SDXL at full size, on meta ------------------------------------------------------------------

SDXL_FRAMES, SDXL_SIZE = 2, 1024  # pixels: the training size; on meta the size costs nothing, and the CPU loop is small


@pytest.fixture(scope="module")
def full_size_sdxl(tmp_path_factory):
    """The full-size AnimateDiff-SDXL architectures, every network on ``meta`` (built in seconds, no weights)."""
    import full_size_models

    return full_size_models.full_size_pipeline("AnimatediffSDXL", str(tmp_path_factory.mktemp("sdxl")),
                                               device="meta")


def test_full_size_sdxl_architectures_have_the_known_parameter_counts(full_size_sdxl):
    counts = {name: entry["parameters"] for name, entry in flops.parameter_counts(full_size_sdxl).items()}
    assert counts["image_unet"] == 2_567_463_684  # SDXL base 1.0's UNet
    assert counts["text_encoder"] == 123_060_480  # CLIP ViT-L/14's text tower (as SD 1.5's)
    assert counts["text_encoder_2"] == 694_659_840  # OpenCLIP ViT-bigG/14's text tower with its projection
    assert counts["vae"] == 83_653_863  # SD's VAE architecture
    # the motion UNet is the SDXL UNet plus the adapter's motion modules: nothing dropped, nothing doubled
    assert counts["unet"] == counts["image_unet"] + counts["motion_adapter"]
    assert type(full_size_sdxl.unet).__name__ == "UNetMotionModel"


def _sdxl_guided_call(model: str, frames: int, latent: int) -> str:
    """One guided call's inputs as the SDXL pipeline lays them out (in :func:`flops.describe`'s words): the
    ``[uncond; cond]`` halves in one batch, the prompt embeddings per frame (77 tokens, 768 + 1280 wide), the
    pooled embedding (1280) and six size numbers, one row per video for the motion UNet (which repeats them per
    frame itself) and one per frame for the image UNet."""
    rows = 2 if model == "video" else 2 * frames
    sample = f"2, 4, {frames}, {latent}, {latent}" if model == "video" else f"{2 * frames}, 4, {latent}, {latent}"
    return (f"float32[{sample}], int64[], {{encoder_hidden_states=float32[{2 * frames}, 77, 2048], "
            f"added_cond_kwargs={{text_embeds=float32[{rows}, 1280], time_ids=float32[{rows}, 6]}}}}")


def test_full_size_sdxl_run_is_counted_on_meta(full_size_sdxl):
    """flops.py's path for AnimatediffSDXL: the real IV-mixed loop around meta UNets (added_cond_kwargs
    included), each distinct call counted once on meta; the motion UNet's count equal to an independent one."""
    embeds, pooled = torch.zeros(1, 77, 2048), torch.zeros(1, 1280)
    call = dict(prompt_embeds=embeds, negative_prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=pooled, num_frames=SDXL_FRAMES, height=SDXL_SIZE, width=SDXL_SIZE,
                num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0))
    full_size_sdxl.set_progress_bar_config(disable=True)
    result = flops.run_flops(full_size_sdxl, call, variants=(("iv_mixed", True),), device="cpu")["iv_mixed"]
    calls = result["network_calls"]
    assert calls["image"] > 0 and calls["video"] + calls["image"] == 5 * 2  # five guided calls a step
    latent = SDXL_SIZE // 8
    for model in ("video", "image"):
        (signature,) = result["models"][model]["signatures"]  # one shape per UNet: counted once
        assert signature["inputs"] == _sdxl_guided_call(model, SDXL_FRAMES, latent)
        assert signature["calls"] == calls[model]
        assert result["models"][model]["flops"] == calls[model] * signature["flops_per_call"] > 0
    # the SDXL-specific network, counted independently (hooks on every layer, from shapes: they work on meta)
    meta = dict(device="meta")
    unet = full_size_sdxl.unet
    independent = IndependentCount(unet)
    try:
        with torch.no_grad():
            unet(torch.zeros(2, 4, SDXL_FRAMES, latent, latent, **meta), torch.tensor(981, **meta),
                 encoder_hidden_states=torch.zeros(2 * SDXL_FRAMES, 77, 2048, **meta),
                 added_cond_kwargs={"text_embeds": torch.zeros(2, 1280, **meta),
                                    "time_ids": torch.zeros(2, 6, **meta)})
    finally:
        independent.remove()
    # the attention products are a large share at this size: a counter that missed them would be far off
    assert independent.attention > 0.05 * independent.total and independent.layers > 0
    counted = result["models"]["video"]["signatures"][0]["flops_per_call"]
    assert counted == pytest.approx(independent.total, rel=0.01), (counted, independent.layers, independent.attention)


# -- a full-size SD 1.5 ControlNet under IV-mixed AnimateDiff, on meta ---------------------------------------

CN_FRAMES, CN_SIZE, CN_STEPS = 2, 128, 2  # pixels; on meta the size costs nothing, the CPU loop stays small


@pytest.fixture(scope="module")
def full_size_animatediff(tmp_path_factory):
    """The full-size AnimateDiff (SD 1.5) architectures, every network on ``meta``."""
    import full_size_models

    return full_size_models.full_size_pipeline("Animatediff", str(tmp_path_factory.mktemp("animatediff")),
                                               device="meta")


def test_full_size_controlnet_is_the_sd15_controlnet():
    """The written-out config is ControlNetModel.from_unet of the SD 1.5 UNet config, and its parameter count
    is that of the SD 1.5 ControlNets (about 361 M)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    import full_size_models

    net = full_size_models.full_size_controlnet(device="meta")
    with torch.device("meta"):
        derived = ControlNetModel.from_unet(UNet2DConditionModel(**full_size_models.SD15_UNET_CONFIG))
    mine = {k: v for k, v in net.config.items() if not k.startswith("_")}
    assert mine == {k: v for k, v in derived.config.items() if not k.startswith("_")}
    assert sum(p.numel() for p in net.parameters()) == 361_279_120
    assert sum(p.numel() for p in derived.parameters()) == 361_279_120


@pytest.mark.parametrize("count", [1, 2])
def test_full_size_controlnet_run_is_counted_on_meta(full_size_animatediff, count):
    """flops.py's --controlnets path: the real IV-mixed loop around meta UNets and ControlNets, every ControlNet
    forward recorded under the UNet it feeds, the calls equal to count_network_calls(..., controlnets=count), the
    same FLOPs per ControlNet call for video and image calls (the same rows), equal to an independent count."""
    import PIL.Image

    import full_size_models
    from ivmixed import count_network_calls
    from ivmixed.pipelines.control import controlnet_of
    from ivmixed.sampler import IVMixedSettings

    pipe = full_size_animatediff
    nets = [full_size_models.full_size_controlnet(device="meta", seed=s) for s in range(count)]
    pipe.register_modules(controlnet=controlnet_of(nets))
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.zeros(1, 77, 768)
    video = [PIL.Image.new("RGB", (CN_SIZE, CN_SIZE)) for _ in range(CN_FRAMES)]
    call = dict(prompt_embeds=embeds, negative_prompt_embeds=embeds, num_frames=CN_FRAMES, height=CN_SIZE,
                width=CN_SIZE, num_inference_steps=CN_STEPS, generator=torch.Generator("cpu").manual_seed(0),
                conditioning_frames=video if count == 1 else [video] * count)
    try:
        results = flops.run_flops(pipe, call, device="cpu")
    finally:
        pipe.register_modules(controlnet=None)
    settings = IVMixedSettings(zz=type(pipe).default_zz)
    latent, rows = CN_SIZE // 8, 2 * CN_FRAMES  # both halves, one row per frame
    per_call = {}
    for name, expected in (("standard", count_network_calls(CN_STEPS, None, controlnets=count)),
                           ("iv_mixed", count_network_calls(CN_STEPS, settings, controlnets=count))):
        result = results[name]
        assert result["network_calls"] == expected
        models = result["models"]
        assert expected["controlnet_image"] == (0 if name == "standard" else expected["image"] * count)
        for model in ("video", "image"):
            entry = models[f"controlnet_{model}"]
            assert entry["forward_calls"] == expected[f"controlnet_{model}"]
            assert sorted(sig["net"] for sig in entry["signatures"]) == (list(range(count)) if expected[model] else [])
            for sig in entry["signatures"]:
                assert flops.first_tensor(sig["inputs"]) == f"float32[{rows}, 4, {latent}, {latent}]"
                assert f"controlnet_cond=float32[{rows}, 3, {CN_SIZE}, {CN_SIZE}]" in sig["inputs"]
                assert sig["calls"] == expected[model] and sig["flops_per_call"] > 0
                per_call.setdefault(sig["net"], set()).add(sig["flops_per_call"])
            assert entry["flops"] == sum(s["calls"] * s["flops_per_call"] for s in entry["signatures"])
    assert results["iv_mixed"]["models"]["controlnet_image"]["forward_calls"] > 0
    (flops_per_call,) = set.union(*per_call.values())  # video and image calls, every net: one figure
    # the ControlNet counted independently (hooks on every layer, from shapes: they work on meta)
    net, meta = nets[0], dict(device="meta")
    independent = IndependentCount(net)
    try:
        with torch.no_grad():
            net(torch.zeros(rows, 4, latent, latent, **meta), torch.tensor(981, **meta),
                encoder_hidden_states=torch.zeros(rows, 77, 768, **meta),
                controlnet_cond=torch.zeros(rows, 3, CN_SIZE, CN_SIZE, **meta), conditioning_scale=1.0,
                guess_mode=False, return_dict=False)
    finally:
        independent.remove()
    assert independent.attention > 0 and independent.layers > 0
    assert flops_per_call == pytest.approx(independent.total, rel=0.01), (flops_per_call, independent.total)
