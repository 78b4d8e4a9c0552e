"""The pack's nodes in ComfyUI (imported in this process): each model's noise-prediction wrapper against diffusers'
UNets with the same weights, the standard node against ComfyUI's own DDIM sampler, the IV-mixed node against
``sample_iv_mixed`` run in the test on the same wrapped callables, call counts against the formula, progress, the
stop button and the refusals."""

import json
import math
from pathlib import Path

import pytest
import torch

from .comfy_env import PACK
from .models import image_checkpoint

KNOBS = dict(interval_begin=0, interval_end=-1, zz=1000, i_sigma_begin=4.0, i_sigma_end=4.0, v_sigma_begin=4.0,
             v_sigma_end=4.0, rho=7.0)
FRAMES, SIDE = 3, 8  # latents (frames, 4, 8, 8): 64x64 pixels
ADE_FRAMES = 4


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def conditioning(seed):
    """A positive and a negative CONDITIONING (CLIP-L-wide embeddings), without a text encoder."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 768, generator=g), {}]], [[torch.randn(1, 77, 768, generator=g), {}]]


@pytest.fixture(scope="module")
def ui(comfy):
    """ComfyUI in this process (the ``comfy`` fixture), under a name that leaves ``comfy`` to ComfyUI's package."""
    return comfy


@pytest.fixture(scope="module")
def sd15(ui, tiny_models):
    """Two tiny SD 1.5 MODELs from two files (the first, the session's image model, stands in for a video model
    without motion modules where a test needs no AnimateDiff) and their diffusers twins."""
    import comfy.sd

    first = tiny_models.image
    second = image_checkpoint(tiny_models.checkpoints, seed=7, name="ivmixed_tiny_image_2.safetensors")
    load = lambda built: comfy.sd.load_checkpoint_guess_config(str(built.path), output_vae=False,  # noqa: E731
                                                               output_clip=False)[0]
    return (load(first), first.unet), (load(second), second.unet)


@pytest.fixture(scope="module")
def animatediff(ui, tiny_models):
    """The tiny SD 1.5 checkpoint with ADE's motion model applied (Gen1 loader, beta schedule autoselect), and the
    diffusers twins: ``(MODEL, UNet2DConditionModel, MotionAdapter)``."""
    import comfy.sd

    video, motion = tiny_models.video, tiny_models.motion
    model = comfy.sd.load_checkpoint_guess_config(str(video.path), output_vae=False, output_clip=False)[0]
    (with_motion,) = comfy_node(ui, "ADE_AnimateDiffLoaderGen1", model=model, model_name=motion.name,
                                beta_schedule="autoselect")
    return with_motion, video.unet, motion.adapter


def comfy_node(ui, name, **inputs):
    with torch.inference_mode():  # as ComfyUI runs nodes (without it the video model's run takes 3x the memory)
        return ui.run_node(name, **inputs)


def latent(frames=FRAMES):
    return {"samples": torch.zeros(frames, 4, SIDE, SIDE)}


def inside_sampling(video_model, positive, negative, body, frames, seed=0):
    """``body(model_k, extra_args)`` run inside ComfyUI's sampling of ``video_model`` (where ADE injects its motion
    modules), as a KSAMPLER function; returns what ``body`` returned."""
    import comfy.samplers

    out = {}

    def function(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        out["value"] = body(model_k, extra_args)
        return x

    guider = comfy.samplers.CFGGuider(video_model)
    guider.set_conds(positive, negative)
    guider.set_cfg(1.0)
    sigmas = video_model.get_model_object("model_sampling").sigmas[[500, 0]].float()
    empty = torch.zeros(frames, 4, SIDE, SIDE)
    with torch.inference_mode():
        guider.sample(empty, empty, comfy.samplers.KSAMPLER(function), torch.cat([sigmas[:1], sigmas.new_zeros(1)]),
                      seed=seed)
    return out["value"]


def inside_image_session(image_model, positive, negative, body, frames):
    """``body(session)`` run with ``image_model`` prepared for sampling as the IV-mixed node prepares it."""
    from ivmixed.comfyui.sampling import ImageModel, ImageModelSession

    empty = torch.zeros(frames, 4, SIDE, SIDE)
    sigmas = image_model.get_model_object("model_sampling").sigmas[[500]].float()
    session = ImageModelSession(ImageModel(image_model, positive, negative), body)
    with torch.inference_mode():
        return session.sample(empty, empty, None, torch.cat([sigmas, sigmas.new_zeros(1)]), seed=0)


def diffusers_guided(unet, x, t, w, positive, negative):
    """``u + w (c - u)`` of a diffusers UNet on ``x`` (its own layout) at timestep ``t``."""
    cond, uncond = positive[0][0], negative[0][0]
    with torch.no_grad():
        frames = x.shape[0] if x.dim() == 4 else x.shape[2]  # (frames, c, h, w) or (1, c, frames, h, w)
        both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond]).repeat_interleave(
            frames, dim=0)).sample
    u, c = both.chunk(2)
    return u + w * (c - u)


POINTS = [(999, 7.5), (500, -4.0), (21, 1.0)]  # timesteps and weights: early, middle (an inversion), late


def test_image_wrapper_equals_diffusers_unet(sd15):
    (image, unet), _ = sd15
    positive, negative = conditioning(1)
    x = torch.randn(FRAMES, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(2))

    def predict(session):
        predictor = session.predictor()
        return [predictor(x, torch.tensor(t), w) for t, w in POINTS]

    got = inside_image_session(image, positive, negative, predict, FRAMES)
    for (t, w), eps in zip(POINTS, got):
        want = diffusers_guided(unet, x, t, w, positive, negative)
        assert relative(eps, want) < 1e-4, (t, w, relative(eps, want))


# ADE's motion modules, as the original AnimateDiff's, group-normalise each frame on its own; diffusers'
# (AnimateDiffTransformer3D) normalises the frames of a video together. With the same weights that alone moves the
# tiny video model's prediction by 2.5 to 3.7 % of its largest value (measured here), so the test compares with
# diffusers' UNetMotionModel whose temporal norms take one frame at a time, within the image model's 1e-4.
VIDEO_TOLERANCE = 1e-4


class PerFrameGroupNorm(torch.nn.Module):
    """A motion module's GroupNorm on ``(b, c, f, h, w)``, applied to each frame separately."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        b, c, f, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        return self.norm(frames).reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def motion_unet_with_per_frame_norms(unet, adapter):
    from diffusers import UNetMotionModel
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    motion_unet = UNetMotionModel.from_unet2d(unet, adapter).eval()
    modules = [m for m in motion_unet.modules() if isinstance(m, AnimateDiffTransformer3D)]
    for module in modules:
        module.norm = PerFrameGroupNorm(module.norm)
    assert len(modules) == 4 * 2 + 4 * 3  # two motion modules per down level, three per up level, no mid block
    return motion_unet


def test_video_wrapper_inside_animatediff_evolved_equals_diffusers_motion_unet(ui, animatediff):
    from ivmixed.comfyui.predictors import video_predictor

    video, unet, adapter = animatediff
    positive, negative = conditioning(3)
    x = torch.randn(ADE_FRAMES, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(4))

    def predict(model_k, extra_args):
        predictor = video_predictor(model_k, extra_args, model_k.inner_model.inner_model.model_sampling, {})
        return [predictor(x, torch.tensor(t), w) for t, w in POINTS]

    got = inside_sampling(video, positive, negative, predict, ADE_FRAMES)
    motion_unet = motion_unet_with_per_frame_norms(unet, adapter)
    x_video = x.permute(1, 0, 2, 3).unsqueeze(0)  # (1, c, frames, h, w)
    for (t, w), eps in zip(POINTS, got):
        want = diffusers_guided(motion_unet, x_video, t, w, positive, negative)[0].permute(1, 0, 2, 3)
        assert relative(eps, want) < VIDEO_TOLERANCE, (t, w, relative(eps, want))
    # diffusers' own norms (over all the frames together) differ by the percent above
    for module in motion_unet.modules():
        if isinstance(getattr(module, "norm", None), PerFrameGroupNorm):
            module.norm = module.norm.norm
    stock = diffusers_guided(motion_unet, x_video, POINTS[0][0], POINTS[0][1], positive, negative)[0]
    del motion_unet  # 4 GB of weights
    assert 1e-2 < relative(got[0], stock.permute(1, 0, 2, 3)) < 1e-1
    # the motion modules take part: the same UNet without them predicts otherwise
    plain = diffusers_guided(unet, x, POINTS[0][0], POINTS[0][1], positive, negative)
    assert relative(got[0], plain) > 1e-2


def test_each_model_is_scheduled_by_its_own_sigmas(sd15, animatediff):
    """ADE schedules AnimateDiff as sqrt_linear (diffusers' linear betas), the SD 1.5 image model keeps
    scaled_linear; the zigzag's alphas are read from each model."""
    from diffusers import DDIMScheduler

    from ivmixed.comfyui.schedule import alphas_cumprod

    (image, _), _ = sd15
    video = animatediff[0]
    for model, beta_schedule in ((video, "linear"), (image, "scaled_linear")):
        want = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=beta_schedule).alphas_cumprod.double()
        got = alphas_cumprod(model.get_model_object("model_sampling"))
        assert (got - want).abs().max() < 1e-6, beta_schedule


def ksampler_ddim(ui, model, positive, negative, seed, steps, cfg, frames=FRAMES):
    import nodes

    return nodes.common_ksampler(model, seed, steps, cfg, "ddim", "ddim_uniform", positive, negative,
                                 latent(frames))[0]["samples"]


@pytest.mark.parametrize("steps", [4, 10])
def test_standard_node_equals_comfyuis_ddim_sampler(ui, sd15, steps):
    (video, _), _ = sd15
    positive, negative = conditioning(5)
    (got,) = comfy_node(ui, "IVMixedStandardSampler", video_model=video, video_positive=positive,
                        video_negative=negative, latent_image=latent(), seed=11, steps=steps, guidance_scale=7.5)
    want = ksampler_ddim(ui, video, positive, negative, 11, steps, 7.5)
    assert got["samples"].shape == want.shape
    assert relative(got["samples"], want) < 1e-5, relative(got["samples"], want)


def test_standard_node_equals_comfyuis_ddim_sampler_under_animatediff_evolved(ui, animatediff):
    video = animatediff[0]
    positive, negative = conditioning(6)
    (got,) = comfy_node(ui, "IVMixedStandardSampler", video_model=video, video_positive=positive,
                        video_negative=negative, latent_image=latent(ADE_FRAMES), seed=12, steps=3,
                        guidance_scale=7.5)
    want = ksampler_ddim(ui, video, positive, negative, 12, 3, 7.5, ADE_FRAMES)
    assert relative(got["samples"], want) < 1e-5, relative(got["samples"], want)


class UnetCalls:
    """Counts a MODEL's guided calls (one conditional row group per call) through ComfyUI's UNet wrapper hook, and
    can press the stop button after a number of them."""

    def __init__(self, model, stop_after=None):
        self.count, self.stop_after = 0, stop_after
        self.model = model.clone()
        self.model.set_model_unet_function_wrapper(self)

    def __call__(self, apply_model, args):
        import comfy.model_management

        self.count += args["cond_or_uncond"].count(0)
        out = apply_model(args["input"], args["timestep"], **args["c"])
        if self.stop_after is not None and self.count >= self.stop_after:
            comfy.model_management.interrupt_current_processing(True)  # pressed while this call ran
        return out


def iv_mixed_node(ui, video, image, positive, negative, image_positive, image_negative, frames=FRAMES, seed=13,
                  steps=4, guidance_scale=7.5, reference_compat=False, **knobs):
    (out,) = comfy_node(ui, "IVMixedSampler", video_model=video, image_model=image, video_positive=positive,
                        video_negative=negative, image_positive=image_positive, image_negative=image_negative,
                        latent_image=latent(frames), seed=seed, steps=steps, guidance_scale=guidance_scale,
                        reference_compat=reference_compat, **{**KNOBS, **knobs})
    return out["samples"]


@pytest.mark.parametrize("knobs", [{}, {"zz": 3, "interval_begin": 1}, {"zz": 1}])
def test_call_counts_per_model_equal_the_formula(ui, sd15, knobs):
    from ivmixed.comfyui.nodes import iv_mixed_settings
    from ivmixed.sampler import count_network_calls

    (video, _), (image, _) = sd15
    video_calls, image_calls = UnetCalls(video), UnetCalls(image)
    positive, negative = conditioning(7)
    iv_mixed_node(ui, video_calls.model, image_calls.model, positive, negative, positive, negative, steps=5,
                  **knobs)
    want = count_network_calls(5, iv_mixed_settings(**{**KNOBS, **knobs}))
    assert {"video": video_calls.count, "image": image_calls.count} == want


def test_call_counts_under_animatediff_evolved(ui, sd15, animatediff):
    from ivmixed.comfyui.nodes import iv_mixed_settings
    from ivmixed.sampler import count_network_calls

    (image, _), _ = sd15
    video_calls, image_calls = UnetCalls(animatediff[0]), UnetCalls(image)
    positive, negative = conditioning(8)
    out = iv_mixed_node(ui, video_calls.model, image_calls.model, positive, negative, positive, negative,
                        frames=ADE_FRAMES, steps=2)
    assert {"video": video_calls.count, "image": image_calls.count} == count_network_calls(2, iv_mixed_settings(**KNOBS))
    assert torch.isfinite(out).all()


def reference_run(ui, video, image, positive, negative, image_positive, image_negative, frames, seed, steps,
                  guidance, settings, compat):
    """The IV-mixed latent computed here: ComfyUI's noise for the seed at the first sigma, the node's wrapped
    callables, a DDIM scheduler and the alphas of each model built from its sigmas in this test, and
    ``sample_iv_mixed``; then ComfyUI's latent scaling out."""
    import comfy.sample
    from diffusers import DDIMScheduler

    from ivmixed.comfyui.predictors import video_predictor
    from ivmixed.sampler import sample_iv_mixed

    def abar(model):
        sigmas = model.get_model_object("model_sampling").sigmas.double()
        return 1.0 / (1.0 + sigmas ** 2)

    video_abar, image_abar = abar(video), abar(image)
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading")
    scheduler.alphas_cumprod = video_abar.float()
    scheduler.set_timesteps(steps)
    t0 = int(scheduler.timesteps[0])
    assert scheduler.timesteps.tolist() == list(range(1 + (steps - 1) * (1000 // steps), 0, -(1000 // steps)))
    noise = comfy.sample.prepare_noise(torch.zeros(frames, 4, SIDE, SIDE), seed)
    # ComfyUI starts from noise * sigma (not at the largest sigma); in variance-preserving terms:
    x = noise * math.sqrt(1.0 - video_abar[t0].item())

    def body(session):
        image_model = session.predictor()

        def run(model_k, extra_args):
            video_model = video_predictor(model_k, extra_args, model_k.inner_model.inner_model.model_sampling, {})
            return sample_iv_mixed(video_model, image_model, x.clone(), scheduler, guidance, settings,
                                   progress_bar=lambda n: __import__("tqdm").tqdm(total=n, disable=True),
                                   reference_compat=compat, image_alphas_cumprod=image_abar)

        return inside_sampling(video, positive, negative, run, frames, seed)

    out = inside_image_session(image, image_positive, image_negative, body, frames)
    return video.model.process_latent_out(out)


@pytest.mark.parametrize("case", ["defaults", "mixed", "reference_compat"])
def test_iv_mixed_node_equals_sample_iv_mixed_on_the_same_callables(ui, sd15, case):
    from ivmixed.comfyui.nodes import REFERENCE_COMPAT, iv_mixed_settings

    (video, _), (image, _) = sd15
    knobs = {"defaults": {}, "mixed": dict(zz=3, interval_begin=1, interval_end=3, i_sigma_begin=2.0, i_sigma_end=6.0,
                                           v_sigma_begin=5.0, rho=3.0),
             "reference_compat": {}}[case]
    compat = REFERENCE_COMPAT if case == "reference_compat" else None
    positive, negative = conditioning(9)
    image_positive, image_negative = conditioning(10)
    got = iv_mixed_node(ui, video, image, positive, negative, image_positive, image_negative, seed=21, steps=5,
                        reference_compat=compat is not None, **knobs)
    want = reference_run(ui, video, image, positive, negative, image_positive, image_negative, FRAMES, 21, 5, 7.5,
                         iv_mixed_settings(**{**KNOBS, **knobs}), compat)
    assert relative(got, want) < 1e-5, relative(got, want)
    standard = ksampler_ddim(ui, video, positive, negative, 21, 5, 7.5)
    assert relative(got, standard) > 1e-2  # the zigzag changed the sample


def test_iv_mixed_node_under_animatediff_evolved_equals_sample_iv_mixed(ui, sd15, animatediff):
    from ivmixed.comfyui.nodes import iv_mixed_settings

    (image, _), _ = sd15
    video = animatediff[0]
    positive, negative = conditioning(11)
    got = iv_mixed_node(ui, video, image, positive, negative, positive, negative, frames=ADE_FRAMES, seed=22,
                        steps=2)
    want = reference_run(ui, video, image, positive, negative, positive, negative, ADE_FRAMES, 22, 2, 7.5,
                         iv_mixed_settings(**KNOBS), None)
    # measured 1.5e-5: float32 rounding of the starting latent (ComfyUI's sigma against this test's alphas), through
    # the 640 M-parameter UNet
    assert relative(got, want) < 1e-4, relative(got, want)


def test_progress_bar_moves_once_per_step(ui, sd15):
    import comfy.utils

    (video, _), (image, _) = sd15
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        positive, negative = conditioning(12)
        iv_mixed_node(ui, video, image, positive, negative, positive, negative, steps=4)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("which,stop_after", [("video", 3), ("image", 2)])
def test_stop_button_ends_the_run_at_the_next_model_call(ui, sd15, which, stop_after):
    import comfy.model_management

    (video, _), (image, _) = sd15
    calls = {"video": UnetCalls(video), "image": UnetCalls(image)}
    calls[which].stop_after = stop_after
    positive, negative = conditioning(13)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            iv_mixed_node(ui, calls["video"].model, calls["image"].model, positive, negative, positive, negative,
                          steps=4)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert calls[which].count == stop_after
    # no model ran after the press: the video model's calls before the image model's second are 2 (then it stopped)
    other = "image" if which == "video" else "video"
    assert calls[other].count == {"video": 1, "image": 2}[other]


def test_refuses_the_video_models_own_checkpoint_as_image_model(ui, animatediff):
    video = animatediff[0]
    positive, negative = conditioning(14)
    for image in (video, video.clone()):
        with pytest.raises(ValueError, match=r"^the image model is the video model's own \(one loaded checkpoint\)"):
            iv_mixed_node(ui, video, image, positive, negative, positive, negative, frames=ADE_FRAMES, steps=2)


def test_refuses_an_image_model_of_another_family(ui, sd15):
    import copy

    import comfy.latent_formats

    (video, _), (image, _) = sd15
    sdxl = image.clone()
    sdxl.model = copy.copy(image.model)
    sdxl.model.latent_format = comfy.latent_formats.SDXL()
    positive, negative = conditioning(15)
    with pytest.raises(ValueError, match=r"^the image model is SDXL but the video model is SD15: IV-mixed sampling "
                                         r"needs an image model of the video model's family \(SD15\)$"):
        iv_mixed_node(ui, video, sdxl, positive, negative, positive, negative)


def test_refuses_a_latent_with_a_noise_mask(ui, sd15):
    (video, _), _ = sd15
    positive, negative = conditioning(16)
    masked = {**latent(), "noise_mask": torch.ones(1, SIDE * 8, SIDE * 8)}
    with pytest.raises(ValueError, match="noise mask"):
        comfy_node(ui, "IVMixedStandardSampler", video_model=video, video_positive=positive,
                   video_negative=negative, latent_image=masked, seed=1, steps=2, guidance_scale=7.5)


@pytest.mark.parametrize("values,message", [
    (dict(steps=4, interval_begin=5), "interval_begin must be between 0 and 3 (steps - 1), got 5"),
    (dict(steps=4, interval_end=4), "interval_end must be between 0 and 3 (steps - 1), got 4"),
    (dict(steps=4, interval_begin=3, interval_end=1), "interval_begin (3) must not be after interval_end (1)"),
    (dict(zz=0), "zz must be at least 1, got 0"),
    (dict(rho=0.0), "rho must be a positive number, got 0.0"),
    (dict(i_sigma_end=float("inf")), "i_sigma_end must be a finite number >= 0, got inf"),
    (dict(steps=51, reference_compat=True), "reference_compat supports at most 50 inference steps"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0, got nan"),
    (dict(seed=2 ** 64), "seed must be a whole number from 0 to 2**64 - 1"),
])
def test_settings_the_command_line_refuses_fail_validation_with_its_message(ui, values, message):
    from ivmixed.comfyui.nodes import IVMixedSampler

    given = {"seed": 1, "steps": 10, "guidance_scale": 7.5, "reference_compat": False, **KNOBS, **values}
    answer = IVMixedSampler.VALIDATE_INPUTS(**given)
    assert isinstance(answer, str) and answer.startswith(message) and "\n" not in answer, answer
    assert IVMixedSampler.VALIDATE_INPUTS(**{**given, **{k: v for k, v in KNOBS.items()}, "seed": 1, "steps": 10,
                                             "guidance_scale": 7.5, "reference_compat": False}) is True


def test_queued_workflow_with_a_bad_knob_is_refused_before_anything_runs(ui):
    """ComfyUI's own validation of a queued prompt answers with the knob's message, so no model loads."""
    import asyncio

    import execution

    workflow = json.loads((PACK / "example_workflows" / "ivmixed_animatediff_api.json").read_text())
    sampler = next(node for node in workflow.values() if node["class_type"] == "IVMixedSampler")
    sampler["inputs"]["zz"] = 0
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", workflow, None))
    assert not valid
    reasons = [e["details"] for errors in node_errors.values() for e in errors["errors"]]
    assert any("zz must be at least 1, got 0" in r for r in reasons), node_errors


def test_knob_inputs_follow_the_settings_and_say_which_way_they_move(ui):
    from ivmixed.app.fields import DIRECTIONS, knob_info
    from ivmixed.comfyui.nodes import IVMixedSampler
    from ivmixed.config import SETTINGS

    required = IVMixedSampler.INPUT_TYPES()["required"]
    for name in KNOBS:
        kind, options = required[name]
        default = SETTINGS[name].default
        assert options["default"] == (-1 if default is None else default), name
        assert options["tooltip"].startswith(knob_info(name, str)), name
        # which way it moves quality against coherence: the web app's sentence, or the help's own words (zz)
        assert DIRECTIONS[name] in options["tooltip"] or "favours coherence" in options["tooltip"], name
    assert required["reference_compat"][1]["default"] is False
    assert required["steps"][1]["default"] == SETTINGS["inference_step"].default
    assert required["seed"][1]["default"] == SETTINGS["seed"].default


def test_pack_registers_the_nodes_and_carries_the_package_version(ui):
    import tomllib

    import nodes

    import ivmixed

    assert {"IVMixedSampler", "IVMixedStandardSampler"} <= set(nodes.NODE_CLASS_MAPPINGS)
    assert ui.loaded["ComfyUI-IVMixed"] is True
    meta = tomllib.loads((PACK / "pyproject.toml").read_text())
    assert meta["project"]["version"] == ivmixed.__version__
    assert Path(nodes.NODE_CLASS_MAPPINGS["IVMixedSampler"].__module__.replace(".", "/")).parts[:2] == (
        "ivmixed", "comfyui")
