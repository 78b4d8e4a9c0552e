"""Finding the LoRA that ``lora`` names, without loading anything.

A name is looked up in ``lora/`` of the working directory, then in ``lora/`` beside the ``ivmixed`` package
(the clone's, when the tool runs from a clone or an editable install).
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

DEFAULT_SCALE = 0.75  # the converter's default merge ratio; also the default strength of direct loading
PACKAGE_LORA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lora")


def lora_search_dirs() -> List[str]:
    """Where named LoRAs are looked up, in order."""
    dirs = [os.path.abspath("lora"), PACKAGE_LORA_DIR]
    return list(dict.fromkeys(dirs))


def is_converted(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "unet", "config.json"))


def available_loras(dirs: Sequence[str]) -> List[str]:
    """The names a LoRA can be given by: ``.safetensors`` files and converted folders in ``dirs``."""
    names = set()
    for folder in dirs:
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.endswith(".safetensors"):
                names.add(entry[: -len(".safetensors")])
            elif is_converted(os.path.join(folder, entry)):
                names.add(entry)
    return sorted(names)


def resolve_lora(spec: str, lora_dirs: Optional[Sequence[str]] = None) -> Tuple[str, str]:
    """What ``spec`` names: ``("file", path)`` for a ``.safetensors`` file, ``("folder", path)`` for a folder
    converted by ``lora/convert_lora_safetensor_to_diffusers.py``.

    ``spec`` is a path to either, or a name: ``amechass`` means ``<dir>/amechass/`` (a converted folder) or else
    ``<dir>/amechass.safetensors``, for each of ``lora_dirs`` (default :func:`lora_search_dirs`) in turn.
    """
    dirs = list(lora_dirs) if lora_dirs is not None else lora_search_dirs()
    if os.path.isfile(spec):
        if not spec.endswith(".safetensors"):
            raise ValueError(f"LoRA file {spec} is not a .safetensors file (kohya/Civitai format expected)")
        return "file", spec
    candidates = [spec] + [os.path.join(d, spec) for d in dirs if not os.path.isabs(spec)]
    for folder in candidates:
        if os.path.isdir(folder):
            if not is_converted(folder):
                raise ValueError(f"{folder} is not a converted LoRA folder (no unet/config.json); "
                                 "make one with lora/convert_lora_safetensor_to_diffusers.py")
            return "folder", folder
    for d in dirs:
        named_file = os.path.join(d, spec + ".safetensors")
        if os.path.isfile(named_file):
            return "file", named_file
    if spec.endswith(".safetensors"):
        raise FileNotFoundError(f"LoRA file not found: {spec}")
    raise FileNotFoundError(
        f"LoRA {spec!r} not found: no such file or folder, nor a converted folder or .safetensors file of that name "
        f"in {' or '.join(dirs)}; available: {', '.join(available_loras(dirs)) or 'none'}"
    )
