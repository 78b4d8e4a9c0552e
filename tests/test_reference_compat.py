"""``reference_compat=True``: the published code's deviations from docs/ALGORITHM.md, pipeline by pipeline.

Each pipeline runs in float64 on tiny models and is compared with a loop written out here on its UNets, with
every deviation a switch. With the pipeline's deviations on, the loop must equal the pipeline in compat mode; with
any one of them off, it must not (so every deviation is exercised); with all off, it must equal the default mode.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from runs import no_bar

from ivmixed import IVMixedAnimateDiffPipeline, IVMixedModelScopePipeline, IVMixedVideoCrafterPipeline
from ivmixed.errors import SettingError
from ivmixed.sampler import IVMixedSettings, ReferenceCompat, count_network_calls, sample_iv_mixed
from ivmixed.testing import save_tiny_checkpoints

PROMPT, NEGATIVE = "a red fox", "blurry"
FRAMES = 2
SIGMAS = (2.0, 6.0, 5.0, 3.0)  # i_sigma_begin, i_sigma_end, v_sigma_begin, v_sigma_end
RHO = 7.0

# Per pipeline: its class, the call settings, and the deviations its published code had.
CASES = {
    "Animatediff": dict(cls=IVMixedAnimateDiffPipeline, size=64, n=6, zz=3, gs=7.5, extra={},
                        deviations={"table50", "swap"}),
    # 96 px: 12x12 latents against the image UNet's 8x8, a size ratio that is not whole
    "ModelScope": dict(cls=IVMixedModelScopePipeline, size=96, n=5, zz=2, gs=9.0, extra={},
                       deviations={"table50", "every_step", "move_size"}),
    "VideoCrafter": dict(cls=IVMixedVideoCrafterPipeline, size=32, n=5, zz=3, gs=9.0, extra={"fps": 8},
                         deviations={"table50", "video_image_weight", "per_frame_step"}),
}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    built = {}
    for name, case in CASES.items():
        pipe = case["cls"].from_checkpoints(**save_tiny_checkpoints(str(root / name), name), dtype=torch.float64)
        pipe.set_progress_bar_config(disable=True)
        built[name] = pipe
    return built


def clip_embeddings(tokenizer, text_encoder, text):
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def karras(begin, end, i, entries):
    lo, hi = begin ** (1 / RHO), end ** (1 / RHO)
    return (lo + i / (entries - 1) * (hi - lo)) ** RHO


def move(x, eps, a_from, a_to):
    x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps


def frames_view(x):
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def video_view(frames, b, f):
    bf, c, h, w = frames.shape
    return frames.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def nearest(x, size):
    """Nearest resize of every frame of video latents."""
    b, f = x.shape[0], x.shape[2]
    return video_view(F.interpolate(frames_view(x), size=size, mode="nearest"), b, f)


def guided_models(name, pipe, calls):
    """The guided video and image predictions of ``pipe``'s UNets, CFG written out."""
    video_emb = torch.cat([clip_embeddings(pipe.tokenizer, pipe.text_encoder, t) for t in (NEGATIVE, PROMPT)])
    if name == "Animatediff":  # one embedding per frame; the image UNet shares them
        video_emb = video_emb.repeat_interleave(FRAMES, dim=0)
        image_emb = video_emb
    else:
        image_emb = torch.cat([clip_embeddings(pipe.image_tokenizer, pipe.image_text_encoder, t)
                               for t in (NEGATIVE, PROMPT)])
        image_emb = image_emb.repeat_interleave(FRAMES, dim=0)
    video_kwargs = {"fps": CASES[name]["extra"]["fps"]} if name == "VideoCrafter" else {}
    native = pipe.image_unet.config.sample_size if name == "ModelScope" else None

    def video(x, t, w):
        calls["video"] += 1
        u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=video_emb, **video_kwargs).sample.chunk(2)
        return u + w * (c - u)

    def image(x, t, w):
        """ModelScope's image model predicts at its native size; in default mode only the prediction is resized."""
        calls["image"] += 1
        h, wd = x.shape[-2:]
        y = x if native is None else nearest(x, (native, native))
        frames = frames_view(y)
        u, c = pipe.image_unet(torch.cat([frames, frames]), t, encoder_hidden_states=image_emb).sample.chunk(2)
        eps = video_view(u + w * (c - u), x.shape[0], x.shape[2])
        return eps if native is None else nearest(eps, (h, wd))

    return video, image


def conditional_models(name, pipe, calls):
    """The plain conditional predictions of ``pipe``'s UNets, whatever the weight: what the published code used
    everywhere when ``guidance_scale <= 1`` switched classifier-free guidance off."""
    video_emb = clip_embeddings(pipe.tokenizer, pipe.text_encoder, PROMPT)
    if name == "Animatediff":
        video_emb = video_emb.repeat_interleave(FRAMES, dim=0)
        image_emb = video_emb
    else:
        image_emb = clip_embeddings(pipe.image_tokenizer, pipe.image_text_encoder, PROMPT).repeat_interleave(FRAMES, dim=0)
    video_kwargs = {"fps": CASES[name]["extra"]["fps"]} if name == "VideoCrafter" else {}
    native = pipe.image_unet.config.sample_size if name == "ModelScope" else None

    def video(x, t, w):
        calls["video"] += 1
        return pipe.unet(x, t, encoder_hidden_states=video_emb, **video_kwargs).sample

    def image(x, t, w):
        calls["image"] += 1
        h, wd = x.shape[-2:]
        y = x if native is None else nearest(x, (native, native))
        eps = video_view(pipe.image_unet(frames_view(y), t, encoder_hidden_states=image_emb).sample, x.shape[0],
                         x.shape[2])
        return eps if native is None else nearest(eps, (h, wd))

    return video, image


def reference(name, pipe, latents, iv_mixed, seed, deviations, gs=None, cfg=True):
    """The loop of docs/ALGORITHM.md with the published code's deviations as switches. Returns latents and call
    counts. ``gs`` replaces the case's guidance scale; ``cfg=False`` uses plain conditional predictions."""
    case = CASES[name]
    n, zz, gs = case["n"], case["zz"], (case["gs"] if gs is None else gs)
    calls = {"video": 0, "image": 0}
    video, image = (guided_models if cfg else conditional_models)(name, pipe, calls)
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(n)
    alphas, D = sched.alphas_cumprod.double().tolist(), 1000 // n
    generator = torch.Generator().manual_seed(seed)
    entries = 50 if "table50" in deviations else n
    native = pipe.image_unet.config.sample_size

    def abar(s):
        return alphas[s] if s >= 0 else alphas[0]

    x = latents.clone()
    for i, t in enumerate(sched.timesteps):
        if iv_mixed:
            ti = int(t)
            t1, t2 = max(ti - D, 0), max(ti - 2 * D, 0)
            w_image, w_video = karras(SIGMAS[0], SIGMAS[1], i, entries), karras(SIGMAS[2], SIGMAS[3], i, entries)
            with_image = "every_step" in deviations or i % zz < zz - 1
            if with_image:
                model, w_model = image, w_image
            else:
                model, w_model = video, (w_image if "video_image_weight" in deviations else w_video)
            resized = with_image and "move_size" in deviations

            def model_move(x, s, w, a_from, a_to):
                if not resized:
                    return move(x, model(x, s, w), a_from, a_to)
                small = nearest(x, (native, native))
                return nearest(move(small, model(small, s, w), a_from, a_to), tuple(x.shape[-2:]))

            if "swap" in deviations:
                x = model_move(x, t1, w_model, abar(t1), abar(t1 - D))
                x = move(x, video(x, ti, w_video), abar(ti), abar(ti - D))
            else:
                x = model_move(x, ti, w_model, abar(ti), abar(ti - D))
                x = move(x, video(x, t1, w_video), abar(t1), abar(t1 - D))
            x = model_move(x, t2, -w_model, abar(t1 - D), abar(t1))
            x = move(x, video(x, t1, -w_video), abar(ti - D), abar(ti))
        eps = video(x, t, gs)
        if "per_frame_step" in deviations:
            step = sched.step(frames_view(eps), t, frames_view(x), generator=generator).prev_sample
            x = video_view(step, x.shape[0], x.shape[2])
        else:
            x = sched.step(eps, t, x, generator=generator).prev_sample
    return x, calls


def run(name, pipe, latents, seed, **kwargs):
    case = CASES[name]
    return pipe(
        PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=case["size"], width=case["size"],
        num_inference_steps=case["n"], guidance_scale=kwargs.pop("guidance_scale", case["gs"]), latents=latents.clone(),
        generator=torch.Generator().manual_seed(seed), output_type="latent", zz=case["zz"],
        i_sigma_begin=SIGMAS[0], i_sigma_end=SIGMAS[1], v_sigma_begin=SIGMAS[2], v_sigma_end=SIGMAS[3], rho=RHO,
        **case["extra"], **kwargs,
    )


def initial_latents(name, seed=0):
    side = CASES[name]["size"] // 8
    return torch.randn(1, 4, FRAMES, side, side, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_compat_equals_the_published_loop_and_each_deviation_matters(pipes, name):
    pipe, deviations, seed = pipes[name], CASES[name]["deviations"], 7
    latents = initial_latents(name)
    compat = run(name, pipe, latents, seed, reference_compat=True)
    default = run(name, pipe, latents, seed)
    explicit_off = run(name, pipe, latents, seed, reference_compat=False)

    want, calls = reference(name, pipe, latents, True, seed, deviations)
    assert relative(compat.frames, want) < 1e-10, relative(compat.frames, want)
    assert compat.network_calls == calls
    assert count_network_calls(CASES[name]["n"], IVMixedSettings(zz=CASES[name]["zz"]),
                               pipe.reference_compat_options) == calls

    # default mode: all switches off, as before
    want_default, calls_default = reference(name, pipe, latents, True, seed, set())
    assert relative(default.frames, want_default) < 1e-10
    assert torch.equal(explicit_off.frames, default.frames) and default.network_calls == calls_default
    assert relative(compat.frames, default.frames) > 1e-3

    for deviation in deviations:
        partial, _ = reference(name, pipe, latents, True, seed, deviations - {deviation})
        assert relative(compat.frames, partial) > 1e-6, deviation


@pytest.mark.parametrize("gs", [1.0, 0.5])
@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_compat_at_guidance_up_to_1_switches_guidance_off_everywhere(pipes, name, gs):
    """As the published code (and diffusers): no classifier-free guidance at guidance_scale <= 1, zigzag included;
    every network call is one conditional prediction, without the unconditional half."""
    pipe, deviations, seed = pipes[name], CASES[name]["deviations"], 5
    latents = initial_latents(name, 3)
    rows = {"video": [], "image": []}
    hooks = [getattr(pipe, attr).register_forward_pre_hook(lambda module, args, key=key: rows[key].append(args[0].shape[0]))
             for attr, key in (("unet", "video"), ("image_unet", "image"))]
    try:
        compat = run(name, pipe, latents, seed, reference_compat=True, guidance_scale=gs)
    finally:
        for hook in hooks:
            hook.remove()
    want, calls = reference(name, pipe, latents, True, seed, deviations, gs=gs, cfg=False)
    assert relative(compat.frames, want) < 1e-10, relative(compat.frames, want)
    assert compat.network_calls == calls and calls["image"] > 0
    assert rows == {"video": [1] * calls["video"], "image": [FRAMES] * calls["image"]}  # no unconditional rows
    guided, _ = reference(name, pipe, latents, True, seed, deviations, gs=gs)
    assert relative(compat.frames, guided) > 1e-3  # guidance would have changed the result

    standard = run(name, pipe, latents, seed, iv_mixed=False, reference_compat=True, guidance_scale=gs)
    want_standard, _ = reference(name, pipe, latents, False, seed, deviations, gs=gs, cfg=False)
    assert relative(standard.frames, want_standard) < 1e-10

    # The default mode keeps guidance: the zigzag's negative-guidance inversions need the unconditional half.
    default = run(name, pipe, latents, seed, guidance_scale=gs)
    want_default, _ = reference(name, pipe, latents, True, seed, set(), gs=gs)
    assert relative(default.frames, want_default) < 1e-10


@torch.no_grad()
def test_videocrafter_standard_video_steps_per_frame_in_compat_mode(pipes):
    pipe, latents, seed = pipes["VideoCrafter"], initial_latents("VideoCrafter", 1), 3
    compat = run("VideoCrafter", pipe, latents, seed, iv_mixed=False, reference_compat=True)
    default = run("VideoCrafter", pipe, latents, seed, iv_mixed=False)
    want, _ = reference("VideoCrafter", pipe, latents, False, seed, {"per_frame_step"})
    want_default, _ = reference("VideoCrafter", pipe, latents, False, seed, set())
    assert relative(compat.frames, want) < 1e-10 and relative(default.frames, want_default) < 1e-10
    assert relative(compat.frames, default.frames) > 1e-3


@torch.no_grad()
def test_standard_video_of_the_ddim_pipelines_ignores_compat(pipes):
    for name in ("Animatediff", "ModelScope"):
        latents = initial_latents(name, 2)
        compat = run(name, pipes[name], latents, 0, iv_mixed=False, reference_compat=True)
        assert torch.equal(compat.frames, run(name, pipes[name], latents, 0, iv_mixed=False).frames)


@pytest.mark.parametrize("name", list(CASES))
def test_more_than_50_steps_are_refused(pipes, name):
    with pytest.raises(SettingError, match=r"^reference_compat supports at most 50 inference steps .* got 51$"):
        pipes[name](PROMPT, num_frames=FRAMES, num_inference_steps=51, reference_compat=True, output_type="latent")
    with pytest.raises(SettingError) as refused:
        count_network_calls(51, IVMixedSettings(), pipes[name].reference_compat_options)
    assert refused.value.render(lambda key: "--" + key.replace("_", "-")).startswith("--reference-compat supports")
    # the default mode takes any number of steps
    assert count_network_calls(51, IVMixedSettings())["video"] == 51 + 2 * 51


# -- the sampler's switches on a fake denoiser --------------------------------------------------------------


def make_scheduler(num_steps):
    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1, timestep_spacing="linspace")
    s.set_timesteps(num_steps)
    return s


def fake(a, b, native=None):
    """A nonlinear guided prediction; with ``native``, made at that size with the prediction resized back."""
    def eps(x, t, w):
        h, wd = x.shape[-2:]
        y = x if native is None else nearest(x, (native, native))
        u, c = torch.tanh(a * y + float(t) / 1000), torch.sin(b * y)
        out = u + w * (c - u)
        return out if native is None else nearest(out, (h, wd))
    return eps


@pytest.mark.parametrize("side, equal", [(4, True), (12, False)])
def test_whole_latent_resize_agrees_with_prediction_resize_only_for_whole_ratios(side, equal):
    x = torch.randn(1, 4, 2, side, side, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    settings = IVMixedSettings(i_sigma_begin=2.0, i_sigma_end=6.0)
    common = dict(progress_bar=no_bar, settings=settings)
    moved_whole = sample_iv_mixed(fake(0.7, 1.3), fake(1.1, 0.4, native=8), x.clone(), make_scheduler(6), 7.5,
                                  reference_compat=ReferenceCompat(table_length=None, image_move_size=8), **common)
    moved_eps = sample_iv_mixed(fake(0.7, 1.3), fake(1.1, 0.4, native=8), x.clone(), make_scheduler(6), 7.5, **common)
    assert torch.equal(moved_whole, moved_eps) == equal
    if not equal:
        assert relative(moved_whole, moved_eps) > 1e-3


def test_all_switches_off_is_section_one():
    x = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    settings = IVMixedSettings(zz=3, i_sigma_begin=2.0, i_sigma_end=6.0, v_sigma_begin=5.0, v_sigma_end=3.0)
    kwargs = dict(settings=settings, progress_bar=no_bar)
    off = sample_iv_mixed(fake(0.7, 1.3), fake(1.1, 0.4), x.clone(), make_scheduler(7), 7.5,
                          reference_compat=ReferenceCompat(table_length=None), **kwargs)
    on = sample_iv_mixed(fake(0.7, 1.3), fake(1.1, 0.4), x.clone(), make_scheduler(7), 7.5, **kwargs)
    assert torch.equal(off, on)


def test_the_sampler_takes_deviations_not_a_bare_flag():
    with pytest.raises(TypeError, match="ReferenceCompat"):
        count_network_calls(10, IVMixedSettings(), reference_compat=True)
    assert count_network_calls(10, IVMixedSettings(), reference_compat=False) == count_network_calls(10, IVMixedSettings())


def test_compat_limit_applies_to_the_tables_only():
    """Standard sampling has no guidance tables, so compat mode takes more than 50 steps there."""
    x = torch.zeros(1, 4, 1, 2, 2)
    out = sample_iv_mixed(fake(0.7, 1.3), None, x, make_scheduler(60), 7.5, progress_bar=no_bar,
                          reference_compat=ReferenceCompat(per_frame_main_step=True))
    assert out.shape == x.shape
    with pytest.raises(SettingError, match="at most 50"):
        sample_iv_mixed(fake(0.7, 1.3), fake(1.1, 0.4), x, make_scheduler(60), 7.5, IVMixedSettings(),
                        progress_bar=no_bar, reference_compat=ReferenceCompat())


@pytest.mark.parametrize(
    "n, kwargs, compat, expected",
    [
        (10, {"zz": 1}, ReferenceCompat(image_model_every_step=True), {"video": 10 + 20, "image": 20}),
        (10, {"zz": 3}, ReferenceCompat(), count_network_calls(10, IVMixedSettings(zz=3))),
        (50, {"zz": 1, "interval_begin": 40}, ReferenceCompat(image_model_every_step=True), {"video": 70, "image": 20}),
    ],
)
def test_call_counts_in_compat_mode(n, kwargs, compat, expected):
    log = []

    def recording(name, base):
        def model(x, t, w):
            log.append(name)
            return base(x, t, w)
        return model

    sample_iv_mixed(recording("video", fake(0.7, 1.3)), recording("image", fake(1.1, 0.4)), torch.zeros(1, 4, 1, 2, 2),
                    make_scheduler(n), 7.5, IVMixedSettings(**kwargs), progress_bar=no_bar, reference_compat=compat)
    counts = {"video": log.count("video"), "image": log.count("image")}
    assert counts == expected == count_network_calls(n, IVMixedSettings(**kwargs), compat)
