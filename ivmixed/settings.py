"""The knobs of IV-mixed sampling and the published code's deviations, as plain data (no torch).

The command line reads these to build its flags and check values before anything heavy is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from .errors import SettingError
from .guidance import guidance_schedule


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

    def in_interval(self, step: int) -> bool:
        return self.interval_begin <= step <= self.interval_end  # type: ignore[operator]


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

    def ignored_knobs(self) -> Dict[str, str]:
        """The :class:`IVMixedSettings` knobs these deviations leave unused, each with why, so that a value given
        for one is reported instead of silently having no effect."""
        ignored: Dict[str, str] = {}
        if self.image_model_every_step:
            ignored["zz"] = "the published code moved with the image model on every zigzag step"
        return ignored


NO_DEVIATIONS = ReferenceCompat(table_length=None)  # the algorithm of docs/ALGORITHM.md


def kept_steps(num_inference_steps: int, strength: float) -> int:
    """The main steps video-to-video runs at ``strength``: diffusers' rule, the last ``int(N * strength)``; one
    ``ValueError`` line where that is none."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be more than 0 and at most 1, got {strength}")
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    if kept < 1:
        raise ValueError(f"strength {strength:g} keeps no step of {num_inference_steps} (int(steps * strength) is 0); "
                         "raise the strength or the number of steps")
    return kept
