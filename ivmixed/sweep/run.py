"""Running a sweep: one ordinary runner per cell, the shared baseline made once, the grids and the sweep file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..config import RunConfig
from ..errors import SettingError
from ..outputs import SHORT, fingerprint
from .cost import SweepCost, calls
from .files import SWEEP_KIND, SWEEP_SUFFIX
from .grid import SWEEP_KEYS, GridLike, Values, as_grid, cell_config, cell_label, check_size, format_value
from .images import grid_sheet, grid_video

logger = logging.getLogger("ivmixed")

GRID_LAYOUT = 1  # change when the grid files' layout changes, so old grids are not passed off as current


@dataclass
class CellPlan:
    values: Values
    label: str
    runner: Any  # Runner
    calls: int


@dataclass
class PromptGrid:
    """One prompt's part of a sweep: its cells' output sets, the baseline file and the grid files."""

    job: Any  # prompts.Job
    outputs: List[Any]  # outputs.OutputSet per cell, in grid order
    baseline: Optional[str]
    baseline_fingerprint: Optional[str]
    fingerprint: str
    grid_video: str
    grid_image: str


@dataclass
class SweepReport:
    """What a sweep did: records of the cells made in this run, how many were finished already, grid files."""

    made: List[Dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    planned: int = 0
    baselines_made: List[str] = field(default_factory=list)
    grids: List[str] = field(default_factory=list)
    sweep_file: Optional[str] = None
    cost: Optional[SweepCost] = None


class Sweep:
    """A planned sweep: every cell checked and every file named, nothing loaded. :meth:`run` makes what is
    missing: the baseline, the cells (one :class:`~ivmixed.runner.Runner` each, sharing one
    :class:`~ivmixed.runner.PipelineCache`), then the grids.

    ``on_step(kind, step, total)`` and ``should_stop()`` are passed to every runner (see there);
    ``on_cell(index, total, values)`` is called before each cell starts.
    """

    def __init__(self, config: RunConfig, grid: GridLike, *, max_cells: Optional[int] = None, pipelines=None,
                 on_step=None, should_stop: Optional[Callable[[], bool]] = None,
                 on_cell: Optional[Callable[[int, int, Values], None]] = None,
                 command_line: Optional[Sequence[str]] = None, progress_bars: bool = True):
        from ..runner import PipelineCache, Runner

        self.grid = as_grid(grid)
        check_size(self.grid, max_cells)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SettingError("a {sweep} runs in one process; start it without accelerate launch or torchrun")
        self.pipelines = pipelines or PipelineCache()
        self.on_cell = on_cell
        self.progress_bars = progress_bars
        options = dict(pipelines=self.pipelines, on_step=on_step, should_stop=should_stop,
                       command_line=command_line, progress_bars=progress_bars)
        self.command_line = list(command_line) if command_line is not None else None
        self.base = Runner(config, **options)
        self.config = self.base.config  # resolved: device, dtype and interval_end filled in
        self.given = config
        self.with_standard = self.grid.iv_mixed_only and not config.no_standard
        self.cells: List[CellPlan] = []
        for values in self.grid.cells():
            runner = Runner(cell_config(config, values, self.with_standard), **options)
            self.cells.append(CellPlan(values, cell_label(values), runner,
                                       calls(runner.config.steps_run, runner.config.iv_mixed)))
        # Checks the output folder and the frame limit, reads no model; a repeated prompt is made once.
        self.jobs = self.base.plan().jobs
        self.prompts = [self._prompt_grid(job) for job in self.jobs]
        keys = "-".join(self.grid.keys)
        self.fingerprint = fingerprint({"axes": self.grid.as_json(), "prompts": [p.fingerprint for p in self.prompts]})
        self.sweep_file = f"sweep_{keys}_{self.fingerprint[:SHORT]}{SWEEP_SUFFIX}"
        self.report = SweepReport(sweep_file=self.sweep_file)
        self.cost = self._cost()
        self.report.cost = self.cost

    @property
    def baseline_calls(self) -> int:
        return calls(self.config.steps_run, None) if not self.config.no_standard else 0

    def _prompt_grid(self, job) -> PromptGrid:
        outputs = [cell.runner.output_set(job) for cell in self.cells]
        baseline = None if self.config.no_standard else self.base.output_set(job)
        standard_fp = baseline.standard_fingerprint if baseline else None
        fp = fingerprint({"layout": GRID_LAYOUT, "axes": self.grid.as_json(), "cells": [o.fingerprint for o in outputs],
                    "baseline": standard_fp, "fps": self.config.fps, "format": self.config.format})
        stem = f"{job.prefix(self.config.pipeline)}_sweep_{fp[:SHORT]}_grid"
        return PromptGrid(job, outputs, baseline.files["standard"] if baseline else None, standard_fp, fp,
                          f"{stem}.{self.config.format}", f"{stem}.png")

    def _exists(self, name: Optional[str]) -> bool:
        return name is not None and os.path.isfile(os.path.join(self.config.output_dir, name))

    def _needs_baseline(self, prompt: PromptGrid) -> bool:
        """Whether this run makes the prompt's shared standard video (missing, or ``overwrite``)."""
        return bool(prompt.baseline) and (self.config.overwrite or not self._exists(prompt.baseline))

    def _cost(self) -> SweepCost:
        left = remade = 0
        for cell in self.cells:
            for item in cell.runner.plan(self.jobs).todo:
                if "iv_mix" in item.make:
                    left += cell.calls
                if "standard" in item.make and self.config.overwrite:
                    remade += 1
        for prompt in self.prompts:
            if self._needs_baseline(prompt):
                left += self.baseline_calls
        left += remade * self.baseline_calls
        return SweepCost(self.grid, [c.calls for c in self.cells], self.baseline_calls, len(self.jobs), left, remade,
                         controlnets=len(self.config.controlnet))

    def describe_cost(self) -> str:
        return self.cost.describe()

    # -- running -------------------------------------------------------------------------------------------

    def run(self) -> SweepReport:
        from ..export import write_video

        config, report = self.config, self.report
        folder = config.output_dir
        logger.info("%s", self.describe_cost())
        report.planned = len(self.cells) * len(self.jobs)
        self._write_sweep_file(complete=False)
        missing = [p for p in self.prompts if self._needs_baseline(p)]
        if missing:
            loaded = self.pipelines.get(config)
            loaded.pipe.set_progress_bar_config(position=0, leave=True, disable=not self.progress_bars)
            self.base._set_context_windows(loaded.pipe)  # long videos: the baseline uses the cells' windows
            for prompt in missing:
                out = self.base._generate(loaded.pipe, prompt.job, "standard")
                write_video(out.frames[0], os.path.join(folder, prompt.baseline), config.fps)
                report.baselines_made.append(prompt.baseline)
                logger.info("wrote %s: the %s", prompt.baseline, self.baseline_text())
        baselines = {p.baseline for p in self.prompts if p.baseline and self._exists(p.baseline)}
        for n, cell in enumerate(self.cells, 1):
            cell.runner.complete |= baselines  # the cells' standard video is the baseline, which has no record
            plan = cell.runner.plan(self.jobs)
            report.skipped += plan.finished
            if not plan.todo:
                continue
            logger.info("cell %d/%d: %s", n, len(self.cells), cell.label)
            if self.on_cell is not None:
                self.on_cell(n, len(self.cells), dict(cell.values))
            try:
                cell.runner.run(self.jobs, plan)
            finally:
                report.made.extend(cell.runner.report.made)
        for prompt in self.prompts:
            report.grids.extend(self._write_grids(prompt))
        self._write_sweep_file(complete=True)
        logger.info("wrote %s (the sweep's cells and grids, for a rerun and for python -m ivmixed.evaluate)",
                    self.sweep_file)
        return report

    def baseline_text(self) -> str:
        """The baseline's label: the standard sampler, with the base guidance and steps when cells change them."""
        if self.grid.iv_mixed_only:
            return "baseline (standard sampler)"
        return (f"baseline (standard sampler, guidance {format_value(self.config.guidance_scale)}, "
                f"{self.config.inference_step} steps)")

    def _write_grids(self, prompt: PromptGrid) -> List[str]:
        from ..export import read_video, write_image, write_video

        folder, config = self.config.output_dir, self.config
        wanted = [name for name in (prompt.grid_video, prompt.grid_image)
                  if config.overwrite or not self._exists(name)]
        if not wanted:
            return []
        videos = [read_video(os.path.join(folder, o.files["iv_mix"])) for o in prompt.outputs]
        baseline = read_video(os.path.join(folder, prompt.baseline)) if prompt.baseline else None
        caption = self.caption(prompt.job)
        written = []
        if prompt.grid_video in wanted:
            frames = grid_video(self.grid, videos, baseline, self.baseline_lines(), caption)
            written.append(write_video(frames, os.path.join(folder, prompt.grid_video), config.fps))
        if prompt.grid_image in wanted:
            image = grid_sheet(self.grid, videos, baseline, self.baseline_text(), caption)
            written.append(write_image(image, os.path.join(folder, prompt.grid_image)))
        for path in written:
            logger.info("wrote %s", os.path.basename(path))
        return [os.path.basename(p) for p in written]

    def baseline_lines(self) -> List[str]:
        lines = ["baseline", "standard sampler"]
        if not self.grid.iv_mixed_only:
            lines += [f"guidance_scale={format_value(self.config.guidance_scale)}",
                      f"inference_step={self.config.inference_step}"]
        return lines

    def caption(self, job) -> str:
        """The prompt and every setting the sweep keeps fixed."""
        from ..compare import caption_prompt

        config = self.config
        settings = {k: v for k, v in self.given.settings().items() if k in SWEEP_KEYS and k not in self.grid.keys}
        fixed = ", ".join(f"{k} {'last step' if v is None else format_value(v)}" for k, v in settings.items())
        return (f"\"{caption_prompt(job.prompt)}\" | seed {job.seed} | {config.pipeline} | sweep "
                f"{self.grid.describe()} | fixed: {fixed}")

    def _write_sweep_file(self, complete: bool) -> None:
        from ..export import write_json

        config = self.config
        settings = {k: v for k, v in config.settings().items() if k not in ("prompt", "prompt_file", "negative_prompt")}
        data = {
            "kind": SWEEP_KIND,
            "version": 1,
            "fingerprint": self.fingerprint,
            "axes": self.grid.as_json(),
            "cells": [{"label": c.label, "values": c.values, "network_calls": c.calls} for c in self.cells],
            "baseline": None if config.no_standard else {
                "label": self.baseline_text(),
                "guidance_scale": config.guidance_scale, "inference_step": config.inference_step,
                "network_calls": self.baseline_calls, "shared_with_cells": self.with_standard},
            "base_settings": settings,
            "network_calls": {"per_prompt": self.cost.per_prompt, "total": self.cost.total},
            "prompts": [{
                "id": p.job.id or p.job.prefix(config.pipeline),
                "prompt": p.job.prompt,
                "negative_prompt": p.job.negative_prompt,
                "seed": p.job.seed,
                "fingerprint": p.fingerprint,
                "baseline": p.baseline,
                "baseline_fingerprint": p.baseline_fingerprint,
                "cells": [{"fingerprint": o.fingerprint, "iv_mix": o.files["iv_mix"], "record": o.files["record"]}
                          for o in p.outputs],
                "grid_video": p.grid_video,
                "grid_image": p.grid_image,
            } for p in self.prompts],
            "command_line": self.command_line,
            "complete": complete,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(data, os.path.join(config.output_dir, self.sweep_file))


def run_sweep(config: RunConfig, grid: GridLike, pipelines=None, **options) -> SweepReport:
    """Run a settings sweep (see :class:`Sweep` for the options); returns its :class:`SweepReport`.

    ``grid`` is a mapping ``{"zz": [1, 3, 1000], "interval_end": [10, 20]}`` or ``--sweep``-style strings.
    """
    return Sweep(config, grid, pipelines=pipelines, **options).run()
