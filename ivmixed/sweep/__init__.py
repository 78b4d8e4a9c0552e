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
against its text alignment (:func:`ivmixed.evaluate.plot_sweeps`).

The package: :mod:`.grid` (the axes and each cell's configuration), :mod:`.cost` (network calls),
:mod:`.run` (the cells, the baseline, the sweep file), :mod:`.images` (grid videos and PNGs) and :mod:`.files`
(reading sweep files back).
"""

from .cost import SweepCost
from .files import read_sweeps, sweep_baselines
from .grid import MAX_CELLS, SWEEP_KEYS, Axis, Grid, as_grid, cell_config, check_size, parse_sweep
from .images import grid_sheet, grid_video
from .run import Sweep, SweepReport, run_sweep

__all__ = ["Axis", "Grid", "MAX_CELLS", "SWEEP_KEYS", "Sweep", "SweepCost", "SweepReport", "as_grid", "cell_config",
           "check_size", "grid_sheet", "grid_video", "parse_sweep", "read_sweeps", "run_sweep", "sweep_baselines"]
