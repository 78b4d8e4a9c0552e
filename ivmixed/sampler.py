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
) -> torch.Tensor:
    """Run the main scheduler's steps over ``x``, with the IV-mixed zigzag before each step in the interval.

    ``scheduler`` must already have its timesteps set; its ``alphas_cumprod`` drive the zigzag moves.
    ``settings=None`` gives the standard sampler (one guided video call per step). ``callback(i, t, x)``
    runs after every step and may return replacement latents. ``should_stop()`` is asked before every step;
    once true the loop ends and the latents are returned as they are (diffusers' ``interrupt``).
    """
    timesteps = scheduler.timesteps
    num_steps = len(timesteps)
    step_kwargs = step_kwargs or {}
    if settings is not None:
        settings = settings.resolved(num_steps)
        if image_model is None and settings.image_model_needed():
            raise ValueError("this zz and interval use the image model, but none was given")
        image_weights = guidance_schedule(settings.i_sigma_begin, settings.i_sigma_end, num_steps, settings.rho)
        video_weights = guidance_schedule(settings.v_sigma_begin, settings.v_sigma_end, num_steps, settings.rho)
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
                    x, int(t), stride, abar, video_model, image_model if settings.uses_image_model(i) else None,
                    video_weights[i], image_weights[i],
                )
            eps = video_model(scheduler.scale_model_input(x, t), t, guidance_scale)
            x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
            if callback is not None:
                replaced = callback(i, t, x)
                if replaced is not None:
                    x = replaced
            bar.update(1)
    return x


def _zigzag(x, t, stride, abar, video_model, image_model, w_video, w_image):
    """Section 1's four moves: M denoises, the VDM denoises, M inverts, the VDM inverts."""
    model, w_model = (image_model, w_image) if image_model is not None else (video_model, w_video)
    t1, t2 = max(t - stride, 0), max(t - 2 * stride, 0)
    x = ddim_move(x, model(x, t, w_model), abar(t), abar(t - stride))
    x = ddim_move(x, video_model(x, t1, w_video), abar(t1), abar(t1 - stride))
    x = ddim_move(x, model(x, t2, -w_model), abar(t1 - stride), abar(t1))
    x = ddim_move(x, video_model(x, t1, -w_video), abar(t - stride), abar(t))
    return x


def count_network_calls(total_steps: int, settings: Optional[IVMixedSettings]) -> Dict[str, int]:
    """Guided network evaluations a run will make, per model: the arithmetic of section 1, for planning."""
    counts = {"video": total_steps, "image": 0}
    if settings is None:
        return counts
    settings = settings.resolved(total_steps)
    for i in settings.zigzag_steps():
        if settings.uses_image_model(i):
            counts["image"] += 2
            counts["video"] += 2
        else:
            counts["video"] += 4
    return counts
