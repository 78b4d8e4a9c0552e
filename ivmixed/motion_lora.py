"""LoRAs for the video model (AnimateDiff motion LoRAs, few-step LoRAs of its base UNet), by name and scale.

A ``motion_lora`` value is ``SOURCE[:SCALE]``. ``SOURCE`` is, in this order of precedence:

- a local ``.safetensors`` file;
- a local folder holding ``diffusion_pytorch_model.safetensors`` or ``pytorch_lora_weights.safetensors`` (or a
  single ``.safetensors`` file);
- a hub file ``owner/repo/name.safetensors`` (the repository is the first two parts, the rest the file in it),
  e.g. ``wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors``;
- a hub repository ``owner/repo`` holding one of the folder's weight names, e.g.
  ``guoyww/animatediff-motion-lora-zoom-out``.

Hub files are taken from the local hub cache when they are there; otherwise they are downloaded, or, offline,
the run stops with one :class:`~ivmixed.errors.ModelLoadError` naming the ``hf download`` command.

Every LoRA goes into the video UNet only (``pipe.unet``, the ``UNetMotionModel``): its motion modules (camera
motion LoRAs) and its spatial layers (few-step LoRAs such as AnimateLCM's) alike. The image model
(``pipe.image_unet``) and the text encoder, which the image model shares, are never changed; text-encoder
layers a file holds are skipped (and counted in the record).

Each LoRA is loaded with diffusers' adapter loader (``UNetMotionModel.load_lora_adapter``, peft underneath),
fused into the weights at its scale and unloaded at once, one LoRA after the other, so several compose as
``W + s1 * B1 @ A1 + s2 * B2 @ A2``. Fused, the video UNet is again a plain UNet: no peft layer stays behind
for torch.compile, CPU offload or channels-last to work around, no sampling step pays the extra LoRA matmuls,
and the image model's LoRA (:mod:`ivmixed.lora`, fused the same way, earlier) composes with it. The price is
that a different set of LoRAs needs a fresh load, which the run layer does anyway (the LoRAs are part of its
pipeline cache key). ``pipe.load_lora_weights`` is not used because it would also load a file's text-encoder
layers into the shared text encoder (changing the image model's conditioning) and because matching each layer
by name and shape first lets a wrong file (an SDXL LoRA, a motion adapter) fail with one line before any
weight changes.

Formats read: diffusers' (``unet.<module>.processor.to_q_lora.down.weight``, as in guoyww's motion LoRA
repositories, and ``<module>.lora.down.weight``), peft's (``<module>.lora_A.weight``), kohya's
(``lora_unet_<module_path_with_underscores>.lora_down.weight`` with ``.alpha``), and the original AnimateDiff
motion-module names (``temporal_transformer``, ``attention_blocks.N``). A per-layer alpha is applied exactly
(folded into ``B`` as ``alpha / rank``).

Parsing, checking and :func:`motion_lora_identity` are plain Python (no torch): the run configuration checks
the spellings (:func:`motion_lora_problem`), and the run fingerprint finds and hashes the files (a missing one is
one :class:`~ivmixed.errors.ModelLoadError` there), before any model loads.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ModelLoadError, SettingError, quote_message
from .loading import hub_file

logger = logging.getLogger(__name__)

DEFAULT_MOTION_LORA_SCALE = 1.0
# Weight files a LoRA folder or hub repository is read from, in this order (motion LoRA repositories use the
# first, diffusers' LoRA training scripts the second).
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "pytorch_lora_weights.safetensors")
SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
_HUB_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PICKLED = "is not a .safetensors file; only .safetensors LoRAs are read (not pickled checkpoints)"


def parse_motion_lora(text: str) -> Tuple[str, float]:
    """``"SOURCE[:SCALE]"`` as ``(source, scale)``; a last ``:part`` that is no number belongs to the source, and
    so does the whole text when it names an existing file or folder."""
    source, sep, scale = text.rpartition(":")
    if sep and not os.path.exists(os.path.expanduser(text)):
        try:
            return source.strip(), float(scale)
        except ValueError:
            pass
    return text.strip(), DEFAULT_MOTION_LORA_SCALE


@dataclass(frozen=True)
class MotionLoraSource:
    """Where one motion LoRA is: ``kind`` is ``"file"`` or ``"folder"`` (``path`` the weight file in either),
    ``"hub-file"`` (``repo`` and ``filename``) or ``"hub"`` (``repo``; the file is one of :data:`WEIGHT_NAMES`)."""

    source: str
    kind: str
    path: Optional[str] = None
    repo: Optional[str] = None
    filename: Optional[str] = None


def _looks_like_path(source: str) -> bool:
    return (os.path.isabs(source) or source.startswith((".", "~")) or "\\" in source
            or bool(_WINDOWS_PATH.match(source)))


def _folder_weight(folder: str) -> Tuple[Optional[str], Optional[str]]:
    for name in WEIGHT_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path, None
    try:
        found = sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX) and os.path.isfile(os.path.join(folder, n)))
    except OSError as exc:
        return None, f"cannot read the folder ({exc.strerror or exc})"
    if len(found) == 1:
        return os.path.join(folder, found[0]), None
    what = f"{len(found)} .safetensors files ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}): give one" \
        if found else "no .safetensors file"
    return None, f"is a folder with {' or '.join(WEIGHT_NAMES)} missing and {what}"


def _hub_repo_problem(repo: str) -> Optional[str]:
    owner, _, name = repo.partition("/")
    if all(_HUB_PART.match(part) and ".." not in part and "--" not in part for part in (owner, name)) \
            and len(name) <= 96:
        return None
    return "is not a valid hub repository id (owner/name)"


def locate_motion_lora(source: str) -> Tuple[Optional[MotionLoraSource], Optional[str]]:
    """``(where, None)`` for a source that can be loaded, else ``(None, what is wrong)``; reads no file."""
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        if not path.lower().endswith(SUFFIX):
            return None, _PICKLED
        return MotionLoraSource(source, "file", path=os.path.abspath(path)), None
    if os.path.isdir(path):
        weight, problem = _folder_weight(path)
        if problem:
            return None, problem
        return MotionLoraSource(source, "folder", path=os.path.abspath(weight)), None
    if _looks_like_path(source):
        return None, "no such file or folder"
    if source.lower().endswith(PICKLE_SUFFIXES):
        return None, _PICKLED
    in_hub = hub_file(source) if source.lower().endswith(SUFFIX) else None
    if in_hub is not None:
        repo, filename = in_hub
        problem = _hub_repo_problem(repo)
        return (None, problem) if problem else (MotionLoraSource(source, "hub-file", repo=repo, filename=filename),
                                                None)
    parts = source.split("/")
    if len(parts) == 2 and all(parts) and not source.lower().endswith(SUFFIX):
        problem = _hub_repo_problem(source)
        return (None, problem) if problem else (MotionLoraSource(source, "hub", repo=source), None)
    if source.lower().endswith(SUFFIX):
        return None, "no such file (a file on the hub is spelled owner/repo/name.safetensors)"
    return None, "is neither a .safetensors file, a folder, a hub file (owner/repo/name.safetensors) nor a hub id " \
                 "(owner/name)"


def motion_lora_problem(text: str) -> Optional[str]:
    """What is wrong with one ``motion_lora`` spelling whatever the file system holds, or ``None``: no source, a
    scale that is no finite number, a pickled checkpoint. The run configuration's check; whether the source is
    there is :func:`motion_lora_source_problem`'s question (asked when a run plans its outputs)."""
    source, scale = parse_motion_lora(text)
    if not source:
        return f"needs a hub id or a file before its scale, got {quote_message(repr(text), 120)}"
    if not math.isfinite(scale):
        return f"scale must be a finite number, got {quote_message(repr(text), 120)}"
    if source.lower().endswith(PICKLE_SUFFIXES):
        return f"{quote_message(source, 160)}: {_PICKLED}"
    return None


def motion_lora_source_problem(text: str) -> Optional[str]:
    """:func:`motion_lora_problem`, or what is wrong with where the source points: a missing file or folder, a
    folder without one weight file, a hub id that cannot be one. Looks at the file system, reads no file."""
    problem = motion_lora_problem(text)
    if problem:
        return problem
    source, _ = parse_motion_lora(text)
    _, problem = locate_motion_lora(source)
    return f"{quote_message(source, 160)}: {problem}" if problem else None


def _refuse(source: str, problem: str) -> ModelLoadError:
    return ModelLoadError(f"{{motion_lora}} {quote_message(source, 160)}: {problem}")


def _locate(source: str) -> MotionLoraSource:
    where, problem = locate_motion_lora(source)
    if problem:
        raise _refuse(source, problem)
    return where


def _cached(where: MotionLoraSource) -> Optional[Tuple[str, str]]:
    """``(filename, path)`` of a hub LoRA's file in the local hub cache, or None."""
    from .loading import cached_file

    for name in (where.filename,) if where.filename else WEIGHT_NAMES:
        path = cached_file(where.repo, name)
        if path is not None:
            return name, path
    return None


def _fetch(where: MotionLoraSource) -> Tuple[Optional[str], str]:
    """``(filename in the repository or None, local path)`` of a LoRA: local, cached, or downloaded now."""
    if where.path is not None:
        return None, where.path
    cached = _cached(where)
    if cached is not None:
        return cached
    from .loading import hub_offline, hub_reachable

    names = (where.filename,) if where.filename else WEIGHT_NAMES
    spelled = f"{where.repo} {names[0]}"
    if hub_offline() or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise _refuse(where.source, f"not in the local hub cache, and {why}; `hf download {spelled}` while online, "
                      "or give a local .safetensors file")
    from huggingface_hub import hf_hub_download

    reason = ""
    for name in names:
        try:
            return name, hf_hub_download(where.repo, name)
        except Exception as exc:  # not found, gated, network: the next name, then one message
            reason = reason or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    raise _refuse(where.source, f"could not download {' or '.join(names)} from {where.repo} "
                  f"({quote_message(reason, 160)}); check the id, or give a local .safetensors file")


def loaded_motion_loras(specs: Sequence[str], tiny: bool) -> Tuple[str, ...]:
    """The motion LoRAs a run applies: all of them, except hub LoRAs with ``tiny`` models (made for real
    checkpoints, they cannot fit the tiny ones, and a quick offline check should not need them)."""
    if not tiny:
        return tuple(specs)
    hub = ("hub", "hub-file")
    return tuple(text for text in specs if getattr(locate_motion_lora(parse_motion_lora(text)[0])[0], "kind", None)
                 not in hub)  # a source that names nothing stays, to be refused


def motion_lora_identity(specs: Sequence[str]) -> List[Dict[str, Any]]:
    """The motion LoRAs as they change frames, for a run's fingerprint; loads no model.

    A local file (or a folder's weight file) is named by its content's SHA-256, a hub LoRA by its id and file name,
    as hub checkpoints are (so a run's fingerprint is the same before and after the download).
    Raises :class:`~ivmixed.errors.ModelLoadError` for a source that names nothing loadable.
    """
    from .digests import file_digest

    out: List[Dict[str, Any]] = []
    for text in specs:
        source, scale = parse_motion_lora(text)
        where = _locate(source)
        if where.path is not None:
            out.append({"sha256": file_digest(where.path), "scale": scale})
        else:
            out.append({"hub": where.repo, "file": where.filename, "scale": scale})
    return out


# -- reading LoRA files (torch from here on) -------------------------------------------------------------------

_KOHYA_DOWN, _KOHYA_UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_TEXT_PREFIXES = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")
# diffusers' older key spellings of the A (down) and B (up) matrices, as peft's.
_OLD_KEYS = [
    (re.compile(r"\.processor\."), "."),
    (re.compile(r"\.(to_q|to_k|to_v)_lora\.(down|up)\.weight$"), r".\1.lora_\2.weight"),
    (re.compile(r"\.to_out_lora\.(down|up)\.weight$"), r".to_out.0.lora_\1.weight"),
    (re.compile(r"\.(?:lora|lora_linear_layer)\.(down|up)\.weight$"), r".lora_\1.weight"),
]
_LAYER_END = re.compile(r"\.(?:lora|alpha)|_lora\.")  # where a key's layer name ends
# The original AnimateDiff motion-module names, as diffusers' UNetMotionModel names the same modules.
_ORIGINAL_MOTION_NAMES = [
    (re.compile(r"([._])temporal_transformer(?=[._])"), ""),
    (re.compile(r"([._])attention_blocks([._])0(?=[._])"), r"\1attn1"),
    (re.compile(r"([._])attention_blocks([._])1(?=[._])"), r"\1attn2"),
]


def _motion_names(name: str) -> str:
    for pattern, repl in _ORIGINAL_MOTION_NAMES:
        name = pattern.sub(repl, name)
    return name


def read_lora_layers(state_dict, unet) -> Tuple[Dict[str, Tuple[Any, Any, float]], List[str], int]:
    """The LoRA layers of ``state_dict`` by module path of ``unet``: ``{path: (A, B, alpha / rank)}``, with the
    names of layers that are no plain LoRA for a UNet module path, and the number of text-encoder layers.

    Paths are as the file spells them (after mapping the formats above); matching them against ``unet`` is
    :func:`match_layers`'s job."""
    layers: Dict[str, Dict[str, Any]] = {}
    other: List[str] = []
    text_layers, odd = set(), set()
    kohya_names: Optional[Dict[str, str]] = None
    for key, value in state_dict.items():
        if key.startswith(_TEXT_PREFIXES):
            text_layers.add(_LAYER_END.split(key, 1)[0])
            continue
        if key.startswith("lora_unet_"):  # kohya: lora_unet_<module path, dots as underscores>.lora_down.weight
            if kohya_names is None:
                from .lora import kohya_layer_names

                kohya_names = {_motion_names(k): v for k, v in kohya_layer_names(unet, "lora_unet").items()}
            name, _, part = key.partition(".")
            path = kohya_names.get(_motion_names(name), name)
            kind = {_KOHYA_DOWN: "A", _KOHYA_UP: "B", _ALPHA: "alpha"}.get("." + part)
        else:
            key = key.removeprefix("unet.")
            for pattern, repl in _OLD_KEYS:
                key = pattern.sub(repl, key)
            key = _motion_names(key)
            kind, path = None, key
            for suffix, which in ((".lora_A.weight", "A"), (".lora_down.weight", "A"), (".lora_B.weight", "B"),
                                  (".lora_up.weight", "B"), (_ALPHA, "alpha")):
                if key.endswith(suffix):
                    kind, path = which, key[: -len(suffix)]
                    break
        if kind is None:  # DoRA's magnitudes, LoHa's factors, a bias, full weights: not a plain LoRA layer
            other.append(key)
            odd.add(path if key.startswith("lora_unet_") else _LAYER_END.split(key, 1)[0])
            continue
        layers.setdefault(path, {})[kind] = value
    out: Dict[str, Tuple[Any, Any, float]] = {}
    for path, parts in layers.items():
        if "A" not in parts or "B" not in parts or parts["A"].ndim < 2 or path in odd:
            other.append(path)
            continue
        down, up = parts["A"], parts["B"]
        ratio = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        out[path] = (down, up, ratio)
    return out, sorted(set(other)), len(text_layers)


def _fits(module, down, up) -> bool:
    weight = getattr(module, "weight", None)
    if weight is None or weight.ndim != down.ndim or up.ndim != down.ndim:
        return False
    return up.shape[0] == weight.shape[0] and up.shape[1] == down.shape[0] and down.shape[1:] == weight.shape[1:]


def match_layers(layers, unet) -> Tuple[Dict[str, Tuple[Any, Any, float]], List[str], List[str]]:
    """Split ``layers`` into those that fit a linear or conv layer of ``unet`` (by module path and shape), the
    paths no module has, and the ones a module has with other shapes (``"path: LoRA a -> b, layer c -> d"``)."""
    import torch

    modules = dict(unet.named_modules())
    fits, missing, wrong = {}, [], []
    for path, (down, up, ratio) in layers.items():
        module = modules.get(path)
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            missing.append(path)
        elif _fits(module, down, up):
            fits[path] = (down, up, ratio)
        else:
            weight = module.weight
            wrong.append(f"{path}: LoRA {down.shape[1]} -> {up.shape[0]}, layer "
                         f"{weight.shape[1]} -> {weight.shape[0]}")
    return fits, sorted(missing), sorted(wrong)


def _read_file(path: str, source: str) -> Dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _refuse(source, f"is not a readable .safetensors file ({quote_message(reason, 120)})") from None


def _adapter_name(index: int, source: str) -> str:
    stem = os.path.basename(source.rstrip("/\\")).removesuffix(SUFFIX)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")[:40]
    return f"motion_lora_{index}" + (f"_{slug}" if slug else "")


def _fuse(unet, layers: Dict[str, Tuple[Any, Any, float]], scale: float, adapter: str) -> None:
    """``W += scale * ratio * B @ A`` for every layer, through diffusers' adapter loader; nothing stays loaded."""
    state_dict = {}
    for path, (down, up, ratio) in layers.items():
        state_dict[f"{path}.lora_A.weight"] = down.float()
        state_dict[f"{path}.lora_B.weight"] = up.float() * ratio
    unet.load_lora_adapter(state_dict, prefix=None, adapter_name=adapter)
    try:
        unet.fuse_lora(lora_scale=scale, adapter_names=[adapter])
    finally:
        unet.unload_lora()  # fused or failed, the adapter layers go


def _check_unet(pipe):
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "load_lora_adapter") or not hasattr(unet, "fuse_lora"):
        raise SettingError(f"{{motion_lora}} needs a video UNet that takes LoRAs (Animatediff's UNetMotionModel); "
                         f"this pipeline's is {type(unet).__name__}")
    if getattr(unet, "peft_config", None):
        raise SettingError(f"{{motion_lora}}: the video UNet already holds LoRA adapters that are not fused "
                         f"({', '.join(unet.peft_config)}); fuse or unload them first")
    return unet


def apply_motion_loras(pipe, specs: Sequence[str]) -> List[Dict[str, Any]]:
    """Fuse the LoRAs ``specs`` name (``SOURCE[:SCALE]``, see the module's docs) into ``pipe.unet``, in order.

    Every file is read and matched against the video UNet before any weight changes: a file none of whose layers
    names a layer of the video UNet, or with a layer whose shape differs from the UNet's (a LoRA for another base
    model), raises one :class:`~ivmixed.errors.ModelLoadError`; layers that name no module of this UNet are
    skipped with a warning. A scale of 0 checks the file and leaves the weights as they are. Call this before CPU
    offload and compilation. Returns one record per LoRA for the run's JSON.
    """
    from .digests import file_digest

    unet = _check_unet(pipe)
    planned = []
    for index, text in enumerate(specs):
        source, scale = parse_motion_lora(text)
        if not math.isfinite(scale):
            raise _refuse(source, f"scale must be a finite number, got {scale}")
        where = _locate(source)
        filename, path = _fetch(where)
        layers, other, text_layers = read_lora_layers(_read_file(path, source), unet)
        if not layers:
            raise _refuse(source, "holds no plain LoRA layers for a UNet (lora_A/lora_B, lora_down/lora_up or "
                          "to_q_lora weights; DoRA, LoHa and LoKr are not read)"
                          + (f", only {text_layers} text-encoder layer(s)" if text_layers else "")
                          + "; is it a LoRA file?")
        fits, missing, wrong = match_layers(layers, unet)
        if wrong:
            raise _refuse(source, f"{len(wrong)} of its {len(layers)} layers do not fit the video UNet's "
                          f"({quote_message(wrong[0], 160)}{', ...' if len(wrong) > 1 else ''}): a LoRA for another "
                          "base model (SDXL?); the video model takes Stable Diffusion 1.5 and AnimateDiff LoRAs")
        if not fits:
            raise _refuse(source, f"none of its {len(layers)} LoRA layers names a layer of the video UNet "
                          f"({type(unet).__name__}), e.g. {quote_message(missing[0], 120)}; is it a LoRA for "
                          "AnimateDiff or Stable Diffusion 1.5?")
        skipped = missing + other
        if skipped:
            logger.warning("%d layer(s) of motion LoRA %s name no layer of the video UNet and were skipped: %s",
                           len(skipped), source, ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else ""))
        if text_layers:
            logger.info("%d text-encoder layer(s) of motion LoRA %s not applied: the text encoder is shared with "
                        "the image model, which motion LoRAs leave unchanged", text_layers, source)
        motion = sum(1 for p in fits if ".motion_modules." in f".{p}")
        record = {"source": source, "scale": scale, "adapter": _adapter_name(index, source), "kind": where.kind,
                  "sha256": file_digest(path), "fused": scale != 0, "layers": len(fits),
                  "motion_module_layers": motion, "base_unet_layers": len(fits) - motion, "skipped": skipped,
                  "text_encoder_layers_skipped": text_layers}
        if where.path is not None:
            record["path"] = where.path
        else:
            record.update(repo=where.repo, file=filename)
        planned.append((fits, scale, record))
    for fits, scale, record in planned:
        if scale != 0:
            _fuse(unet, fits, scale, record["adapter"])
            logger.info("motion LoRA %s: fused %d layer(s) (%d in motion modules) at scale %s into the video UNet",
                        record["source"], record["layers"], record["motion_module_layers"], scale)
    return [record for _, _, record in planned]


__all__ = ["DEFAULT_MOTION_LORA_SCALE", "MotionLoraSource", "WEIGHT_NAMES", "apply_motion_loras",
           "locate_motion_lora", "match_layers", "loaded_motion_loras", "motion_lora_identity", "motion_lora_problem",
           "motion_lora_source_problem", "parse_motion_lora", "read_lora_layers"]
