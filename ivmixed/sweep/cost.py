"""What a sweep costs: guided network calls per cell, for the baseline, in all and still to make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from ..sampler import count_network_calls
from .grid import Grid


def calls(steps: int, settings) -> int:
    """Guided UNet calls of one video, both models together."""
    counts = count_network_calls(steps, settings)
    return counts["video"] + counts["image"]


@dataclass
class SweepCost:
    """Guided network calls (both models together) per prompt: each cell's IV-mixed video and the baseline."""

    grid: Grid
    cells: List[int]
    baseline: int
    prompts: int
    left: int  # what is not made yet, over all prompts
    # overwrite makes every cell's files again, its (shared) standard video too: that many standard videos more
    remade_standards: int = 0
    controlnets: int = 0  # ControlNets each guided call also runs (once each)

    @property
    def per_prompt(self) -> int:
        return sum(self.cells) + self.baseline

    @property
    def total(self) -> int:
        return self.per_prompt * self.prompts + self.remade_standards * self.baseline

    def describe(self) -> str:
        n = len(self.cells)
        cells = f"{n} cell{'s' if n != 1 else ''}"
        if len(set(self.cells)) == 1:
            cost = f"{cells} x {self.cells[0]:,} calls"
        else:
            cost = f"{cells} of {min(self.cells):,} to {max(self.cells):,} calls ({sum(self.cells):,} in all)"
        if self.baseline:
            cost += f" + {self.baseline:,} for the baseline"
        if self.prompts != 1:
            cost = f"{self.prompts} prompts x ({cost})"
        if self.remade_standards:
            cost += (f" + {self.remade_standards} x {self.baseline:,} for the cells' standard videos (the baseline, "
                     "made again by each cell with overwrite)")
        line = f"sweep: {cells} ({self.grid.describe()}): {cost} = {self.total:,} guided network calls"
        if self.controlnets:
            line += (f", each with {self.controlnets} ControlNet evaluation{'s' if self.controlnets != 1 else ''} "
                     f"({self.total * self.controlnets:,} in all)")
        if self.left != self.total:
            line += f"; {self.total - self.left:,} of them already made, {self.left:,} left"
        return line
