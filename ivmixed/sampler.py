"""The IV-mixed sampling loop, as a pure function of two guided noise-prediction callables.

Nothing here loads a model, touches a file or prints: a pipeline (or a test) hands in
``video_model(x, t, w)`` and ``image_model(x, t, w)``, each returning the noise prediction of
``x`` at timestep ``t`` under classifier-free guidance weight ``w``, plus the main scheduler. ``t`` is always a
0-d tensor on the timesteps' device: the loop never reads a device value on the host, so a GPU never waits on it.
"""

from __future__ import annotations

import math
from typing import Callable, ContextManager, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from .settings import NO_DEVIATIONS, IVMixedSettings, ReferenceCompat

__all__ = ["IVMixedSettings", "ReferenceCompat", "count_network_calls", "ddim_move", "image_model_needed",
           "sample_iv_mixed"]

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
) -> torch.Tensor:
    """Run the main scheduler's steps over ``x``, with the IV-mixed zigzag before each step in the interval.

    ``scheduler`` must already have its timesteps set; its ``alphas_cumprod`` drive the zigzag moves.
    ``settings=None`` gives the standard sampler (one guided video call per step). ``callback(i, t, x)``
    runs after every step and may return replacement latents. ``should_stop()`` is asked before every step;
    once true the loop ends and the latents are returned as they are (diffusers' ``interrupt``).
    ``reference_compat`` switches on the published code's deviations from docs/ALGORITHM.md (default: none).
    """
    compat = _compat(reference_compat)
    timesteps = scheduler.timesteps
    num_steps = len(timesteps)
    step_kwargs = step_kwargs or {}
    if settings is not None:
        settings = settings.resolved(num_steps)
        compat.check(num_steps)
        if image_model is None and image_model_needed(settings, compat):
            raise ValueError("this zz and interval use the image model, but none was given")
        image_weights = compat.weights(settings.i_sigma_begin, settings.i_sigma_end, num_steps, settings.rho)
        video_weights = compat.weights(settings.v_sigma_begin, settings.v_sigma_end, num_steps, settings.rho)
        alphas: List[float] = scheduler.alphas_cumprod.double().tolist()
        stride = scheduler.config.num_train_timesteps // num_steps
        zigzag_times = _zigzag_timesteps(timesteps, stride)

        def abar(s: int) -> float:
            return alphas[s] if s >= 0 else alphas[0]

    with progress_bar(num_steps) as bar:
        for i, t in enumerate(timesteps):
            if should_stop is not None and should_stop():
                break
            if settings is not None and settings.in_interval(i):
                x = _zigzag(
                    x, zigzag_times[i], stride, abar, video_model,
                    image_model if compat.uses_image_model(settings, i) else None,
                    video_weights[i], image_weights[i], compat,
                )
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


def _zigzag_timesteps(timesteps: torch.Tensor, stride: int) -> List[_ZigzagTimes]:
    """The zigzag timesteps of every main step, made once per run: one device-to-host read of the main timesteps and
    one host-to-device copy, so that the loop never waits on the device for a timestep and the networks never get a
    Python number (diffusers turns one into a new device tensor at every call)."""
    host = [(t, max(t - stride, 0), max(t - 2 * stride, 0)) for t in (int(v) for v in timesteps.tolist())]
    device = torch.tensor(host, dtype=timesteps.dtype, device=timesteps.device) if host else None
    return [_ZigzagTimes(h, tuple(device[i].unbind())) for i, h in enumerate(host)]


def _zigzag(x, times: _ZigzagTimes, stride, abar, video_model, image_model, w_video, w_image, compat):
    """The four moves of docs/ALGORITHM.md: M denoises, the VDM denoises, M inverts, the VDM inverts."""
    if image_model is not None:
        model, w_model, size = image_model, w_image, compat.image_move_size
    else:
        model, w_model, size = video_model, (w_image if compat.video_model_image_weight else w_video), None
    (t, t1, _), (at, at1, at2) = times.host, times.device
    if compat.swap_first_moves:
        x = _move(model, x, at1, w_model, abar(t1), abar(t1 - stride), size)
        x = _move(video_model, x, at, w_video, abar(t), abar(t - stride))
    else:
        x = _move(model, x, at, w_model, abar(t), abar(t - stride), size)
        x = _move(video_model, x, at1, w_video, abar(t1), abar(t1 - stride))
    x = _move(model, x, at2, -w_model, abar(t1 - stride), abar(t1), size)
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
    total_steps: int, settings: Optional[IVMixedSettings], reference_compat: Optional[ReferenceCompat] = None
) -> Dict[str, int]:
    """Guided network evaluations a run will make, per model: the arithmetic of docs/ALGORITHM.md, for planning.

    ``reference_compat`` (a pipeline's ``reference_compat_options``) counts a reference-compatible run."""
    compat = _compat(reference_compat)
    counts = {"video": total_steps, "image": 0}
    if settings is None:
        return counts
    settings = settings.resolved(total_steps)
    compat.check(total_steps)
    for i in settings.zigzag_steps():
        if compat.uses_image_model(settings, i):
            counts["image"] += 2
            counts["video"] += 2
        else:
            counts["video"] += 4
    return counts
