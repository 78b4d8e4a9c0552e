"""Single-file checkpoints (``.safetensors``, or ``.ckpt`` read as weights only): what a file holds, from its
header, before anything loads; and its weights in diffusers components built from a diffusers checkpoint's configs.

Which settings take one: every pipeline's ``image_model`` and Animatediff's ``video_model`` (a Stable Diffusion
1.5-family checkpoint in the original layout, as Civitai shares them: the UNet under ``model.diffusion_model.``, the
CLIP text encoder under ``cond_stage_model.transformer.``, the VAE under ``first_stage_model.``), Animatediff's
``motion_adapter`` (AnimateDiff motion modules in the original layout, or a diffusers ``MotionAdapter`` state dict
such as AnimateDiff-Lightning's ``*_diffusers.safetensors``) and ``vae``. A source spelled
``owner/repo/name.safetensors`` that is no local file is a file in a hub repository, fetched through the hub cache.

A file holds weights, not an architecture. The configs come from a diffusers checkpoint: ``image_model_config`` /
``video_model_config`` when given, else the pipeline's default checkpoint for that setting (from the local hub
cache; online, only its ``*.json``/``*.txt`` files are downloaded). A motion adapter's shape is read from its
tensors, its attention heads and norm groups from the default motion adapter's config when cached (AnimateDiff's
8 and 32 otherwise). A single-file ``vae`` takes the video model's own VAE config.

Checking a file reads only the safetensors header (no torch) or, for a ``.ckpt``, its pickle with
``torch.load(weights_only=True, mmap=True)``; a file that is not what its setting takes (a LoRA, an SDXL or SD 2
checkpoint, motion modules as an image model, a file cut short, a pickle of other objects) is refused with one line.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .errors import ModelLoadError, quote_message
from .loading import (cached_file, check_local_sources, ensure_available, hub_file, hub_offline, is_cached,
                      is_single_file, looks_like_path, single_file_keys, unavailable_message)

UNET_PREFIX = "model.diffusion_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
VAE_PREFIXES = ("first_stage_model.", "vae.")
PART_PREFIXES = {"unet": (UNET_PREFIX,), "text_encoder": (TEXT_ENCODER_PREFIX,), "vae": VAE_PREFIXES}
PART_NAMES = {"unet": "UNet", "text_encoder": "text encoder", "vae": "VAE"}
# The files of a diffusers checkpoint each part is built from.
PART_CONFIGS = {
    "unet": ("unet/config.json",),
    "text_encoder": ("text_encoder/config.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
                     "tokenizer/merges.txt"),
    "vae": ("vae/config.json",),
    "scheduler": ("scheduler/scheduler_config.json",),
}
SD15 = "Stable Diffusion 1.5-family checkpoint"
MOTION = "AnimateDiff motion modules"
VAE = "VAE"
UNSAFE_PICKLE = "which are not loaded because a pickle can run code"
_CROSS_ATTENTION = re.compile(r"attn2\.to_k\.weight$")


# -- what a setting takes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSlot:
    """What one setting takes as a single file: ``takes`` is :data:`SD15`, :data:`MOTION` or :data:`VAE`;
    ``parts`` the components a Stable Diffusion file must hold for it; ``configs`` the diffusers config files
    they are built from, found in the checkpoint that ``config_key`` names."""

    takes: str
    parts: Tuple[str, ...] = ()
    configs: Tuple[str, ...] = ()
    config_key: Optional[str] = None


def _sd_slot(parts: Tuple[str, ...], config_key: str, scheduler: bool = False) -> FileSlot:
    names = parts + (("scheduler",) if scheduler else ())
    return FileSlot(SD15, parts, tuple(f for p in names for f in PART_CONFIGS[p]), config_key)


# Animatediff's image UNet shares the video model's text encoder: only the UNet comes from its file.
IMAGE_UNET = _sd_slot(("unet",), "image_model_config")
IMAGE_MODEL = _sd_slot(("unet", "text_encoder"), "image_model_config")
SD_BASE = _sd_slot(("unet", "text_encoder", "vae"), "video_model_config", scheduler=True)
MOTION_ADAPTER = FileSlot(MOTION)
VAE_FILE = FileSlot(VAE)


def file_slot(spec, key: str, vae_given: bool = False) -> Optional[FileSlot]:
    """What setting ``key`` of pipeline ``spec`` (a :class:`~ivmixed.registry.PipelineSpec`) takes as a single
    file, or ``None`` where it takes only folders and hub ids. With a ``vae`` given, a base needs no VAE weights."""
    if key not in single_file_keys(spec):
        return None
    animatediff = spec.takes("motion_adapter")  # an SD 1.5 base with motion modules
    if key == "vae":
        return VAE_FILE
    if key == "image_model":
        return IMAGE_UNET if animatediff else IMAGE_MODEL
    if key == "video_model" and animatediff:
        return replace(SD_BASE, parts=("unet", "text_encoder")) if vae_given else SD_BASE
    return MOTION_ADAPTER


def config_source(spec, key: str, given: Optional[str] = None) -> str:
    """The checkpoint whose configs build a single-file ``key``: ``given``, else the pipeline's default."""
    return given or spec.checkpoint(key).default


# -- what a file holds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileContents:
    """What a checkpoint file looks like: ``kind`` (a key of :data:`KINDS`), ``detail`` (the evidence, for
    messages), and for Stable Diffusion checkpoints the parts it holds and its UNet's input channels and
    cross-attention width."""

    kind: str
    detail: str = ""
    parts: FrozenSet[str] = field(default_factory=frozenset)
    in_channels: Optional[int] = None
    cross_attention_dim: Optional[int] = None

    def describe(self) -> str:
        text = KINDS[self.kind]
        if self.kind == "sd1" and self.in_channels not in (None, 4):
            text = f"a Stable Diffusion 1.x inpainting or other {self.in_channels}-channel checkpoint"
        return text + (f" ({self.detail})" if self.detail else "")


KINDS = {
    "sd1": "a Stable Diffusion 1.x checkpoint",
    "sd2": "a Stable Diffusion 2.x checkpoint",
    "sdxl": "an SDXL checkpoint",
    "sd3": "a Stable Diffusion 3 checkpoint",
    "flux": "a Flux checkpoint",
    "lora": "a LoRA",
    "motion": "AnimateDiff motion modules",
    "vae": "a VAE",
    "diffusers_unet": "the weights file of a diffusers-layout UNet",
    "text_encoder": "a CLIP text encoder",
    "unknown": "no checkpoint layout this tool knows",
}


def _first(keys: Sequence[str], test: Callable[[str], bool]) -> Optional[str]:
    return next((k for k in keys if test(k)), None)


def classify(shapes: Mapping[str, Sequence[int]]) -> FileContents:
    """What a state dict (tensor name -> shape) looks like, by its key names and a few shapes."""
    keys = sorted(shapes)
    lora = _first(keys, lambda k: "lora" in k.lower() or ".hada_" in k or ".lokr_" in k)
    if lora is not None:
        return FileContents("lora", f"keys like {quote_message(lora, 60)}")
    if _first(keys, lambda k: ".motion_modules." in k or k.startswith("motion_modules.")):
        layout = "original layout" if _first(keys, lambda k: ".temporal_transformer." in k) else "diffusers layout"
        return FileContents("motion", layout)
    if _first(keys, lambda k: k.startswith(("joint_blocks.", UNET_PREFIX + "joint_blocks."))):
        return FileContents("sd3", "joint_blocks.* keys")
    if _first(keys, lambda k: k.startswith(("double_blocks.", UNET_PREFIX + "double_blocks."))):
        return FileContents("flux", "double_blocks.* keys")
    unet = [k for k in keys if k.startswith(UNET_PREFIX)]
    if unet:
        attention = _first(unet, lambda k: bool(_CROSS_ATTENTION.search(k)))
        width = int(shapes[attention][1]) if attention and len(shapes[attention]) == 2 else None
        conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
        in_channels = int(conv_in[1]) if conv_in is not None and len(conv_in) == 4 else None
        if _first(keys, lambda k: k.startswith("conditioner.embedders.")) or width == 2048:
            return FileContents("sdxl", "conditioner.embedders.* keys" if width != 2048 else "cross-attention 2048")
        if _first(keys, lambda k: k.startswith("cond_stage_model.model.")) or width == 1024:
            return FileContents("sd2", "an OpenCLIP text encoder" if width != 1024 else "cross-attention 1024")
        parts = {"unet"}
        if _first(keys, lambda k: k.startswith(TEXT_ENCODER_PREFIX)):
            parts.add("text_encoder")
        if _first(keys, lambda k: k.startswith(VAE_PREFIXES)):
            parts.add("vae")
        return FileContents("sd1", "", frozenset(parts), in_channels, width)
    bare = list(_strip(dict.fromkeys(keys), VAE_PREFIXES))
    if _first(bare, lambda k: k.startswith("encoder.")) and _first(bare, lambda k: k.startswith("decoder.")):
        return FileContents("vae", "encoder.*/decoder.* keys")
    if "conv_in.weight" in shapes and _first(keys, lambda k: k.startswith("down_blocks.")):
        return FileContents("diffusers_unet", "down_blocks.* keys")
    if _first(keys, lambda k: k.startswith(("text_model.", "embeddings.token_embedding", TEXT_ENCODER_PREFIX))):
        return FileContents("text_encoder", "text_model.* keys")
    return FileContents("unknown", "first keys: " + ", ".join(quote_message(k, 60) for k in keys[:2]))


def _safetensors_shapes(path: str) -> Tuple[Optional[Dict[str, Tuple[int, ...]]], Optional[str]]:
    from .lora_paths import _safetensors_problem  # the header check LoRA files get

    try:
        problem = _safetensors_problem(path)
        if problem is not None:
            return None, f"it is not a readable .safetensors file: {problem}"
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            table = json.loads(f.read(length).decode("utf-8"))
    except PermissionError:
        return None, "it cannot be read (permission denied)"
    except (OSError, ValueError) as exc:
        return None, f"it is not a readable .safetensors file: {quote_message(str(exc), 100)}"
    return {k: tuple(int(n) for n in v["shape"]) for k, v in table.items() if k != "__metadata__"}, None


def load_pickle_state(path: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """A ``.ckpt``'s tensors by name (a ``state_dict`` inside is unwrapped), loaded with ``weights_only=True``
    (memory-mapped when the file is a zip archive); or ``None`` and why it is no dict of tensors."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except PermissionError:
        return None, "it cannot be read (permission denied)"
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, KeyError, EOFError on bad files
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsafe:
            return None, (f"its pickle holds objects other than tensors ({quote_message(unsafe.group(1), 60)}), "
                          f"{UNSAFE_PICKLE}")
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in text:
            text = "a malformed pickle"
        return None, f"it is not a readable PyTorch checkpoint ({quote_message(text, 100)}); it may be cut short"
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        return None, f"its pickle holds a {type(obj).__name__}, not a dict of tensors"
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        return None, "its pickle holds no tensors"
    return tensors, None


def read_contents(path: str) -> Tuple[Optional[FileContents], Optional[str]]:
    """What the checkpoint file ``path`` holds, from its header; or ``None`` and why it cannot be read."""
    if path.lower().endswith(".safetensors"):
        shapes, problem = _safetensors_shapes(path)
    else:
        state, problem = load_pickle_state(path)
        shapes = None if state is None else {k: tuple(v.shape) for k, v in state.items()}
    if shapes is None:
        return None, problem
    if not shapes:
        return None, "it holds no tensors"
    return classify(shapes), None


_EXPECTED = {SD15: "a Stable Diffusion 1.5-family checkpoint", MOTION: "AnimateDiff motion modules", VAE: "a VAE"}


def _hint(kind: str, slot: FileSlot, animatediff: bool) -> str:
    if kind == "lora":
        if slot.takes == SD15 and slot.config_key == "image_model_config":
            return "; give a LoRA with {lora}"
        return "; give a LoRA for the video model with {motion_lora}" if animatediff else ""
    if kind == "motion" and animatediff:
        return "; give motion modules with {motion_adapter}"
    if kind == "vae" and slot.takes != VAE:
        return "; give a VAE with {vae}"
    if kind == "sd1" and slot.takes == MOTION:
        return "; give a Stable Diffusion 1.5 checkpoint as {video_model} or {image_model}"
    if kind in ("sd2", "sdxl", "sd3", "flux"):
        return "; use a model fine-tuned from Stable Diffusion 1.5"
    if kind == "diffusers_unet":
        return "; give the diffusers checkpoint folder it belongs to"
    return ""


def checkpoint_problem(path: str, slot: FileSlot, key: str, animatediff: bool = True,
                       name: Optional[str] = None) -> Optional[str]:
    """Why the file ``path`` cannot be what setting ``key`` takes (``slot``, see :func:`file_slot`), as one line
    (a template: ``{key}`` names the setting) that calls the file ``name`` (default ``path``); ``None`` when it is.
    Reads only a safetensors header, or a ``.ckpt``'s pickle memory-mapped (:func:`read_contents`)."""
    shown = quote_message(name or path, None)
    contents, problem = read_contents(path)
    if contents is None:
        fix = "use a .safetensors version of it" if UNSAFE_PICKLE in problem else "download it again"
        return f"{{{key}}} {shown}: {problem}; {fix} or pass another file"
    expected = _EXPECTED[slot.takes]
    wrong = f"{{{key}}} {shown} looks like {contents.describe()}, not {expected}"
    if slot.takes == SD15:
        if contents.kind != "sd1" or contents.in_channels not in (None, 4):
            return wrong + _hint(contents.kind, slot, animatediff)
        missing = [p for p in slot.parts if p not in contents.parts]
        if missing:
            names = " and ".join(f"{PART_NAMES[p]} weights ({PART_PREFIXES[p][0]}*)" for p in missing)
            fix = "; give a VAE with {vae}" if missing == ["vae"] else "; give a full checkpoint"
            return f"{{{key}}} {shown} is a Stable Diffusion 1.x checkpoint without {names}{fix}"
        return None
    if slot.takes == MOTION:
        return None if contents.kind == "motion" else wrong + _hint(contents.kind, slot, animatediff)
    if contents.kind == "vae" or (contents.kind == "sd1" and "vae" in contents.parts):
        return None
    return wrong + _hint(contents.kind, slot, animatediff)


def _config_mismatch(path: str, name: str, folder: str, key: str, config_key: str, source: str) -> Optional[str]:
    """Why a Stable Diffusion file's UNet does not fit the UNet config in ``folder``, when its header shows it."""
    contents, _ = read_contents(path)
    try:
        with open(os.path.join(folder, "unet", "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None  # loading says what is wrong with it
    for setting, have in (("cross_attention_dim", contents.cross_attention_dim if contents else None),
                          ("in_channels", contents.in_channels if contents else None)):
        want = config.get(setting) if isinstance(config, dict) else None
        if have is not None and isinstance(want, int) and have != want:
            return (f"{{{key}}} {quote_message(name, None)} has a UNet {setting} of {have}, but the configs it is "
                    f"built from ({{{config_key}}} {quote_message(source, None)}) say {want}; pass the configs of the "
                    f"model it was made from with {{{config_key}}}")
    return None


# -- checking before loading ---------------------------------------------------------------------------------


def _snapshot_folder(path: str, name: str) -> str:
    for _ in name.split("/"):
        path = os.path.dirname(path)
    return path


def local_config_folder(source: str, files: Sequence[str]) -> Optional[str]:
    """A local folder holding ``files`` of config source ``source``: the folder itself, or the hub cache's
    snapshot; ``None`` when the cache does not hold them all."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return path
    found = [cached_file(source, name) for name in files]
    if not files or not all(found):
        return None
    return _snapshot_folder(found[0], files[0])


def _check_config_source(what: str, source: str, slot: FileSlot) -> Optional[Tuple[str, str, str, Tuple[str, ...]]]:
    """Refuse a config source that is a file or a folder without the configs ``slot`` needs; return it as a hub
    item for :func:`~ivmixed.loading.ensure_available` when it is a hub id."""
    key, path = slot.config_key, os.path.expanduser(source)
    shown = quote_message(source, None)
    if os.path.isfile(path):
        raise ModelLoadError(f"{{{key}}} {shown} is a file; give the diffusers checkpoint folder or hub id whose "
                             f"configs build the single-file {what}")
    if os.path.isdir(path):
        absent = [name for name in slot.configs if not os.path.isfile(os.path.join(path, name))]
        if absent:
            raise ModelLoadError(f"{{{key}}} {shown} has no {absent[0]}; give a Stable Diffusion 1.5 checkpoint folder "
                                 f"in the diffusers layout ({', '.join(sorted({n.split('/')[0] for n in slot.configs}))})")
        return None
    if looks_like_path(source):
        raise ModelLoadError(f"{{{key}}} {source}: no such folder; give an existing checkpoint folder or a hub id")
    return (f"configs for the single-file {what}", source, key, slot.configs)


def cached_path(source: str) -> Optional[str]:
    """The local path of a single-file source: the file, or a hub file from the local cache (``None`` if not there)."""
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return path
    spot = hub_file(source)
    return cached_file(*spot) if spot is not None else None


def check_sources(spec, sources: Mapping[str, str], vae: Optional[str] = None, image_model_config: Optional[str] = None,
                  video_model_config: Optional[str] = None, require_cached_configs: bool = False
                  ) -> Tuple[List[Tuple[str, str, str, Any]], Tuple[str, ...]]:
    """Check a pipeline's checkpoint sources without loading anything, and return what must come from the hub.

    Folders must exist; single files (where a setting takes them, :func:`file_slot`) must be readable checkpoints
    of the setting's kind (:func:`checkpoint_problem`; a hub file only once cached), and the configs each is built
    from must be a checkpoint folder holding them or a hub id. Raises :class:`~ivmixed.errors.ModelLoadError`
    with one line. Returns the hub items (for :func:`~ivmixed.loading.ensure_available`) and the settings that
    take files. ``require_cached_configs``: while ``HF_HUB_OFFLINE`` is set, a config source or ``vae`` that is not
    cached is refused now (the run configuration's check; checkpoints are looked up as the run loads them)."""
    configs = {"image_model": image_model_config, "video_model": video_model_config}
    items = [(c.what, sources[c.key], c.key, c.marker) for c in spec.checkpoints]
    if vae is not None:
        items.append(("VAE", vae, "vae", _vae_marker(vae)))
    file_keys = single_file_keys(spec)
    check_local_sources(items, file_keys)
    hub = [item for item in items if not os.path.exists(os.path.expanduser(item[1]))]
    animatediff = spec.takes("motion_adapter")
    for what, source, key, _ in items:
        if key not in file_keys or not is_single_file(source):
            continue
        slot = file_slot(spec, key, vae_given=vae is not None)
        path = cached_path(source)
        if path is not None:
            problem = checkpoint_problem(path, slot, key, animatediff, source)
            if problem:
                raise ModelLoadError(problem)
        if slot.config_key is None:
            continue
        cfg = config_source(spec, key, configs.get(key))
        item = _check_config_source(what, cfg, slot)
        if item is not None:
            hub.append(item)
        folder = local_config_folder(cfg, slot.configs)
        if path is not None and folder is not None:
            problem = _config_mismatch(path, source, folder, key, slot.config_key, cfg)
            if problem:
                raise ModelLoadError(problem)
    if vae is not None and is_single_file(vae) and not is_single_file(sources["video_model"]):
        video = os.path.expanduser(sources["video_model"])
        if os.path.isdir(video) and not os.path.isfile(os.path.join(video, "vae", "config.json")):
            raise ModelLoadError(f"the single-file {{vae}} is built with the video model's VAE config, and {{video_model}} "
                                 f"{quote_message(sources['video_model'], None)} has no vae/config.json; give a "
                                 "VAE folder or hub id with {vae}")
    if require_cached_configs and hub_offline():  # the settings beside the checkpoints: configs and a VAE
        missing = [item for item in hub if (item[2] == "vae" or isinstance(item[3], tuple))
                   and not is_cached(item[1], item[3])]
        if missing:
            raise ModelLoadError(unavailable_message(missing))
    return hub, file_keys


def ensure_sources(spec, vae: Optional[str] = None, image_model_config: Optional[str] = None,
                   video_model_config: Optional[str] = None, **sources: str) -> None:
    """:func:`check_sources`, then :func:`~ivmixed.loading.ensure_available` over what must come from the hub:
    one :class:`~ivmixed.errors.ModelLoadError` before anything loads (what each ``from_checkpoints`` calls)."""
    hub, file_keys = check_sources(spec, sources, vae=vae, image_model_config=image_model_config,
                                   video_model_config=video_model_config)
    ensure_available(hub, file_keys)


def _vae_marker(source: str) -> str:
    """A VAE hub id is a diffusers VAE (``config.json``) or a whole Stable Diffusion checkpoint (``vae/``)."""
    if cached_file(source, "config.json") is None and cached_file(source, "vae/config.json") is not None:
        return "vae/config.json"
    return "config.json"


# -- loading ---------------------------------------------------------------------------------------------------


def resolve_config(source: str, slot: FileSlot, what: str) -> str:
    """A local folder with the configs ``slot`` needs, from ``source``: the folder, the hub cache's snapshot of a
    hub id, or, online, its ``*.json``/``*.txt`` files downloaded into the cache (never any weights)."""
    folder = local_config_folder(source, slot.configs)
    if folder is not None:
        return folder
    item = (f"configs for the single-file {what}", source, slot.config_key, slot.configs)
    if hub_offline():
        raise ModelLoadError(unavailable_message([item]))
    from huggingface_hub import snapshot_download

    subfolders = sorted({name.rsplit("/", 1)[0] for name in slot.configs})
    patterns = [f"{sub}/*.{ext}" for sub in subfolders for ext in ("json", "txt")]
    try:
        return snapshot_download(source, allow_patterns=patterns)
    except Exception as exc:
        reason = quote_message(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise ModelLoadError(f"could not download the configs for the single-file {what} from '{source}' ({reason}); "
                             f"pass a local checkpoint folder with {{{slot.config_key}}}") from exc


def fetch_file(source: str, slot: FileSlot, key: str, animatediff: bool = True) -> str:
    """The local path of single-file ``source`` (a hub file is fetched through the hub cache), checked to be what
    ``slot`` takes."""
    path = os.path.expanduser(source)
    if not os.path.isfile(path):
        from huggingface_hub import hf_hub_download

        repo, name = hub_file(source)
        path = hf_hub_download(repo, name)
    problem = checkpoint_problem(path, slot, key, animatediff, source)
    if problem:
        raise ModelLoadError(problem)
    return path


def read_state_dict(path: str, keep: Callable[[str], bool] = lambda key: True) -> Dict[str, Any]:
    """The tensors of checkpoint file ``path`` whose names ``keep`` accepts (a ``.ckpt`` as weights only)."""
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    state, problem = load_pickle_state(path)
    if state is None:
        raise ModelLoadError(f"{quote_message(path, None)}: {problem}")
    return {k: v for k, v in state.items() if keep(k)}


def _empty(build: Callable[[], Any]):
    """A model built with its parameters on the meta device (buffers real), to be filled by :func:`_fill`."""
    try:
        from accelerate import init_empty_weights
    except ImportError:  # without accelerate the parameters are made (and overwritten)
        return build()
    with init_empty_weights():
        return build()


def _fill(model, weights: Mapping[str, Any], dtype, what: str, source: str, key: str, fits: str):
    """``model`` with ``weights`` as its parameters (every one must be there, at its shape), in ``dtype``."""
    expected = model.state_dict()
    params = [name for name, _ in model.named_parameters()]
    missing = [name for name in params if name not in weights]
    shown = quote_message(source, None)
    if missing:
        raise ModelLoadError(f"{{{key}}} {shown} has no weights for {len(missing)} of the {what}'s {len(params)} "
                             f"parameters (e.g. {missing[0]}){fits}")
    for name, tensor in weights.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelLoadError(f"{{{key}}} {shown}: the {what}'s {name} has shape {list(tensor.shape)} where "
                                 f"{list(expected[name].shape)} is needed{fits}")
    model.load_state_dict({n: t.contiguous() for n, t in weights.items() if n in expected}, strict=False, assign=True)
    return model.to(dtype).eval()


def _strip(weights: Mapping[str, Any], prefixes: Sequence[str]) -> Dict[str, Any]:
    return {next((k[len(p):] for p in prefixes if k.startswith(p)), k): v for k, v in weights.items()}


def load_sd_file(source: str, spec, key: str, config: Optional[str], dtype, parts: Sequence[str],
                 scheduler: bool = False) -> Dict[str, Any]:
    """The components ``parts`` (``unet``, ``text_encoder`` with its ``tokenizer``, ``vae``) and, with
    ``scheduler``, the scheduler of a single-file Stable Diffusion checkpoint given for setting ``key`` of
    pipeline ``spec``, built from the configs of ``config`` (default: the pipeline's checkpoint for ``key``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)

    slot = file_slot(spec, key, vae_given="vae" not in parts)
    what = spec.checkpoint(key).what
    path = fetch_file(source, slot, key, spec.takes("motion_adapter"))
    cfg = config_source(spec, key, config)
    folder = resolve_config(cfg, slot, what)
    fits = (f"; the file does not fit the architecture of {{{slot.config_key}}} {quote_message(cfg, None)}: pass the "
            f"configs of the model it was made from with {{{slot.config_key}}}")
    prefixes = tuple(p for part in parts for p in PART_PREFIXES[part])
    weights = read_state_dict(path, lambda k: k.startswith(prefixes))
    out: Dict[str, Any] = {}
    if "unet" in parts:
        unet = _empty(lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")))
        converted = convert_ldm_unet_checkpoint(weights, unet.config)
        out["unet"] = _fill(unet, converted, dtype, f"{what} UNet", source, key, fits)
    if "text_encoder" in parts:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        text_config = CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")
        encoder = _empty(lambda: CLIPTextModel(text_config))
        converted = convert_ldm_clip_checkpoint(weights)
        if not any(k.startswith("text_model.") for k in encoder.state_dict()):  # transformers' flat CLIP
            converted = _strip(converted, ("text_model.",))
        out["text_encoder"] = _fill(encoder, converted, dtype, f"{what} text encoder", source, key, fits)
        out["tokenizer"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    if "vae" in parts:
        vae = _empty(lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")))
        converted = convert_ldm_vae_checkpoint(weights, vae.config)
        out["vae"] = _fill(vae, converted, dtype, f"{what} VAE", source, key, fits)
    if scheduler:
        import diffusers

        scheduler_config = diffusers.DDIMScheduler.load_config(folder, subfolder="scheduler")
        scheduler_class = getattr(diffusers, str(scheduler_config.get("_class_name")), diffusers.DDIMScheduler)
        out["scheduler"] = scheduler_class.from_config(scheduler_config)
    return out


MOTION_CONFIG_KEYS = ("motion_num_attention_heads", "motion_norm_num_groups", "motion_max_seq_length")


def _count(weights: Mapping[str, Any], prefix: str) -> List[int]:
    return sorted({int(k[len(prefix):].split(".")[0]) for k in weights
                   if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()})


def _one_or_each(values: Sequence[int]):
    return values[0] if len(set(values)) == 1 else tuple(values)


def motion_adapter_config(weights: Mapping[str, Any], base: Optional[Mapping[str, Any]] = None,
                          positions: Optional[int] = None) -> Dict[str, Any]:
    """A ``MotionAdapter`` config for diffusers-layout motion-module ``weights``: the blocks, layers, widths and
    mid block read from the tensors, the window from the positional encoding's length (``positions``), the
    attention heads and norm groups from ``base`` (diffusers' defaults, AnimateDiff's own, without it)."""
    config = {k: base[k] for k in MOTION_CONFIG_KEYS if base and k in base}
    down = _count(weights, "down_blocks.")
    widths = [weights.get(f"down_blocks.{i}.motion_modules.0.norm.weight") for i in down]
    if not down or any(w is None for w in widths):
        raise ValueError("no down_blocks.N.motion_modules.0.norm.weight tensors: not AnimateDiff motion modules of a "
                         "known layout")
    config["block_out_channels"] = tuple(int(w.shape[0]) for w in widths)
    config["motion_layers_per_block"] = _one_or_each([len(_count(weights, f"down_blocks.{i}.motion_modules.")) for i in down])
    config["motion_transformer_layers_per_block"] = _one_or_each(
        [len(_count(weights, f"down_blocks.{i}.motion_modules.0.transformer_blocks.")) for i in down])
    mid = _count(weights, "mid_block.motion_modules.")
    config["use_motion_mid_block"] = bool(mid)
    if mid:
        config["motion_mid_block_layers_per_block"] = len(mid)
        config["motion_transformer_layers_per_mid_block"] = len(
            _count(weights, "mid_block.motion_modules.0.transformer_blocks."))
    if positions:
        config["motion_max_seq_length"] = positions
    return config


def load_motion_adapter(source: str, dtype, base_config: Optional[Mapping[str, Any]] = None):
    """A ``MotionAdapter`` from a single file of motion modules (original AnimateDiff or diffusers layout), its
    shape read from the tensors (:func:`motion_adapter_config`), heads and norm groups from ``base_config``."""
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    path = fetch_file(source, MOTION_ADAPTER, "motion_adapter")
    raw = read_state_dict(path, lambda k: "motion_modules." in k)
    encoding = next((v for k, v in raw.items() if k.endswith(("pos_encoder.pe", "pos_embed.pe"))), None)
    weights = convert_animatediff_checkpoint_to_diffusers(raw)
    config = motion_adapter_config(weights, base_config, int(encoding.shape[-2]) if encoding is not None else None)
    adapter = _empty(lambda: MotionAdapter.from_config(config))
    return _fill(adapter, weights, dtype, "motion adapter", source, "motion_adapter",
                 "; the file is not AnimateDiff motion modules of a layout this tool knows")


def load_vae(source: str, dtype, video_config: str):
    """The VAE ``source`` names: a diffusers VAE folder or hub id (or a whole checkpoint's ``vae/``), or a single
    file (a VAE, or a Stable Diffusion checkpoint's VAE) built with the config in ``video_config``'s ``vae/``
    (the video model's own: a folder or hub id)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if not is_single_file(source):
        folder = os.path.expanduser(source)
        if os.path.isdir(folder):
            nested = not os.path.isfile(os.path.join(folder, "config.json"))
        else:
            nested = _vae_marker(source) == "vae/config.json"
        return AutoencoderKL.from_pretrained(source, subfolder="vae" if nested else None, dtype=dtype)
    path = fetch_file(source, VAE_FILE, "vae")
    weights = read_state_dict(path, lambda k: not k.startswith((UNET_PREFIX, "cond_stage_model.", "conditioner.",
                                                                "model_ema.", "loss.")))
    vae = _empty(lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(video_config, subfolder="vae")))
    if not {name for name, _ in vae.named_parameters()} <= set(weights):  # not already in the diffusers layout
        weights = convert_ldm_vae_checkpoint(weights, vae.config)
    return _fill(vae, weights, dtype, "VAE", source, "vae",
                 "; the file does not fit the video model's VAE config: give a VAE of the Stable Diffusion 1.5 family")


def video_vae_config(spec, video_model: str, video_model_config: Optional[str] = None) -> str:
    """Where the video model's own VAE config is (a folder or hub id with ``vae/config.json``): the video model,
    or for a single-file one, the configs it is built from."""
    if is_single_file(video_model):
        return resolve_config(config_source(spec, "video_model", video_model_config), SD_BASE,
                              spec.checkpoint("video_model").what)
    return video_model


__all__ = ["FileContents", "FileSlot", "IMAGE_MODEL", "IMAGE_UNET", "KINDS", "MOTION_ADAPTER", "SD_BASE", "VAE_FILE",
           "check_sources", "checkpoint_problem", "classify", "config_source", "ensure_sources", "fetch_file", "file_slot",
           "is_single_file", "load_motion_adapter", "load_sd_file", "load_vae",
           "motion_adapter_config", "read_contents", "read_state_dict", "resolve_config", "video_vae_config"]
