"""A sweep's grid: ``KEY=V1,V2,...`` axes over the IV-mixed settings, guidance and steps, parsed and checked, and
each cell's run configuration."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..config import ALIASES, IV_MIXED_KEYS, SETTINGS, RunConfig, check, typed_value
from ..errors import SettingError, quote

SWEEP_KEYS = IV_MIXED_KEYS + ("guidance_scale", "inference_step")
MAX_CELLS = 64  # larger grids need max_cells (--max-cells): they cost hours at full size

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
    key = ALIASES.get(key, key)  # steps=10,20 as --steps spells inference_step
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
