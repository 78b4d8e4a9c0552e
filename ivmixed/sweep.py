"""Settings sweeps: one prompt, one seed, a grid of settings, and a picture of quality against coherence.

A sweep runs the ordinary runner once per cell of a grid (the cartesian product of ``--sweep KEY=V1,V2,...``
axes over the IV-mixed settings, ``guidance_scale`` and ``inference_step``). Every cell is an ordinary output
set: fingerprinted, recorded in the manifest and resumable, so an interrupted sweep continues with the cells it
had not finished. Every cell starts from the same seed, hence the same noise.

The baseline is the standard video of the base configuration (the settings without the sweep), made once. For
axes over IV-mixed settings only, it is also every cell's own standard video (the standard video's fingerprint
leaves the IV-mixed settings out), so each cell's record lists it. Cells that change ``guidance_scale`` or
``inference_step`` would each have a standard video of their own; a sweep makes none of those (the cells run as
with ``no_standard``) and compares every cell with the base configuration's one.

Per prompt, a sweep writes a grid video (every cell tiled and labelled with its values, the baseline in a tile
of its own) and a grid PNG of frames; per sweep, ``sweep_<axes>_<fingerprint>.sweep.json`` lists the cells and
their files, for a rerun and for ``python -m ivmixed.evaluate``, which plots every cell's frame consistency
against its text alignment (:func:`plot_sweeps`).
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import math
import os
import re
import textwrap
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .config import IV_MIXED_KEYS, SETTINGS, RunConfig, check, typed_value
from .errors import SettingError, quote
from .evaluate import finite_mean
from .outputs import SHORT, fingerprint
from .sampler import count_network_calls

logger = logging.getLogger("ivmixed")

SWEEP_KEYS = IV_MIXED_KEYS + ("guidance_scale", "inference_step")
MAX_CELLS = 64  # larger grids need max_cells (--max-cells): they cost hours at full size
SWEEP_SUFFIX = ".sweep.json"
SWEEP_KIND = "ivmixed-sweep"
GRID_LAYOUT = 1  # change when the grid files' layout changes, so old grids are not passed off as current
MIN_TILE = 192  # grid video tiles narrower than this are enlarged (whole multiples: pixels stay sharp)
MAX_GRID_SIDE = 3840  # grid video tiles shrink so that the video stays within this many pixels a side
SHEET_TILE = (128, 256)  # grid PNG tiles are enlarged to at least / shrunk to at most this width
SHEET_FRAMES = 6  # frames per row of the grid PNG

Values = Dict[str, Any]


# -- the grid ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One swept setting and its values, in the order given."""

    key: str
    values: Tuple[Any, ...]


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep. The first axis runs along the grid's columns, the others down its rows."""

    axes: Tuple[Axis, ...]

    @property
    def keys(self) -> Tuple[str, ...]:
        return tuple(a.key for a in self.axes)

    @property
    def size(self) -> int:
        return math.prod(len(a.values) for a in self.axes)

    @property
    def columns(self) -> int:
        return len(self.axes[0].values)

    @property
    def rows(self) -> int:
        return self.size // self.columns

    def cells(self) -> List[Values]:
        """Every cell's values, row by row: the first axis changes fastest (across), then the second (down), ..."""
        rest = [a.values for a in reversed(self.axes[1:])]
        return [{self.axes[0].key: x, **dict(zip(self.keys[1:], reversed(others)))}
                for others in itertools.product(*rest) for x in self.axes[0].values]

    @property
    def iv_mixed_only(self) -> bool:
        return all(key in IV_MIXED_KEYS for key in self.keys)

    def describe(self) -> str:
        """``zz 1, 3, 1000 x interval_end 10, 20``; long value lists are cut short."""
        def values(axis: Axis) -> str:
            shown = [format_value(v) for v in axis.values]
            if len(shown) > 8:
                shown = shown[:6] + ["...", f"{shown[-1]} ({len(shown)} values)"]
            return ", ".join(shown)

        return " x ".join(f"{a.key} {values(a)}" for a in self.axes)

    def as_json(self) -> List[Dict[str, Any]]:
        return [{"key": a.key, "values": list(a.values)} for a in self.axes]


GridLike = Union[Grid, Mapping[str, Sequence[Any]], Sequence[str]]


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_label(values: Values, sep: str = ", ") -> str:
    return sep.join(f"{k}={format_value(v)}" for k, v in values.items())


def sweep_key(name: str, where: str) -> str:
    """A sweepable setting's name from any spelling (``interval-end``, ``--interval_end``)."""
    key = name.strip().lstrip("-").replace("-", "_")
    if key not in SWEEP_KEYS:
        what = "is not a setting" if key not in SETTINGS else "cannot be swept"
        raise SettingError(f"{where}: {quote(name.strip())} {what}; sweep one of {', '.join(SWEEP_KEYS)}")
    return key


def _parse_value(key: str, text: str, where: str) -> Any:
    kind = SETTINGS[key].type
    raw = text.strip()
    if kind is int:
        if not re.fullmatch(r"[+-]?\d+", raw):
            raise SettingError(f"{where}: {key} takes whole numbers, got {quote(raw)}")
        return int(raw)
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{where}: {key} takes numbers, got {quote(raw)}") from None
    if not math.isfinite(value):
        raise SettingError(f"{where}: {key} takes finite numbers, got {quote(raw)}")
    return value


def _axis(key: str, values: Iterable[Any], where: str) -> Axis:
    typed = []
    for value in values:
        if isinstance(value, str):
            if not value.strip():
                raise SettingError(f"{where}: an empty value; give values separated by commas, e.g. zz=1,3,1000")
            value = _parse_value(key, value, where)
        else:
            value = typed_value(key, value, where)
        if value in typed:
            raise SettingError(f"{where}: {key} value {format_value(value)} is given twice")
        typed.append(value)
    if not typed:
        raise SettingError(f"{where}: no values for {key}; give values separated by commas, e.g. zz=1,3,1000")
    return Axis(key, tuple(typed))


def parse_sweep(specs: Sequence[str]) -> Grid:
    """``["zz=1,1000", "interval-end=10,20"]`` (the ``--sweep`` values) as a :class:`Grid`, values typed as their
    settings; a :class:`~ivmixed.errors.SettingError` for anything malformed."""
    axes: List[Axis] = []
    for spec in specs:
        where = "{sweep} " + quote(spec).strip("'\"")
        name, sep, values = spec.partition("=")
        if not sep or not name.strip():
            raise SettingError(f"{where}: write KEY=V1,V2,... (e.g. zz=1,3,1000)")
        axes.append(_axis(sweep_key(name, where), values.split(","), where))
    return _grid(axes)


def _grid(axes: List[Axis]) -> Grid:
    if not axes:
        raise SettingError("a sweep needs at least one axis, e.g. {sweep} zz=1,3,1000")
    seen = set()
    for axis in axes:
        if axis.key in seen:
            raise SettingError(f"{{sweep}} over {axis.key} is given twice; list all its values in one KEY=V1,V2,...")
        seen.add(axis.key)
    return Grid(tuple(axes))


def as_grid(grid: GridLike) -> Grid:
    """A :class:`Grid` from a grid, a mapping ``{key: [values]}`` or ``--sweep``-style strings."""
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, Mapping):
        axes = []
        for name, values in grid.items():
            where = f"{{sweep}} {name}"
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                values = str(values).split(",") if isinstance(values, str) else [values]
            axes.append(_axis(sweep_key(name, where), values, where))
        return _grid(axes)
    if isinstance(grid, str):
        return parse_sweep([grid])
    return parse_sweep(list(grid))


def check_size(grid: Grid, max_cells: Optional[int]) -> None:
    """Refuse grids above :data:`MAX_CELLS` cells unless ``max_cells`` allows them."""
    if max_cells is not None and max_cells < 1:
        raise SettingError(f"{{max_cells}} must be at least 1, got {max_cells}")
    limit = MAX_CELLS if max_cells is None else max_cells
    if grid.size > limit:
        hint = (f"give {{max_cells}} {grid.size} to run it anyway" if max_cells is None
                else f"raise {{max_cells}} to {grid.size} or sweep fewer values")
        raise SettingError(f"the sweep has {grid.size} cells ({grid.describe()}), more than {limit}; {hint}")


def cell_config(base: RunConfig, values: Values, with_standard: bool) -> RunConfig:
    """The base configuration with one cell's values, checked like any configuration."""
    iv = {k: v for k, v in values.items() if k in IV_MIXED_KEYS}
    run = {k: v for k, v in values.items() if k not in IV_MIXED_KEYS}
    if not with_standard:
        run.update(no_standard=True, side_by_side=False)  # a side-by-side needs the cell's own standard video
    config = replace(base, iv_mixed=replace(base.iv_mixed, **iv), **run)
    try:
        check(config)
    except SettingError as exc:
        raise SettingError(f"{{sweep}} cell {cell_label(values)}: {exc.template}") from None
    return config


# -- cost ------------------------------------------------------------------------------------------------------


def calls(steps: int, settings) -> int:
    return sum(count_network_calls(steps, settings).values())


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
        if self.left != self.total:
            line += f"; {self.total - self.left:,} of them already made, {self.left:,} left"
        return line


# -- planning and running ---------------------------------------------------------------------------------


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
        from .runner import PipelineCache, Runner

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
                                       calls(runner.config.inference_step, runner.config.iv_mixed)))
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
        return calls(self.config.inference_step, None) if not self.config.no_standard else 0

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
        return SweepCost(self.grid, [c.calls for c in self.cells], self.baseline_calls, len(self.jobs), left, remade)

    def describe_cost(self) -> str:
        return self.cost.describe()

    # -- running -------------------------------------------------------------------------------------------

    def run(self) -> SweepReport:
        from .export import write_video

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
        for n, cell in enumerate(self.cells, 1):
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
        from .export import read_video, write_image, write_video

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
        config = self.config
        settings = {k: v for k, v in self.given.settings().items() if k in SWEEP_KEYS and k not in self.grid.keys}
        fixed = ", ".join(f"{k} {'last step' if v is None else format_value(v)}" for k, v in settings.items())
        return f"\"{job.prompt}\" | seed {job.seed} | {config.pipeline} | sweep {self.grid.describe()} | fixed: {fixed}"

    def _write_sweep_file(self, complete: bool) -> None:
        from .export import write_json

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


# -- drawing the grids -------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _fit(lines: Sequence[str], width: int, size: int):
    """The largest font up to ``size`` (at least 9 px) in which every line fits ``width`` pixels."""
    while True:
        font = _font(size)
        if size <= 9 or all(font.getlength(line) <= width for line in lines):
            return font
        size -= 1


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    whole = height % frames.shape[1] == 0 and width % frames.shape[2] == 0
    method = Image.NEAREST if whole else Image.LANCZOS
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), method)) for f in frames])


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def grid_tile_size(height: int, width: int, columns: int, rows: int) -> Tuple[int, int]:
    """Tile size in the grid video: small frames enlarged by a whole factor, large grids shrunk to fit."""
    scale = float(math.ceil(MIN_TILE / width)) if width < MIN_TILE else 1.0
    scale = min(scale, MAX_GRID_SIDE / (columns * width), MAX_GRID_SIDE / (rows * height * 1.25))
    return _even(height * scale), _even(width * scale)


def grid_video(grid: Grid, videos: Sequence[np.ndarray], baseline: Optional[np.ndarray],
               baseline_lines: Sequence[str], caption: str = "") -> np.ndarray:
    """Frames ``(f, H, W, 3)``: the cells' videos in the grid's layout (the first axis across, the others down),
    each under a label with its values; the baseline in a column of its own on the left."""
    from PIL import Image, ImageDraw

    from .export import to_uint8

    videos = [to_uint8(v) for v in videos]
    frames, h0, w0 = videos[0].shape[:3]
    lead = 1 if baseline is not None else 0
    columns, rows = grid.columns + lead, grid.rows
    th, tw = grid_tile_size(h0, w0, columns, rows)
    gap = max(4, tw // 24)
    labels = [[f"{k} = {format_value(v)}" for k, v in values.items()] for values in grid.cells()]
    all_lines = [line for tile in labels for line in tile] + list(baseline_lines if baseline is not None else [])
    font = _fit(all_lines, tw, max(12, min(28, tw // 12)))
    line = int(font.size * 1.3)
    band = line * max(len(t) for t in labels + ([list(baseline_lines)] if baseline is not None else [])) + gap // 2
    width = columns * tw + (columns + 1) * gap + (gap if lead else 0)
    cap_font = _font(max(12, min(24, width // 60)))
    cap_line = int(cap_font.size * 1.3)
    chars = max(20, int(width / (0.55 * cap_font.size)))
    cap_lines = textwrap.wrap(caption, chars) if caption else []
    top = gap + len(cap_lines) * cap_line + (gap if cap_lines else 0)
    height = top + rows * (band + th + gap)
    height, width = _even(height + 1), _even(width + 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, text in enumerate(cap_lines):
        draw.text((gap, gap + n * cap_line), text, fill=(0, 0, 0), font=cap_font)
    places: List[Tuple[int, int]] = []
    for index, tile_lines in enumerate(labels):
        r, c = divmod(index, grid.columns)
        x = gap + (c + lead) * (tw + gap) + (gap if lead else 0)
        y = top + r * (band + th + gap)
        for k, text in enumerate(tile_lines):
            draw.text((x, y + k * line), text, fill=(0, 0, 0), font=font)
        places.append((y + band, x))
    if lead:
        for k, text in enumerate(baseline_lines):
            draw.text((gap, top + k * line), text, fill=(160, 0, 0), font=font)
        sep = gap + tw + gap + gap // 2
        draw.line([(sep, top), (sep, height - gap)], fill=(170, 170, 170), width=max(1, gap // 4))
        places.append((top + band, gap))
        videos = videos + [to_uint8(baseline)]
    background = np.asarray(canvas)
    out = np.repeat(background[None], frames, axis=0)
    for (y, x), video in zip(places, videos):
        out[:, y:y + th, x:x + tw] = _resize(video[:frames], th, tw)
    return out


def grid_sheet(grid: Grid, videos: Sequence[np.ndarray], baseline: Optional[np.ndarray], baseline_label: str,
               caption: str = "", max_frames: int = SHEET_FRAMES) -> np.ndarray:
    """One PNG-ready image, contact-sheet style: a row of evenly spaced frames per cell, the baseline first,
    each row labelled with its values."""
    from .compare import frame_picks, grid_image
    from .export import to_uint8

    rows_videos = ([to_uint8(baseline)] if baseline is not None else []) + [to_uint8(v) for v in videos]
    names = ([baseline_label] if baseline is not None else []) + [cell_label(v) for v in grid.cells()]
    h, w = rows_videos[0].shape[1:3]
    if w < SHEET_TILE[0]:
        scale = float(math.ceil(SHEET_TILE[0] / w))
    else:
        scale = min(1.0, SHEET_TILE[1] / w)
    th, tw = _even(h * scale), _even(w * scale)
    picks = frame_picks(len(rows_videos[0]), max_frames)
    rows = [list(_resize(video[picks], th, tw)) for video in rows_videos]
    return grid_image(rows, names, [f"frame {i + 1}" for i in picks], caption)


# -- reading sweeps back: evaluation and the plot ----------------------------------------------------------


def read_sweeps(output_dir: str) -> List[Tuple[str, Dict[str, Any]]]:
    """``(file name, content)`` of every sweep file in ``output_dir``; unreadable ones are skipped with a warning."""
    out = []
    for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), "*" + SWEEP_SUFFIX))):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("kind") != SWEEP_KIND or not isinstance(data.get("prompts"), list):
                raise ValueError("not a sweep file")
        except (OSError, ValueError, AttributeError) as exc:
            logging.getLogger("ivmixed.evaluate").warning("skipping %s: %s", path, exc)
            continue
        out.append((os.path.basename(path), data))
    return out


def sweep_baselines(output_dir: str, entries: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Manifest-like entries for the sweeps' baseline videos that no manifest record lists (the baselines of
    sweeps over guidance or steps), so that evaluation scores them too."""
    listed = {e["files"].get("standard") for e in entries}
    out, seen = [], set()
    for _, data in read_sweeps(output_dir):
        for prompt in data["prompts"]:
            name = prompt.get("baseline")
            if isinstance(name, str) and name not in listed and name not in seen:
                seen.add(name)
                out.append({"id": prompt["id"], "prompt": prompt["prompt"], "seed": prompt.get("seed"),
                            "fingerprint": f"baseline:{name}", "files": {"standard": name}})
    return out


@dataclass
class SweepPlot:
    """A written plot: its file, the points table beside it, and the points as plotted, read back from the
    figure: ``(label, text alignment, frame consistency)``, the baseline last when there is one."""

    path: str
    table: str
    points: List[Tuple[str, float, float]]


def sweep_points(data: Dict[str, Any],
                 rows: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """Each cell's scores (the mean over the sweep's prompts) from evaluation rows, and the baseline's."""
    scores = {(r["variant"], r["file"]): r for r in rows}

    def point(label: str, variant: str, files: List[str], values: Values) -> Optional[Dict[str, Any]]:
        found = [scores[(variant, f)] for f in files if (variant, f) in scores]
        if not found:
            return None
        return {"label": label, **values, "clip_score": finite_mean([r["clip_score"] for r in found]),
                "frame_consistency": finite_mean([r["frame_consistency"] for r in found]), "videos": len(found)}

    points = []
    for index, cell in enumerate(data["cells"]):
        files = [p["cells"][index]["iv_mix"] for p in data["prompts"]]
        found = point(cell["label"], "iv_mix", files, cell["values"])
        if found is not None:
            points.append(found)
    baseline = None
    if data.get("baseline"):
        files = [p["baseline"] for p in data["prompts"] if p.get("baseline")]
        baseline = point("baseline", "standard", files, {})
    return points, baseline


# label offsets (points) and alignments tried in turn, so that labels do not cover each other
LABEL_PLACES = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"),
                (-6, -4, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
                (10, 14, "left", "bottom"), (10, -14, "left", "top"), (-10, 14, "right", "bottom"),
                (-10, -14, "right", "top")]


def _place_labels(ax, renderer, groups: List[Tuple[Tuple[float, float], str]]) -> None:
    """Annotate each point with its text at the first of :data:`LABEL_PLACES` that covers no earlier label and
    stays inside the axes (else the first place)."""
    inside = ax.get_window_extent(renderer)
    taken = []
    for xy, text in groups:
        for n, (dx, dy, ha, va) in enumerate(LABEL_PLACES):
            note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                               zorder=4)
            box = note.get_window_extent(renderer)
            fits = inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
            if fits and not any(box.overlaps(other) for other in taken):
                break
            note.remove()
        else:
            dx, dy, ha, va = LABEL_PLACES[0]
            note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8,
                               zorder=4)
            box = note.get_window_extent(renderer)
        taken.append(box)


def plot_sweep(data: Dict[str, Any], rows: Sequence[Dict[str, Any]], path: str) -> Optional[SweepPlot]:
    """Plot frame consistency (y) against text alignment (x), one labelled point per cell (coloured by the first
    axis's value) and the baseline marked; write the points as a CSV beside it. ``None`` when no cell has scores
    yet. Cells with equal scores share one label."""
    import csv

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .export import atomic_path

    points, baseline = sweep_points(data, rows)
    drawn = [p for p in points + ([baseline] if baseline else [])
             if not (math.isnan(p["clip_score"]) or math.isnan(p["frame_consistency"]))]
    if not any(p is not baseline for p in drawn):
        return None
    figure = Figure(figsize=(8, 6), dpi=110)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    keys = [a["key"] for a in data["axes"]]
    first = data["axes"][0]
    cmap = matplotlib.colormaps["viridis"]

    def colour(value) -> Any:
        return cmap(0.1 + 0.8 * first["values"].index(value) / max(1, len(first["values"]) - 1))

    groups: Dict[Tuple[float, float], List[str]] = {}
    for p in drawn:
        xy = (p["clip_score"], p["frame_consistency"])
        if p is baseline:
            ax.scatter(*([v] for v in xy), marker="*", s=260, color="#c0392b", edgecolor="black", linewidth=0.6,
                       zorder=3)
        else:
            ax.scatter(*([v] for v in xy), s=55, color=colour(p[first["key"]]), edgecolor="black", linewidth=0.5,
                       zorder=2)
        groups.setdefault((round(xy[0], 6), round(xy[1], 6)), []).append(p["label"])
    prompts = data["prompts"]
    if len(prompts) == 1:
        about = f"\"{textwrap.shorten(prompts[0]['prompt'], 70)}\""
    else:
        about = f"mean over {len(prompts)} prompts"
    ax.set_title(f"Sweep {' x '.join(keys)}: quality vs coherence\n{about}", fontsize=10)
    ax.set_xlabel("text alignment (CLIP score: prompt vs frames, x100)")
    ax.set_ylabel("frame consistency (CLIP: frame vs next, x100)")
    ax.grid(True, alpha=0.3)
    ax.margins(0.2)
    handles = [Line2D([], [], marker="o", linestyle="", color=colour(v), markeredgecolor="black",
                      label=f"{first['key']}={format_value(v)}") for v in first["values"]]
    if baseline:
        handles.append(Line2D([], [], marker="*", markersize=12, linestyle="", color="#c0392b",
                              markeredgecolor="black", label="baseline (standard sampler)"))
    ax.legend(handles=handles, loc="best", fontsize=8)
    figure.tight_layout()
    canvas.draw()  # fixes the limits and the layout, so label boxes can be measured
    _place_labels(ax, canvas.get_renderer(), [(xy, "\n".join(labels)) for xy, labels in groups.items()])
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plotted = [(p["label"], float(c.get_offsets()[0][0]), float(c.get_offsets()[0][1]))
               for p, c in zip(drawn, ax.collections)]
    table = os.path.splitext(path)[0].rsplit("_plot", 1)[0] + "_points.csv"
    with atomic_path(table) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["label", *keys, "clip_score", "frame_consistency", "videos"],
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(points + ([baseline] if baseline else []))
    return SweepPlot(path, table, plotted)


def plot_sweeps(output_dir: str, rows: Sequence[Dict[str, Any]]) -> List[SweepPlot]:
    """A plot (``<sweep>_plot.png``) and points table (``<sweep>_points.csv``) per sweep file in ``output_dir``."""
    plots = []
    for name, data in read_sweeps(output_dir):
        stem = name[: -len(SWEEP_SUFFIX)]
        plot = plot_sweep(data, rows, os.path.join(output_dir, f"{stem}_plot.png"))
        if plot is not None:
            plots.append(plot)
    return plots


__all__ = ["Axis", "Grid", "MAX_CELLS", "SWEEP_KEYS", "Sweep", "SweepCost", "SweepPlot", "SweepReport", "as_grid",
           "check_size", "grid_sheet", "grid_video", "parse_sweep", "plot_sweep", "plot_sweeps", "read_sweeps",
           "run_sweep", "sweep_baselines", "sweep_points"]
