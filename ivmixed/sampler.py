"""The IV-mixed sampling loop, as a pure function of two guided noise-prediction callables.

Nothing here loads a model, touches a file or prints: a pipeline (or a test) hands in
``video_model(x, t, w)`` and ``image_model(x, t, w)``, each returning the noise prediction of
``x`` at timestep ``t`` under classifier-free guidance weight ``w``, plus the main scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, ContextManager, Dict, List, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from .errors import SettingError
from .guidance import guidance_schedule

NoisePredictor = Callable[[torch.Tensor, int, float], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], Optional[torch.Tensor]]


def _knob(default, help: str):
    """A field of :class:`IVMixedSettings` with the one sentence the CLI and the docs show for it."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class IVMixedSettings:
    """The knobs of IV-mixed sampling: the single owner of their defaults, checks and help texts.

    Names match the pipeline keywords and the YAML keys; the CLI derives its flags from these fields.
    """

    interval_begin: int = _knob(0, "first step (0-based) with the zigzag")
    interval_end: Optional[int] = _knob(None, "last step with the zigzag (default: the last step, N-1)")
    zz: int = _knob(1000, "image-model share: step i zigzags with the image model when i % zz < zz - 1, else with "
                          "the video model; 1 = never (favours coherence), larger = more often (favours detail)")
    i_sigma_begin: float = _knob(4.0, "image-model guidance weight at the first step, >= 0")
    i_sigma_end: float = _knob(4.0, "image-model guidance weight at the last step, >= 0")
    v_sigma_begin: float = _knob(4.0, "video-model guidance weight at the first step, >= 0")
    v_sigma_end: float = _knob(4.0, "video-model guidance weight at the last step, >= 0")
    rho: float = _knob(7.0, "curvature of the guidance schedules between begin and end (Karras-style), > 0")

    def resolved(self, num_steps: int) -> "IVMixedSettings":
        """A copy with ``interval_end`` filled in (last step by default), checked against ``num_steps``."""
        end = num_steps - 1 if self.interval_end is None else self.interval_end
        settings = replace(self, interval_end=end)
        settings.check(num_steps)
        return settings

    def check(self, num_steps: int) -> None:
        """Raise :class:`~ivmixed.errors.SettingError` with an actionable message for values the sampler
        cannot honour."""
        if num_steps < 1:
            raise SettingError(f"the number of inference steps must be at least 1, got {num_steps}")
        end = num_steps - 1 if self.interval_end is None else self.interval_end
        if not 0 <= self.interval_begin <= num_steps - 1:
            raise SettingError(f"{{interval_begin}} must be between 0 and {num_steps - 1} (steps - 1), got {self.interval_begin}")
        if not 0 <= end <= num_steps - 1:
            raise SettingError(f"{{interval_end}} must be between 0 and {num_steps - 1} (steps - 1), got {end}")
        if self.interval_begin > end:
            raise SettingError(f"{{interval_begin}} ({self.interval_begin}) must not be after {{interval_end}} ({end})")
        if self.zz < 1:
            raise SettingError(f"{{zz}} must be at least 1, got {self.zz}")
        for name in ("i_sigma_begin", "i_sigma_end", "v_sigma_begin", "v_sigma_end"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SettingError(f"{{{name}}} must be a finite number >= 0, got {value}")
        if not math.isfinite(self.rho) or self.rho <= 0:
            raise SettingError(f"{{rho}} must be a positive number, got {self.rho}")
        for who, begin, end in (("i", self.i_sigma_begin, self.i_sigma_end), ("v", self.v_sigma_begin, self.v_sigma_end)):
            try:
                weights = guidance_schedule(begin, end, max(num_steps, 2), self.rho)
                finite = all(math.isfinite(w) for w in weights)
            except OverflowError:
                finite = False
            if not finite:
                raise SettingError(f"the guidance schedule from {{{who}_sigma_begin}} {begin:g} to {{{who}_sigma_end}} "
                                   f"{end:g} with {{rho}} {self.rho:g} overflows; use smaller weights or another rho")

    def uses_image_model(self, step: int) -> bool:
        """Whether the zigzag of ``step`` moves with the image model (else the video model)."""
        return step % self.zz < self.zz - 1

    def zigzag_steps(self) -> range:
        """The steps that zigzag (on settings whose ``interval_end`` is filled in, see :meth:`resolved`)."""
        return range(self.interval_begin, self.interval_end + 1)  # type: ignore[operator]

    def image_model_needed(self) -> bool:
        """Whether any zigzag step moves with the image model (on resolved settings)."""
        return any(self.uses_image_model(i) for i in self.zigzag_steps())

    def in_interval(self, step: int) -> bool:
        return self.interval_begin <= step <= self.interval_end  # type: ignore[operator]


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


@dataclass(frozen=True)
class ReferenceCompat:
    """Where the published code departs from docs/ALGORITHM.md, one switch per deviation.

    Each pipeline names the deviations its reference code had, so ``reference_compat=True`` reproduces that
    code while the sampler stays free of pipeline names. ``ReferenceCompat(table_length=None)`` is the algorithm of docs/ALGORITHM.md.
    """

    # Guidance tables of this many entries whatever the step count, indexed by step (None: N entries).
    table_length: Optional[int] = 50
    # Moves 1 and 2 swap timesteps: M at t1 moves abar(t1) -> abar(t1 - D), the video model at t abar(t) -> abar(t - D).
    swap_first_moves: bool = False
    # zz is ignored: the image model takes moves 1 and 3 on every zigzag step.
    image_model_every_step: bool = False
    # The image model's moves resize the whole latent (nearest) to this size, move there and resize back.
    image_move_size: Optional[int] = None
    # Where the video model takes M's place, moves 1 and 3 use the image model's weight.
    video_model_image_weight: bool = False
    # The main step sees per-frame latents ``(b f) c h w``, which places a stochastic scheduler's noise differently.
    per_frame_main_step: bool = False

    def check(self, num_steps: int) -> None:
        if self.table_length is not None and num_steps > self.table_length:
            raise SettingError(
                f"{{reference_compat}} supports at most {self.table_length} inference steps (the published code's "
                f"guidance tables have {self.table_length} entries), got {num_steps}"
            )

    def uses_image_model(self, settings: IVMixedSettings, step: int) -> bool:
        return self.image_model_every_step or settings.uses_image_model(step)

    def weights(self, begin: float, end: float, num_steps: int, rho: float) -> List[float]:
        return guidance_schedule(begin, end, self.table_length or num_steps, rho)[:num_steps]


SECTION_ONE = ReferenceCompat(table_length=None)


def _compat(reference_compat: Optional[ReferenceCompat]) -> ReferenceCompat:
    """The deviations to apply: none for ``None``; a bare ``True`` is refused, as it names none."""
    if reference_compat is None or reference_compat is False:
        return SECTION_ONE
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

        def abar(s: int) -> float:
            return alphas[s] if s >= 0 else alphas[0]

    with progress_bar(num_steps) as bar:
        for i, t in enumerate(timesteps):
            if should_stop is not None and should_stop():
                break
            if settings is not None and settings.in_interval(i):
                x = _zigzag(
                    x, int(t), stride, abar, video_model,
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


def _zigzag(x, t, stride, abar, video_model, image_model, w_video, w_image, compat):
    """The four moves of docs/ALGORITHM.md: M denoises, the VDM denoises, M inverts, the VDM inverts."""
    if image_model is not None:
        model, w_model, size = image_model, w_image, compat.image_move_size
    else:
        model, w_model, size = video_model, (w_image if compat.video_model_image_weight else w_video), None
    t1, t2 = max(t - stride, 0), max(t - 2 * stride, 0)
    if compat.swap_first_moves:
        x = _move(model, x, t1, w_model, abar(t1), abar(t1 - stride), size)
        x = _move(video_model, x, t, w_video, abar(t), abar(t - stride))
    else:
        x = _move(model, x, t, w_model, abar(t), abar(t - stride), size)
        x = _move(video_model, x, t1, w_video, abar(t1), abar(t1 - stride))
    x = _move(model, x, t2, -w_model, abar(t1 - stride), abar(t1), size)
    x = _move(video_model, x, t1, -w_video, abar(t - stride), abar(t))
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
