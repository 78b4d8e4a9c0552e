"""The IV-mixed sampling loop, as a pure function of two guided noise-prediction callables.

Nothing here loads a model, touches a file or prints: a pipeline (or a test) hands in
``video_model(x, t, w)`` and ``image_model(x, t, w)``, each returning the noise prediction of
``x`` at timestep ``t`` under classifier-free guidance weight ``w``, plus the main scheduler. ``t`` is always a
0-d tensor on the timesteps' device: the loop never reads a device value on the host, so a GPU never waits on it.

The main scheduler may be any diffusers scheduler that takes one model evaluation per inference step on nearly
evenly spaced timesteps (DDIM, Euler, Euler ancestral, DPM-Solver++, LCM, ...); :func:`zigzag_stride` says which
ones the zigzag can follow and refuses the others. Schedulers whose latents are not variance preserving (the Euler
family keeps ``x0 + sigma * eps``) are converted to the variance-preserving latents the DDIM moves take before each
zigzag and back after it, by the factor their own ``scale_model_input`` applies.
"""

from __future__ import annotations

import math
from typing import Callable, ContextManager, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from .settings import NO_DEVIATIONS, IVMixedSettings, ReferenceCompat

__all__ = ["IVMixedSettings", "ReferenceCompat", "SPACING_TOLERANCE", "count_network_calls", "ddim_move",
           "image_model_needed", "sample_iv_mixed", "zigzag_stride"]

# How far one main step may be from the mean main step, as a fraction of it (plus the rounding of the scheduler's
# timestep grid), for the zigzag to follow the main scheduler; see zigzag_stride.
SPACING_TOLERANCE = 0.25

NoisePredictor = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]


def ddim_move(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Deterministic DDIM move of ``x`` from cumulative alpha ``alpha_from`` to ``alpha_to``.

    Denoising (``alpha_to > alpha_from``) and DDIM inversion (``alpha_to < alpha_from``) are the same
    formula. The arithmetic runs in at least float32, so fp16 inversions do not drift.
    """
    work = torch.promote_types(x.dtype, torch.float32)
    xf, ef = x.to(work), eps.to(work)
    x0 = (xf - math.sqrt(1.0 - alpha_from) * ef) / math.sqrt(alpha_from)
    return (math.sqrt(alpha_to) * x0 + math.sqrt(1.0 - alpha_to) * ef).to(x.dtype)


def _tqdm_bar(total: int) -> ContextManager:
    return tqdm(total=total)




def _compat(reference_compat: Optional[ReferenceCompat]) -> ReferenceCompat:
    """The deviations to apply: none for ``None``; a bare ``True`` is refused, as it names none."""
    if reference_compat is None or reference_compat is False:
        return NO_DEVIATIONS
    if not isinstance(reference_compat, ReferenceCompat):
        raise TypeError("reference_compat takes a ReferenceCompat (e.g. a pipeline's reference_compat_options), "
                        f"got {reference_compat!r}")
    return reference_compat


def image_model_needed(settings: IVMixedSettings, reference_compat: Optional[ReferenceCompat] = None) -> bool:
    """Whether any zigzag step of resolved ``settings`` moves with the image model."""
    compat = _compat(reference_compat)
    return any(compat.uses_image_model(settings, i) for i in settings.zigzag_steps())


def _host_timesteps(scheduler) -> List[float]:
    return [float(v) for v in scheduler.timesteps.tolist()]


def zigzag_stride(scheduler, host_timesteps: Optional[List[float]] = None) -> int:
    """The zigzag's stride ``D = num_train_timesteps // num_inference_steps`` for ``scheduler`` (its timesteps set),
    or one ``ValueError`` line where the zigzag cannot follow its steps. It follows a scheduler that

    * predicts noise (``prediction_type="epsilon"``): the DDIM moves take noise predictions;
    * makes one timestep per inference step (not Heun's or DPM-2's two evaluations per step);
    * keeps its timesteps on the training schedule, with a positive ``alphas_cumprod`` there;
    * spreads them nearly evenly: the mean main step ``m`` is within a factor 2 of ``D``, and every main step is
      within ``SPACING_TOLERANCE * m`` of ``m``, plus one step of the grid the timesteps are rounded to (one
      timestep; LCM's ``T // original_inference_steps``, 20). That takes DDIM's, Euler's and DPM-Solver's
      leading, linspace and trailing spacings (their steps differ by at most one timestep of rounding; linspace's
      ``m`` is ``(T - 1) / (N - 1)``, above ``D``: 333 at 4 steps, where ``D`` is 250) and LCM's steps, which
      skip on its 50-step grid (240 and 260 at 4 steps, 20 and 40 at 30 steps). It refuses Karras, exponential
      and beta sigmas from 3 to 5 steps on (their steps shrink towards low noise: 30 to 345 timesteps at 6 steps,
      1 to 75 at 25), where a zigzag of fixed size no longer matches the main steps.

    ``host_timesteps`` are the timesteps as numbers, when the caller has read them already.
    """
    name = type(scheduler).__name__
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(f"IV-mixed sampling needs a noise-predicting scheduler, but this {name} has "
                         f"prediction_type={prediction!r}; use one with prediction_type='epsilon' or iv_mixed=False")
    ts = _host_timesteps(scheduler) if host_timesteps is None else host_timesteps
    steps = getattr(scheduler, "num_inference_steps", None) or len(ts)
    total = scheduler.config.num_train_timesteps
    if len(ts) != steps:
        raise ValueError(f"IV-mixed sampling needs one timestep per inference step, but {name} makes {len(ts)} for "
                         f"{steps} steps (more than one model evaluation per step); choose another scheduler or "
                         "iv_mixed=False")
    stride = total // steps
    off_grid = [t for t in ts if not 0 <= round(t) < total]
    if off_grid:
        raise ValueError(f"IV-mixed sampling needs timesteps on the {total}-step training schedule, but {name} has "
                         f"{off_grid[0]:g}; choose another scheduler or iv_mixed=False")
    alphas = scheduler.alphas_cumprod.tolist()
    if ts and alphas[round(max(ts))] <= 0.0:
        raise ValueError(f"IV-mixed sampling cannot start a zigzag at timestep {max(ts):g}, where {name}'s "
                         "alphas_cumprod is 0 (rescale_betas_zero_snr); switch that off or use iv_mixed=False")
    if len(ts) >= 2:
        gaps = [a - b for a, b in zip(ts, ts[1:])]
        mean = (ts[0] - ts[-1]) / (len(ts) - 1)
        # the rounding of the grid the timesteps are picked on: one timestep, or LCM's (and TCD's) coarse grid
        grid = total // (scheduler.config.get("original_inference_steps") or total)
        even = stride / 2 <= mean <= 2 * stride and all(
            abs(gap - mean) <= SPACING_TOLERANCE * mean + grid for gap in gaps)
        if not even:
            uneven = [flag for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
                      if scheduler.config.get(flag)]
            hint = f" ({uneven[0]}=True)" if uneven else ""
            raise ValueError(f"IV-mixed sampling needs nearly evenly spaced timesteps (its zigzag moves {stride} at a "
                             f"time), but {name}{hint} steps between {min(gaps):g} and {max(gaps):g} timesteps at "
                             f"{steps} steps; use evenly spaced sigmas or iv_mixed=False")
    return stride


def sample_iv_mixed(
    video_model: NoisePredictor,
    image_model: Optional[NoisePredictor],
    x: torch.Tensor,
    scheduler,
    guidance_scale: float,
    settings: Optional[IVMixedSettings] = None,
    step_kwargs: Optional[Dict] = None,
    callback: Optional[StepCallback] = None,
    progress_bar: Callable[[int], ContextManager] = _tqdm_bar,
    should_stop: Optional[Callable[[], bool]] = None,
    reference_compat: Optional[ReferenceCompat] = None,
    start: int = 0,
    step_started: Optional[Callable[[int], None]] = None,
    image_alphas_cumprod: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """Run the main scheduler's steps over ``x``, with the IV-mixed zigzag before each step in the interval.

    ``scheduler`` must already have its timesteps set; its ``alphas_cumprod`` drive the zigzag moves, and with
    ``settings`` it must be one :func:`zigzag_stride` accepts (else one ``ValueError``, before any step).
    ``settings=None`` gives the standard sampler (one guided video call per step). ``callback(i, t, x)``
    runs after every step and may return replacement latents. ``should_stop()`` is asked before every step;
    once true the loop ends and the latents are returned as they are (diffusers' ``interrupt``).
    ``reference_compat`` switches on the published code's deviations from docs/ALGORITHM.md (default: none).

    ``start`` skips the first main steps (video-to-video: ``x`` is noised to ``scheduler.timesteps[start]``).
    The zigzag's stride stays that of the whole schedule, ``T // scheduler.num_inference_steps``; the steps that
    run are the ones the settings count (the interval, ``zz`` and the guidance schedules run over them, step 0
    being the first that runs). ``step_started(i)`` is told when step ``i`` (of those that run) begins, before its
    zigzag: for conditioning that follows the step, not the timestep (ControlNet's guidance start and end).
    """
    compat = _compat(reference_compat)
    if not 0 <= start < len(scheduler.timesteps):
        raise ValueError(f"start must be a step of the schedule's {len(scheduler.timesteps)}, got {start}")
    timesteps = scheduler.timesteps[start:]
    num_steps = len(timesteps)
    step_kwargs = step_kwargs or {}
    if settings is not None:
        schedule_timesteps = _host_timesteps(scheduler)
        stride = zigzag_stride(scheduler, schedule_timesteps)
        host_timesteps = schedule_timesteps[start:]
        settings = settings.resolved(num_steps)
        compat.check(num_steps)
        if image_model is None and image_model_needed(settings, compat):
            raise ValueError("this zz and interval use the image model, but none was given")
        image_weights = compat.weights(settings.i_sigma_begin, settings.i_sigma_end, num_steps, settings.rho)
        video_weights = compat.weights(settings.v_sigma_begin, settings.v_sigma_end, num_steps, settings.rho)
        alphas: List[float] = scheduler.alphas_cumprod.double().tolist()
        zigzag_times = _zigzag_timesteps(host_timesteps, timesteps, stride)
        # The model input of unit latents: the factor to variance-preserving latents (the scheduler's own
        # tensor where it scales nothing, then no conversion is made).
        unit = torch.ones((), dtype=torch.float32, device=x.device)

        abar = _alpha_lookup(alphas)
        abar_image = abar if image_alphas_cumprod is None else _alpha_lookup(
            _checked_alphas(image_alphas_cumprod, len(alphas)))

    with progress_bar(num_steps) as bar:
        for i, t in enumerate(timesteps):
            if should_stop is not None and should_stop():
                break
            if step_started is not None:
                step_started(i)
            if settings is not None and settings.in_interval(i):
                to_vp = scheduler.scale_model_input(unit, t)
                vp = x if to_vp is unit else x * to_vp
                vp = _zigzag(
                    vp, zigzag_times[i], stride, abar, abar_image, video_model,
                    image_model if compat.uses_image_model(settings, i) else None,
                    video_weights[i], image_weights[i], compat,
                )
                x = vp if to_vp is unit else vp / to_vp
            eps = video_model(scheduler.scale_model_input(x, t), t, guidance_scale)
            if compat.per_frame_main_step:
                x = _per_frame_step(scheduler, eps, t, x, step_kwargs)
            else:
                x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
            if callback is not None:
                replaced = callback(i, t, x)
                if replaced is not None:
                    x = replaced
            bar.update(1)
    return x


class _ZigzagTimes(NamedTuple):
    """One zigzag step's timesteps ``t, t1 = t - D, t2 = t - 2D`` (clamped at 0): as Python ints, to index the
    alphas, and as device tensors, to hand to the networks."""

    host: Tuple[int, int, int]
    device: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _zigzag_timesteps(host_timesteps: List[float], timesteps: torch.Tensor, stride: int) -> List[_ZigzagTimes]:
    """The zigzag timesteps of every main step, made once per run: one device-to-host read of the main timesteps and
    one host-to-device copy, so that the loop never waits on the device for a timestep and the networks never get a
    Python number (diffusers turns one into a new device tensor at every call). A timestep between two of the
    training schedule's (Euler's linspace spacing) is rounded to the nearest one: the zigzag then starts and ends at a
    noise level within 0.25% (in ``sqrt(abar)``) of the latents' own."""
    host = [(t, max(t - stride, 0), max(t - 2 * stride, 0)) for t in (round(v) for v in host_timesteps)]
    device = torch.tensor(host, dtype=timesteps.dtype, device=timesteps.device) if host else None
    return [_ZigzagTimes(h, tuple(device[i].unbind())) for i, h in enumerate(host)]


def _alpha_lookup(alphas: List[float]) -> Callable[[int], float]:
    """``abar(s)``: the cumulative alpha of training timestep ``s``, that of timestep 0 below it."""
    return lambda s: alphas[s] if s >= 0 else alphas[0]


def _checked_alphas(values: Sequence[float], total: int) -> List[float]:
    alphas = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(alphas) != total or not all(0.0 < a <= 1.0 for a in alphas):
        raise ValueError(f"image_alphas_cumprod needs one cumulative alpha in (0, 1] per training timestep ({total}), "
                         f"got {len(alphas)} values")
    return alphas


def _zigzag(x, times: _ZigzagTimes, stride, abar, abar_image, video_model, image_model, w_video, w_image, compat):
    """The four moves of docs/ALGORITHM.md: M denoises, the VDM denoises, M inverts, the VDM inverts; each model's
    moves run between its own schedule's noise levels (``abar_image`` for the image model)."""
    if image_model is not None:
        model, w_model, size, abar_m = image_model, w_image, compat.image_move_size, abar_image
    else:
        model, w_model, size, abar_m = video_model, (w_image if compat.video_model_image_weight else w_video), None, abar
    (t, t1, _), (at, at1, at2) = times.host, times.device
    if compat.swap_first_moves:
        x = _move(model, x, at1, w_model, abar_m(t1), abar_m(t1 - stride), size)
        x = _move(video_model, x, at, w_video, abar(t), abar(t - stride))
    else:
        x = _move(model, x, at, w_model, abar_m(t), abar_m(t - stride), size)
        x = _move(video_model, x, at1, w_video, abar(t1), abar(t1 - stride))
    x = _move(model, x, at2, -w_model, abar_m(t1 - stride), abar_m(t1), size)
    x = _move(video_model, x, at1, -w_video, abar(t - stride), abar(t))
    return x


def _move(model, x, t, w, alpha_from, alpha_to, size=None):
    """One DDIM move with ``model``'s guided prediction; with ``size``, made on ``x`` resized (nearest) to
    ``size x size`` and resized back."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return ddim_move(x, model(x, t, w), alpha_from, alpha_to)
    small = _resize(x, (size, size))
    return _resize(ddim_move(small, model(small, t, w), alpha_from, alpha_to), tuple(x.shape[-2:]))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest resize of the last two dimensions, whatever the leading ones."""
    lead = x.shape[:-2]
    out = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=size, mode="nearest")
    return out.reshape(*lead, *size)


def _per_frame_step(scheduler, eps, t, x, step_kwargs):
    """``scheduler.step`` on ``(b f) c h w`` views of video latents ``(b, c, f, h, w)``."""
    b, f = x.shape[0], x.shape[2]
    per_frame = "b c f h w -> (b f) c h w"
    out = scheduler.step(rearrange(eps, per_frame), t, rearrange(x, per_frame), **step_kwargs).prev_sample
    return rearrange(out, "(b f) c h w -> b c f h w", b=b, f=f)


def count_network_calls(
    total_steps: int, settings: Optional[IVMixedSettings], reference_compat: Optional[ReferenceCompat] = None,
    controlnets: int = 0,
) -> Dict[str, int]:
    """Guided network evaluations a run will make, per model: the arithmetic of docs/ALGORITHM.md, for planning.

    ``reference_compat`` (a pipeline's ``reference_compat_options``) counts a reference-compatible run. With
    ``controlnets`` ControlNets, every guided call of either UNet also runs each of them once (on both halves):
    ``controlnet_video`` and ``controlnet_image`` count those evaluations."""
    compat = _compat(reference_compat)
    counts = {"video": total_steps, "image": 0}
    if settings is not None:
        _count_zigzags(counts, total_steps, settings, compat)
    if controlnets:
        counts.update(controlnet_video=counts["video"] * controlnets, controlnet_image=counts["image"] * controlnets)
    return counts


def _count_zigzags(counts: Dict[str, int], total_steps: int, settings: IVMixedSettings, compat: ReferenceCompat):
    settings = settings.resolved(total_steps)
    compat.check(total_steps)
    for i in settings.zigzag_steps():
        if compat.uses_image_model(settings, i):
            counts["image"] += 2
            counts["video"] += 2
        else:
            counts["video"] += 4
