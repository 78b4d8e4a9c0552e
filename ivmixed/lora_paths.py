"""Finding the LoRA that ``lora`` names, and checking it and the converter's paths, without loading anything.

A name is looked up in ``lora/`` of the working directory, then in ``lora/`` beside the ``ivmixed`` package
(the clone's, when the tool runs from a clone or an editable install). Nothing here imports torch, so the
command lines can refuse a bad LoRA or path in a moment, before any model loads.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import List, Optional, Sequence, Tuple

from .errors import SettingError, quote, quote_message

DEFAULT_SCALE = 0.75  # the converter's default merge ratio; also the default strength of direct loading
UNET_PREFIX = "lora_unet"  # kohya's key prefixes of the UNet and text-encoder layers
TEXT_ENCODER_PREFIX = "lora_te"
LORA_TARGETS = ("image", "video", "both")
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


# Bytes per element of the safetensors dtypes; a dtype not listed here is not size-checked.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers


def _safetensors_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a well-formed .safetensors file (None when it is), from its header alone: the
    length prefix, the JSON table and that the table's byte ranges fill the rest of the file exactly."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, too short for a header"
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                return f"header length {length} does not fit in the file's {size} bytes"
            raw = f.read(length)
    except PermissionError:
        raise
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        table = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its header is not JSON"
    if not isinstance(table, dict):
        return "its header is not a JSON object"
    data, end = size - 8 - length, 0
    tensors = 0
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = entry["data_offsets"]
            shape = [int(n) for n in entry["shape"]]
            dtype = entry["dtype"]
            if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            return f"its header entry {name!r} is malformed"
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and stop - start != math.prod(shape) * width:
            return f"tensor {name!r} has {stop - start} bytes for shape {shape} of {dtype}"
        end = max(end, stop)
        tensors += 1
    if end != data:
        return f"its tensors take {end} bytes but the file holds {data}; it may be cut short"
    if not tensors:
        return "it holds no tensors"
    return None


def check_lora_file(path: str) -> None:
    """Refuse a LoRA file that is missing, unreadable or not a well-formed .safetensors file, reading only its
    header: so a bad file is refused at once rather than after the models have loaded.

    Raises ``FileNotFoundError``, ``PermissionError`` or ``ValueError`` with a one-line message."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LoRA file not found: {path}")
    denied = PermissionError(f"cannot read the LoRA file {path} (permission denied); make it readable or pass "
                             "another file")
    if not os.access(path, os.R_OK):
        raise denied
    try:
        problem = _safetensors_problem(path)
    except PermissionError:
        raise denied from None
    if problem is not None:
        raise ValueError(f"{path} is not a readable .safetensors file ({problem}); download it again or pass "
                         "another file")


def check_lora(spec: str, target: str = "image", lora_dirs: Optional[Sequence[str]] = None) -> None:
    """Refuse, before any model loads, a LoRA that loading would refuse: one that cannot be found, a file that
    is unreadable or not a .safetensors file, or a converted folder for a target other than the image model
    (the folder replaces the image model whole). Raises :class:`~ivmixed.errors.SettingError` (a ``ValueError``)
    with one line, ``{lora}`` and ``{lora_target}`` templated as setting names."""
    if target not in LORA_TARGETS:
        raise SettingError(f"{{lora_target}} must be one of {', '.join(LORA_TARGETS)}, got {quote(target)}")
    try:
        kind, path = resolve_lora(spec, lora_dirs)
        if kind == "file":
            check_lora_file(path)
    except (OSError, ValueError) as exc:
        raise SettingError(f"{{lora}}: {quote_message(str(exc), None)}") from None
    if kind == "folder" and target != "image":
        raise SettingError(f"{{lora}} {quote_message(path, None)} is a converted Stable Diffusion folder and can "
                           f"only replace the image model, not {{lora_target}} {target}; use {{lora_target}} image, "
                           "or pass the LoRA's .safetensors file to apply it to the video model")


def missing_parents(path: str) -> List[str]:
    """The folders above ``path`` that do not exist yet, deepest first: the ones making it would create."""
    missing = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return missing


def check_dump_path(dump_path: str) -> None:
    """Refuse a converter output folder that exists or cannot be created, before anything is loaded."""
    if os.path.lexists(dump_path):
        raise FileExistsError(f"{dump_path} already exists; remove it or choose another --dump_path")
    missing = missing_parents(dump_path)
    existing = os.path.dirname(missing[-1]) if missing else os.path.dirname(os.path.abspath(dump_path))
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"--dump_path {dump_path}: {existing} is a file, not a folder; choose another "
                                 "--dump_path")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"--dump_path {dump_path}: cannot write in {existing}; choose another --dump_path")


def check_conversion(base_model_path: str, checkpoint_path: str, dump_path: str) -> None:
    """Everything about a conversion that can be refused before a model loads: the output folder, the LoRA file
    and a base model given as a folder that does not exist. Raises ``OSError``, ``ValueError`` or
    :class:`~ivmixed.errors.ModelLoadError` with one line."""
    from .loading import check_local_sources

    check_dump_path(dump_path)
    check_lora_file(checkpoint_path)
    check_local_sources([("base model", base_model_path, "base_model_path", "unet/config.json")])
