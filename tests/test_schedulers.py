"""Main-step schedulers by name: what make_scheduler builds, stock parity with each, and the zigzag on top of each
(its stride, its call counts, the Euler family's variance-preserving conversion, and the schedules it refuses)."""

import collections
import inspect
import json
import math
import pathlib

import pytest
import torch
from diffusers import (AnimateDiffPipeline, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LCMScheduler)

from runs import HostTraffic, no_bar

from ivmixed.pipelines.animatediff import DDIM_SETTINGS
from ivmixed.sampler import IVMixedSettings, count_network_calls, sample_iv_mixed, zigzag_stride
from ivmixed.schedulers import (SCHEDULER_NAMES, STOCHASTIC, make_scheduler, scheduler_identity,
                                scheduler_name)
from ivmixed.testing import sd_scheduler, tiny_pipeline

CLASSES = {
    "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler, "dpm++-sde": DPMSolverMultistepScheduler, "lcm": LCMScheduler,
}
SIZE, FRAMES = 64, 2


def animatediff_ddim():
    """The main scheduler AnimateDiff runs with by default: DDIM over SD 1.5's betas, linspace spacing."""
    return DDIMScheduler.from_config(sd_scheduler().config, **DDIM_SETTINGS)


# ---- make_scheduler, scheduler_name, scheduler_identity ----------------------------------------------------------

@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_make_scheduler_builds_the_named_class_over_the_same_betas(name):
    base = animatediff_ddim()
    built = make_scheduler(base, name)
    assert type(built) is CLASSES[name]
    assert built is not base
    assert torch.equal(built.alphas_cumprod, base.alphas_cumprod)
    assert scheduler_name(built) == name
    if name.startswith("dpm++"):
        assert built.config.algorithm_type == ("sde-dpmsolver++" if name == "dpm++-sde" else "dpmsolver++")
    assert scheduler_name(base) == "ddim"


def test_name_none_keeps_the_scheduler_and_its_class():
    base = animatediff_ddim()
    assert make_scheduler(base) is base
    trailing = make_scheduler(base, timestep_spacing="trailing")
    assert type(trailing) is DDIMScheduler and trailing is not base
    assert trailing.config.timestep_spacing == "trailing"
    assert {k: v for k, v in trailing.config.items() if k != "timestep_spacing"} == \
        {k: v for k, v in base.config.items() if k != "timestep_spacing"}
    dpm = make_scheduler(DPMSolverMultistepScheduler.from_config(base.config, algorithm_type="sde-dpmsolver++"),
                         beta_schedule="linear")
    assert dpm.config.algorithm_type == "sde-dpmsolver++" and dpm.config.beta_schedule == "linear"


@pytest.mark.parametrize("name", [n for n in SCHEDULER_NAMES if n != "lcm"])
def test_trailing_spacing_reaches_the_config_and_the_timesteps(name):
    built = make_scheduler(animatediff_ddim(), name, timestep_spacing="trailing")
    assert built.config.timestep_spacing == "trailing"
    built.set_timesteps(4)
    assert [round(float(t)) for t in built.timesteps] == [999, 749, 499, 249]


def test_beta_schedule_changes_the_noise_schedule_and_keeps_its_range():
    base = animatediff_ddim()
    linear = make_scheduler(base, "euler", beta_schedule="linear")
    assert linear.config.beta_schedule == "linear"
    assert (linear.config.beta_start, linear.config.beta_end) == (base.config.beta_start, base.config.beta_end)
    assert torch.allclose(linear.betas, torch.linspace(0.00085, 0.012, 1000))
    assert not torch.allclose(linear.alphas_cumprod, base.alphas_cumprod)


def test_lcm_refuses_a_timestep_spacing_it_would_ignore():
    with pytest.raises(ValueError, match="lcm scheduler picks its own timesteps"):
        make_scheduler(animatediff_ddim(), "lcm", timestep_spacing="trailing")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="heun"), "unknown scheduler 'heun'; choose one of ddim, euler"),
    (dict(timestep_spacing="even"), "unknown timestep spacing 'even'"),
    (dict(beta_schedule="cosine"), "unknown beta schedule 'cosine'"),
])
def test_unknown_names_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_scheduler(animatediff_ddim(), **kwargs)


def test_a_named_scheduler_switches_inherited_uneven_sigmas_off():
    karras = DPMSolverMultistepScheduler.from_config(animatediff_ddim().config, use_karras_sigmas=True)
    # a DDIM built from that config carries the flag along as a hidden config key
    ddim = DDIMScheduler.from_config(karras.config)
    assert ddim.config.get("use_karras_sigmas") is True
    for current in (karras, ddim):
        for name in ("euler", "dpm++", "dpm++-sde"):
            built = make_scheduler(current, name)
            assert built.config.use_karras_sigmas is False
            built.set_timesteps(6)
            zigzag_stride(built)  # evenly spaced again
        assert "use_karras_sigmas" not in make_scheduler(current, "ddim").config
    kept = make_scheduler(karras, timestep_spacing="trailing")
    assert kept.config.use_karras_sigmas is True
    assert scheduler_name(kept) == "DPMSolverMultistepScheduler"
    assert scheduler_identity(kept)["sigmas"] == "karras"


def test_scheduler_identity_is_small_json_and_tells_schedulers_apart():
    base = animatediff_ddim()
    identities = [scheduler_identity(make_scheduler(base, name, timestep_spacing=spacing))
                  for name in SCHEDULER_NAMES for spacing in ((None,) if name == "lcm" else (None, "trailing"))]
    assert len({json.dumps(identity, sort_keys=True) for identity in identities}) == len(identities)
    ddim = scheduler_identity(base)
    assert ddim == {"name": "ddim", "class": "DDIMScheduler", "timestep_spacing": "linspace",
                    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                    "prediction_type": "epsilon", "steps_offset": 1, "algorithm_type": None, "sigmas": None}
    assert scheduler_identity(make_scheduler(base, "dpm++-sde"))["algorithm_type"] == "sde-dpmsolver++"


def test_the_module_imports_without_torch_or_diffusers():
    import subprocess
    import sys

    path = pathlib.Path(__file__).resolve().parent.parent / "ivmixed" / "schedulers.py"
    code = ("import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None\n"
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('s', {str(path)!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.SCHEDULER_NAMES)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "lcm" in out.stdout


# ---- the zigzag's stride and the schedules it follows or refuses -------------------------------------------------

def timesteps_of(scheduler, steps):
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 25, 50])
def test_every_named_scheduler_and_spacing_is_followed(name, spacing, steps):
    base = animatediff_ddim()
    scheduler = make_scheduler(base, name, timestep_spacing=None if name == "lcm" else spacing)
    assert zigzag_stride(timesteps_of(scheduler, steps)) == 1000 // steps


def test_lcm_is_followed_at_every_step_count_of_its_grid():
    for steps in range(1, 51):
        assert zigzag_stride(timesteps_of(make_scheduler(animatediff_ddim(), "lcm"), steps)) == 1000 // steps


@pytest.mark.parametrize("steps", [4, 6, 25, 50])
@pytest.mark.parametrize("make", [
    lambda c: DPMSolverMultistepScheduler.from_config(c, use_karras_sigmas=True),
    lambda c: EulerDiscreteScheduler.from_config(c, use_karras_sigmas=True),
    lambda c: EulerDiscreteScheduler.from_config(c, use_exponential_sigmas=True),
    lambda c: EulerDiscreteScheduler.from_config(c, use_beta_sigmas=True),
], ids=["dpm-karras", "euler-karras", "euler-exponential", "euler-beta"])
def test_unevenly_spaced_sigmas_are_refused(make, steps):
    scheduler = timesteps_of(make(animatediff_ddim().config), steps)
    with pytest.raises(ValueError, match=r"needs nearly evenly spaced timesteps .*_sigmas=True\) steps between") as err:
        zigzag_stride(scheduler)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("steps", [2, 4, 25])
def test_two_evaluations_per_step_are_refused(steps):
    scheduler = timesteps_of(HeunDiscreteScheduler.from_config(animatediff_ddim().config), steps)
    with pytest.raises(ValueError, match=f"one timestep per inference step, but HeunDiscreteScheduler makes "
                                         f"{2 * steps - 1} for {steps} steps"):
        zigzag_stride(scheduler)


def test_other_predictions_and_zero_terminal_snr_are_refused():
    v = timesteps_of(DDIMScheduler.from_config(animatediff_ddim().config, prediction_type="v_prediction"), 4)
    with pytest.raises(ValueError, match="prediction_type='v_prediction'"):
        zigzag_stride(v)
    zero_snr = DDIMScheduler.from_config(animatediff_ddim().config, rescale_betas_zero_snr=True,
                                         timestep_spacing="trailing")
    with pytest.raises(ValueError, match="alphas_cumprod is 0"):
        zigzag_stride(timesteps_of(zero_snr, 4))


def test_the_stride_is_per_inference_step_not_per_scheduler_timestep():
    """DDIM with linspace spacing makes main steps of 333 at 4 steps; the zigzag's D stays 1000 // 4."""
    scheduler = timesteps_of(animatediff_ddim(), 4)
    assert scheduler.timesteps.tolist() == [999, 666, 333, 0]
    assert zigzag_stride(scheduler) == 250


# ---- the zigzag in VP space for the Euler family -----------------------------------------------------------------

def fake_model(kind, seen):
    """A nonlinear stand-in for a guided network that records what it is given."""
    a, b = (0.7, 1.3) if kind == "video" else (1.1, 0.4)

    def eps(x, t, w):
        seen.append((kind, x.clone(), float(t)))
        u = torch.tanh(a * x + float(t) / 1000.0)
        c = torch.sin(b * x) * (1.0 - float(t) / 2000.0)
        return u + w * (c - u)

    return eps


def run_recorded(scheduler, x, steps, settings=IVMixedSettings(zz=2), callback=None):
    scheduler.set_timesteps(steps)
    seen = []
    out = sample_iv_mixed(fake_model("video", seen), fake_model("image", seen), x, scheduler, 7.5, settings,
                          step_kwargs={"generator": torch.Generator().manual_seed(0)}
                          if "generator" in inspect.signature(scheduler.step).parameters else None,
                          callback=callback, progress_bar=no_bar)
    return out, seen


@pytest.mark.parametrize("name", ["euler", "euler-a"])
def test_the_euler_zigzag_moves_the_same_latents_as_ddim(name):
    """The same variance-preserving latents at the same timestep: DDIM holds them as they are, Euler as
    ``x_vp * sqrt(sigma^2 + 1)``. The zigzag (four moves) and the main step's model input must then be the same
    for both; without the conversion Euler's zigzag would move latents ~3 times too large."""
    steps = 4
    ddim = make_scheduler(animatediff_ddim(), "ddim", timestep_spacing="leading")
    euler = make_scheduler(animatediff_ddim(), name, timestep_spacing="leading")
    x_vp = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    euler.set_timesteps(steps)
    sigma = float(euler.sigmas[0])
    x_euler = x_vp * math.sqrt(sigma ** 2 + 1)
    assert not torch.allclose(x_euler, x_vp, rtol=0.5)  # the two spaces are far apart here (t = 751)
    _, seen_ddim = run_recorded(ddim, x_vp, steps)
    _, seen_euler = run_recorded(euler, x_euler, steps)
    first_step = 5  # M at t, the VDM at t1, M at t2, the VDM at t1, then the main step
    for (kind_d, x_d, t_d), (kind_e, x_e, t_e) in zip(seen_ddim[:first_step], seen_euler[:first_step]):
        assert (kind_d, t_d) == (kind_e, t_e)
        torch.testing.assert_close(x_e, x_d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_every_zigzag_starts_from_the_model_input_of_the_latents(name, spacing):
    """At every step the zigzag's first network input is ``scheduler.scale_model_input(x, t)`` of the latents the
    previous step left: the latents themselves for DDIM, DPM-Solver++ and LCM, ``x / sqrt(sigma^2 + 1)`` for Euler."""
    scheduler = make_scheduler(animatediff_ddim(), name, timestep_spacing=None if name == "lcm" else spacing)
    steps = 6
    x = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(2)) * 14.0
    after = [x]
    _, seen = run_recorded(scheduler, x, steps, callback=lambda i, t, latents: after.append(latents.clone()))
    probe = make_scheduler(animatediff_ddim(), name, timestep_spacing=None if name == "lcm" else spacing)
    probe.set_timesteps(steps)
    for i, t in enumerate(probe.timesteps):
        if name.startswith("euler"):
            want = after[i] / math.sqrt(float(probe.sigmas[i]) ** 2 + 1)
        else:
            want = after[i]
        kind, got, _ = seen[5 * i]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_ddim_path_makes_no_conversion():
    """DDIM's scale_model_input hands back its input: the zigzag then gets the latents object itself."""
    scheduler = timesteps_of(animatediff_ddim(), 3)
    x = torch.randn(1, 4, 2, 8, 8)
    firsts = []

    def model(latents, t, w):
        firsts.append(latents)
        return torch.zeros_like(latents)

    sample_iv_mixed(model, model, x, scheduler, 7.5, IVMixedSettings(interval_end=0), progress_bar=no_bar)
    assert firsts[0] is x


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_the_conversion_adds_no_host_traffic_per_zigzag_step(name):
    def model(x, t, w):
        return torch.zeros_like(x)

    extra = {}
    for steps in (2, 6):
        counts = []
        for settings in (IVMixedSettings(), None):
            scheduler = timesteps_of(make_scheduler(animatediff_ddim(), name), steps)
            mode = HostTraffic()
            with mode:
                sample_iv_mixed(model, model, torch.zeros(1, 4, 2, 8, 8), scheduler, 7.5, settings,
                                progress_bar=no_bar)
            counts.append(mode.counts)
        extra[steps] = {key: counts[0][key] - counts[1][key] for key in ("host_reads", "host_made")}
    assert extra[2] == extra[6] == {"host_reads": 0, "host_made": 1}


# ---- on the tiny AnimateDiff pipeline ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_pipeline("Animatediff")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def with_scheduler(pipe):
    original = pipe.scheduler

    def use(scheduler):
        pipe.scheduler = scheduler
        return pipe

    yield use
    pipe.scheduler = original


def stock_with(pipe, scheduler):
    stock = AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                unet=pipe.unet, motion_adapter=pipe.motion_adapter, scheduler=scheduler)
    stock.set_progress_bar_config(disable=True)
    return stock


CALL = dict(prompt="a horse", negative_prompt="blurry", num_frames=FRAMES, height=SIZE, width=SIZE,
            guidance_scale=7.5, output_type="latent")


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_iv_mixed_off_equals_stock_animatediff_with_each_scheduler(pipe, with_scheduler, name):
    base = pipe.scheduler
    ours = with_scheduler(make_scheduler(base, name))(
        generator=torch.Generator().manual_seed(4), iv_mixed=False, num_inference_steps=3, **CALL)
    stock = stock_with(pipe, make_scheduler(base, name))(
        generator=torch.Generator().manual_seed(4), num_inference_steps=3, **CALL)
    assert torch.equal(ours.frames, stock.frames)
    assert ours.network_calls == {"video": 3, "image": 0}
    other_seed = with_scheduler(make_scheduler(base, name))(
        generator=torch.Generator().manual_seed(5), latents=None, iv_mixed=False, num_inference_steps=3, **CALL)
    assert not torch.equal(other_seed.frames, ours.frames)


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_schedulers_draw_their_step_noise_from_the_generator(pipe, with_scheduler, name):
    """Same initial latents, another generator: only the step noise differs, so the videos differ."""
    latents = torch.randn(1, 4, FRAMES, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    base = pipe.scheduler
    runs = [with_scheduler(make_scheduler(base, name))(
        latents=latents.clone(), generator=torch.Generator().manual_seed(seed), num_inference_steps=3, **CALL).frames
        for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def record_timesteps(pipe):
    """Forward pre-hooks on both UNets that log (model, timestep) for every network call."""
    calls = []

    def hook(kind):
        def log(module, args, kwargs):
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            calls.append((kind, float(t)))
        return log

    handles = [pipe.unet.register_forward_pre_hook(hook("video"), with_kwargs=True),
               pipe.image_unet.register_forward_pre_hook(hook("image"), with_kwargs=True)]
    return calls, handles


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [4, 6])
def test_the_zigzag_strides_one_inference_step_with_each_scheduler(pipe, with_scheduler, name, steps):
    zz = 3  # image model on steps 0, 1, 3, 4; the video model in its place on steps 2, 5
    pipe = with_scheduler(make_scheduler(pipe.scheduler, name))
    calls, handles = record_timesteps(pipe)
    try:
        out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=steps, zz=zz, **CALL)
    finally:
        for handle in handles:
            handle.remove()
    assert out.network_calls == count_network_calls(steps, IVMixedSettings(zz=zz))
    assert collections.Counter(kind for kind, _ in calls) == out.network_calls
    D = 1000 // steps
    main = pipe.scheduler.timesteps.tolist()
    assert len(main) == steps and len(calls) == 5 * steps
    for i, t in enumerate(main):
        m = "image" if i % zz < zz - 1 else "video"
        tz = round(t)
        t1, t2 = max(tz - D, 0), max(tz - 2 * D, 0)
        want = [(m, tz), ("video", t1), (m, t2), ("video", t1), ("video", t)]
        assert calls[5 * i: 5 * i + 5] == want


@pytest.mark.parametrize("make", [
    lambda c: HeunDiscreteScheduler.from_config(c),
    lambda c: DPMSolverMultistepScheduler.from_config(c, use_karras_sigmas=True),
], ids=["heun", "dpm-karras"])
def test_refused_schedulers_fail_with_one_line_and_run_without_iv_mixed(pipe, with_scheduler, make):
    pipe = with_scheduler(make(pipe.scheduler.config))
    with pytest.raises(ValueError, match="IV-mixed sampling needs") as err:
        pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=6, **CALL)
    assert "\n" not in str(err.value)
    out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=6, iv_mixed=False, **CALL)
    assert out.network_calls == {"video": len(pipe.scheduler.timesteps), "image": 0}
    assert torch.isfinite(out.frames).all()


def test_euler_on_animatediff_adds_no_host_traffic_per_zigzag_step(pipe, with_scheduler):
    pipe = with_scheduler(make_scheduler(pipe.scheduler, "euler"))
    extra = {}
    for steps in (3, 5):
        counts = []
        for iv_mixed in (True, False):
            mode = HostTraffic()
            with mode:
                pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=steps, iv_mixed=iv_mixed, **CALL)
            counts.append(mode.counts)
        extra[steps] = {key: counts[0][key] - counts[1][key] for key in ("host_reads", "host_made")}
    assert extra[3] == extra[5]
    assert extra[5]["host_reads"] == 0


@pytest.mark.parametrize("pipeline, name", [("ModelScope", "euler-a"), ("VideoCrafter", "euler")])
def test_text_to_video_pipelines_run_the_zigzag_on_euler(pipeline, name):
    video = tiny_pipeline(pipeline)
    video.scheduler = make_scheduler(video.scheduler, name)
    kwargs = dict(prompt="a cat", num_frames=2, num_inference_steps=3, output_type="latent")
    out = video(generator=torch.Generator().manual_seed(0), **kwargs)
    assert out.network_calls == count_network_calls(3, IVMixedSettings(zz=video.default_zz))
    assert torch.isfinite(out.frames).all()
    standard = video(generator=torch.Generator().manual_seed(0), iv_mixed=False, **kwargs)
    assert not torch.allclose(standard.frames, out.frames)
