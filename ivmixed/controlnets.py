"""ControlNets for a run: their sources checked before loading, loaded once into the pipeline (one module serves
the video UNet and the image UNet), their scales, and what the record and fingerprints say of them.

The pipeline side, residuals for every guided call, is :mod:`ivmixed.pipelines.control`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Sequence

from .errors import ModelLoadError, SettingError, quote_message
from .loading import check_local_sources, ensure_available

MARKER = "config.json"  # every diffusers ControlNet folder has it


def _items(sources: Sequence[str]):
    return [("ControlNet", source, "controlnet", MARKER) for source in sources]


def check_controlnet_sources(sources: Sequence[str], tiny: bool = False) -> None:
    """One-line refusals for ControlNet sources, before any model loads: a file (a diffusers folder or hub id is
    taken), a missing folder; with ``tiny``, anything but a local folder (only a ControlNet built for the tiny
    UNets fits them)."""
    for source in sources:
        path = os.path.expanduser(source)
        if os.path.isfile(path):
            raise SettingError(f"{{controlnet}} {quote_message(source, None)} is a file; give a diffusers ControlNet "
                               "folder or a hub id (such as lllyasviel/control_v11p_sd15_openpose)")
        if tiny and not os.path.isdir(path):
            raise SettingError("{tiny} runs random tiny UNets, which only a ControlNet built for them fits: give "
                               f"{{controlnet}} a local folder of one (ivmixed.testing.save_tiny_controlnet), not "
                               f"{quote_message(source, None)}")
    try:
        check_local_sources(_items(sources))
    except ModelLoadError as exc:
        raise SettingError(exc.template) from None


class ControlNetInput(NamedTuple):
    """One ControlNet of a run: its source, its control video and its strength."""

    source: str
    video: str
    scale: float


def scales(values: Sequence[str], count: int) -> List[float]:
    """The strength of each of ``count`` ControlNets: 1 each by default, one value for all, or one each."""
    numbers = [float(v) for v in values] or [1.0]
    return numbers * count if len(numbers) == 1 else numbers


def controlnet_inputs(config) -> List[ControlNetInput]:
    """The ControlNets of a checked run configuration, each with its control video and strength, in order."""
    return [ControlNetInput(*values) for values in zip(
        config.controlnet, config.controlnet_video, scales(config.controlnet_scale, len(config.controlnet)))]


def load_controlnets(pipe, sources: Sequence[str], dtype) -> List[Dict[str, Any]]:
    """Load each ControlNet and set it as ``pipe.controlnet`` (several as one ``MultiControlNetModel``); returns a
    record per ControlNet. Hub ids not cached while offline fail with one line before anything loads."""
    from diffusers import ControlNetModel

    from .loading import loading
    from .pipelines.control import controlnet_of

    ensure_available(_items(sources))  # local folders are skipped
    nets, records = [], []
    for source in sources:
        folder = os.path.expanduser(source)
        with loading("ControlNet", source, "controlnet"):
            net = ControlNetModel.from_pretrained(folder if os.path.isdir(folder) else source, dtype=dtype)
        nets.append(net.eval())
        records.append({"source": source, "parameters": sum(p.numel() for p in net.parameters())})
    pipe.register_modules(controlnet=controlnet_of(nets))
    return records
