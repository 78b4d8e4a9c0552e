"""Guidance weights: the per-step schedules of IV-mixed sampling and the CFG combination."""

from __future__ import annotations

from typing import TYPE_CHECKING, List

if TYPE_CHECKING:
    import torch


def guidance_schedule(begin: float, end: float, num_steps: int, rho: float = 7.0) -> List[float]:
    """Karras-style interpolation of a guidance weight from ``begin`` to ``end`` over ``num_steps`` steps.

    ``w(i) = (begin^(1/rho) + i/(N-1) * (end^(1/rho) - begin^(1/rho)))^rho``; ``begin == end`` gives a constant.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    if begin < 0 or end < 0:
        raise ValueError(f"guidance weights must be >= 0, got begin={begin}, end={end}")
    lo, hi = begin ** (1.0 / rho), end ** (1.0 / rho)
    if num_steps == 1:
        return [float(begin)]
    return [float((lo + i / (num_steps - 1) * (hi - lo)) ** rho) for i in range(num_steps)]


def combine_guidance(uncond: torch.Tensor, cond: torch.Tensor, weight: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + weight * (cond - uncond)``; a negative weight pushes away from the prompt."""
    return uncond + weight * (cond - uncond)
