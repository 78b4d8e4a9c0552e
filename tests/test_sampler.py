"""The sampler against docs/ALGORITHM.md, computed independently with explicit formulas and fake denoisers."""

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from runs import no_bar

from ivmixed.sampler import IVMixedSettings, count_network_calls, ddim_move, sample_iv_mixed


def make_scheduler(num_steps):
    s = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="linspace",
    )
    s.set_timesteps(num_steps)
    # float64 alphas make DDIMScheduler.step exact enough to compare at 1e-9
    s.alphas_cumprod, s.final_alpha_cumprod = s.alphas_cumprod.double(), s.final_alpha_cumprod.double()
    return s


def fake_eps(kind):
    """A deterministic, nonlinear stand-in for a guided network: eps_w = u + w (c - u)."""
    a, b = (0.7, 1.3) if kind == "video" else (1.1, 0.4)

    def eps(x, t, w):
        t = float(t)
        u = torch.tanh(a * x + t / 1000.0)
        c = torch.sin(b * x) * (1.0 - t / 2000.0)
        return u + w * (c - u)

    return eps


def karras(b, e, n, rho):
    return [(b ** (1 / rho) + i / (n - 1) * (e ** (1 / rho) - b ** (1 / rho))) ** rho for i in range(n)]


def reference_loop(x, n, gs, ib, ie, zz, isb, ise, vsb, vse, rho, image_ac=None):
    """docs/ALGORITHM.md written out directly (float64), including the DDIM main step; with ``image_ac``, the image
    model's moves run between the noise levels of its own schedule."""
    sched = make_scheduler(n)
    ac = sched.alphas_cumprod.double()
    T = sched.config.num_train_timesteps
    D = T // n

    def ab(s, table=None):
        table = ac if table is None else table
        return table[s].item() if s >= 0 else table[0].item()

    def move(x, e, a_from, a_to):
        return math.sqrt(a_to) * (x - math.sqrt(1 - a_from) * e) / math.sqrt(a_from) + math.sqrt(1 - a_to) * e

    V, I = fake_eps("video"), fake_eps("image")
    wI, wV = karras(isb, ise, n, rho), karras(vsb, vse, n, rho)
    for i, t in enumerate(sched.timesteps.tolist()):
        t1, t2 = max(t - D, 0), max(t - 2 * D, 0)
        if ib <= i <= ie:
            M, wM, acM = (I, wI[i], image_ac) if i % zz < zz - 1 else (V, wV[i], None)
            x = move(x, M(x, t, wM), ab(t, acM), ab(t - D, acM))
            x = move(x, V(x, t1, wV[i]), ab(t1), ab(t1 - D))
            x = move(x, M(x, t2, -wM), ab(t1 - D, acM), ab(t1, acM))
            x = move(x, V(x, t1, -wV[i]), ab(t - D), ab(t))
        e = V(x, t, gs)
        x = move(x, e, ab(t), ab(t - D))  # DDIM, eta=0, final alpha = alphas_cumprod[0]
    return x


@pytest.mark.parametrize(
    "n,ib,ie,zz,isb,ise,vsb,vse,rho",
    [
        (10, 0, None, 1000, 4.0, 4.0, 4.0, 4.0, 7.0),  # defaults: image model at every step
        (8, 0, None, 1, 4.0, 4.0, 4.0, 4.0, 7.0),  # video-only zigzag
        (9, 2, 6, 3, 2.0, 6.0, 6.0, 2.0, 5.0),  # mixed models, sub-interval, varying weights
        (50, 0, 49, 1000, 4.0, 4.0, 4.0, 4.0, 7.0),  # the paper's step count, t - 2D < 0 at the end
    ],
)
def test_sampler_matches_design_formulas(n, ib, ie, zz, isb, ise, vsb, vse, rho):
    torch.manual_seed(0)
    x0 = torch.randn(1, 4, 3, 4, 4, dtype=torch.float64)
    settings = IVMixedSettings(ib, ie, zz, isb, ise, vsb, vse, rho)
    got = sample_iv_mixed(fake_eps("video"), fake_eps("image"), x0.clone(), make_scheduler(n), 7.5, settings,
                          progress_bar=no_bar)
    want = reference_loop(x0.clone(), n, 7.5, ib, n - 1 if ie is None else ie, zz, isb, ise, vsb, vse, rho)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), (got - want).abs().max()


def linear_beta_alphas():
    """The cumulative alphas of the linear beta schedule (ComfyUI's ``sqrt_linear``, AnimateDiff's)."""
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear").alphas_cumprod.double()


@pytest.mark.parametrize("zz", [1000, 3])
def test_image_model_moves_between_its_own_schedules_noise_levels(zz):
    torch.manual_seed(3)
    x0 = torch.randn(1, 4, 3, 4, 4, dtype=torch.float64)
    settings = IVMixedSettings(zz=zz, i_sigma_begin=2.0, i_sigma_end=6.0)
    image_ac = linear_beta_alphas()
    got = sample_iv_mixed(fake_eps("video"), fake_eps("image"), x0.clone(), make_scheduler(8), 7.5, settings,
                          progress_bar=no_bar, image_alphas_cumprod=image_ac)
    want = reference_loop(x0.clone(), 8, 7.5, 0, 7, zz, 2.0, 6.0, 4.0, 4.0, 7.0, image_ac=image_ac)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9), (got - want).abs().max()
    one_schedule = reference_loop(x0.clone(), 8, 7.5, 0, 7, zz, 2.0, 6.0, 4.0, 4.0, 7.0)
    assert (got - one_schedule).abs().max() > 1e-3  # the image model's schedule is used, not the main one


def test_image_alphas_need_one_per_training_timestep():
    x0 = torch.zeros(1, 4, 1, 2, 2)
    with pytest.raises(ValueError, match=r"one cumulative alpha in \(0, 1\] per training timestep \(1000\), got 999"):
        sample_iv_mixed(fake_eps("video"), fake_eps("image"), x0, make_scheduler(4), 7.5, IVMixedSettings(),
                        progress_bar=no_bar, image_alphas_cumprod=linear_beta_alphas()[:999])


def test_standard_sampling_is_plain_ddim():
    torch.manual_seed(1)
    x0 = torch.randn(1, 4, 2, 4, 4, dtype=torch.float64)
    got = sample_iv_mixed(fake_eps("video"), None, x0.clone(), make_scheduler(6), 5.0, None, progress_bar=no_bar)
    want = reference_loop(x0.clone(), 6, 5.0, 1, 0, 1000, 4, 4, 4, 4, 7)  # empty interval
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)


def record_calls(log, name):
    base = fake_eps("video" if name == "V" else "image")

    def model(x, t, w):
        log.append((name, int(t), round(float(w), 9)))
        return base(x, t, w)

    return model


def test_order_of_moves_within_one_step():
    log = []
    sched = make_scheduler(10)
    settings = IVMixedSettings(interval_begin=0, interval_end=0, zz=1000, i_sigma_begin=3, i_sigma_end=3,
                               v_sigma_begin=5, v_sigma_end=5)
    sample_iv_mixed(record_calls(log, "V"), record_calls(log, "I"), torch.zeros(1, 4, 1, 2, 2), sched, 7.5, settings,
                    progress_bar=no_bar)
    t = int(sched.timesteps[0])
    assert log[:5] == [("I", t, 3.0), ("V", t - 100, 5.0), ("I", t - 200, -3.0), ("V", t - 100, -5.0), ("V", t, 7.5)]
    assert [name for name, *_ in log[5:]] == ["V"] * 9


@pytest.mark.parametrize(
    "n,kwargs,video,image",
    [
        (50, {}, 150, 100),  # the defaults: 250 guided calls instead of 50
        (50, {"zz": 1}, 250, 0),
        (50, {"zz": 3}, 50 + 16 * 4 + 34 * 2, 34 * 2),  # steps 2, 5, ..., 47 (16 of them) use the video model
        (20, {"interval_begin": 5, "interval_end": 9}, 20 + 5 * 2, 5 * 2),
        (7, {"interval_begin": 6}, 7 + 2, 2),
    ],
)
def test_exact_network_call_counts(n, kwargs, video, image):
    log = []
    sample_iv_mixed(record_calls(log, "V"), record_calls(log, "I"), torch.zeros(1, 4, 1, 2, 2), make_scheduler(n),
                    7.5, IVMixedSettings(**kwargs), progress_bar=no_bar)
    counts = {"video": sum(1 for c in log if c[0] == "V"), "image": sum(1 for c in log if c[0] == "I")}
    assert counts == {"video": video, "image": image}
    assert count_network_calls(n, IVMixedSettings(**kwargs)) == counts


def test_move_then_inversion_returns_input():
    torch.manual_seed(2)
    x, eps = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    back = ddim_move(ddim_move(x, eps, 0.3, 0.7), eps, 0.7, 0.3)
    assert torch.allclose(back, x, rtol=1e-12, atol=1e-12)


def test_moves_equal_diffusers_ddim_step_and_inverse_step():
    torch.manual_seed(3)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    fwd = make_scheduler(25)
    ac = fwd.alphas_cumprod
    t = int(fwd.timesteps[3])
    stock = fwd.step(eps, t, x).prev_sample
    assert torch.allclose(ddim_move(x, eps, ac[t].item(), ac[t - 40].item()), stock, atol=1e-5)
    inv = DDIMInverseScheduler.from_config(fwd.config, timestep_spacing="leading")
    inv.set_timesteps(25)
    s = int(inv.timesteps[5])  # the inverse scheduler moves from s - 40 up to s
    stock_inv = inv.step(eps, s, x).prev_sample
    assert torch.allclose(ddim_move(x, eps, ac[s - 40].item(), ac[s].item()), stock_inv, atol=1e-5)


def test_fp16_latents_move_in_float32():
    x, eps = torch.randn(1, 4, 4, 4).half(), torch.randn(1, 4, 4, 4).half()
    got = ddim_move(x, eps, 0.01, 0.9)
    want = ddim_move(x.float(), eps.float(), 0.01, 0.9).half()
    assert got.dtype == torch.float16 and torch.equal(got, want)


def test_callback_sees_every_step_and_may_replace_latents():
    seen = []

    def callback(i, t, x):
        seen.append(i)
        return torch.zeros_like(x) if i == 2 else None

    sched = make_scheduler(4)
    out = sample_iv_mixed(lambda x, t, w: torch.zeros_like(x), None, torch.ones(1, 4, 1, 2, 2), sched, 7.5, None,
                          callback=callback, progress_bar=no_bar)
    assert seen == [0, 1, 2, 3]
    # After step 2 the latents are zero and a zero prediction keeps them zero.
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"interval_begin": 5, "interval_end": 3}, "must not be after"),
        ({"interval_end": 10}, "interval_end must be between 0 and 9"),
        ({"interval_begin": -1}, "interval_begin must be between"),
        ({"zz": 0}, "zz must be at least 1"),
        ({"i_sigma_begin": -1.0}, "i_sigma_begin must be"),
        ({"rho": 0.0}, "rho must be a positive"),
    ],
)
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IVMixedSettings(**kwargs).check(10)


def test_image_model_required_when_used():
    with pytest.raises(ValueError, match="image model"):
        sample_iv_mixed(fake_eps("video"), None, torch.zeros(1, 4, 1, 2, 2), make_scheduler(3), 7.5,
                        IVMixedSettings(), progress_bar=no_bar)
    # zz=1 never uses it, so none is needed.
    sample_iv_mixed(fake_eps("video"), None, torch.zeros(1, 4, 1, 2, 2), make_scheduler(3), 7.5,
                    IVMixedSettings(zz=1), progress_bar=no_bar)
