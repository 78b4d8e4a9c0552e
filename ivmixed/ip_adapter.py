"""IP-Adapter image prompts under IV-mixed sampling: one adapter in both UNets, one image encoder.

An IP-Adapter adds, to every cross-attention layer of a Stable Diffusion UNet, a second key/value projection
(``to_k_ip``, ``to_v_ip``) that attends to a few tokens made from a CLIP image embedding (the image projection,
``encoder_hid_proj`` in diffusers). AnimateDiff's video UNet is an SD 1.5 (or SDXL) UNet with motion modules, so
an adapter made for that family fits it layer for layer, and it fits the image UNet the same way. Here the
adapter's state dict is read once and given to both: to the video pipeline through diffusers' own loader
(``pipe.load_ip_adapter``, which also registers the default ``feature_extractor``), and to the image UNet through
diffusers' UNet loader (``UNet2DConditionModel._load_ip_adapter_weights``); the CLIP image encoder is loaded once
and registered on the pipeline (``pipe.image_encoder``), so both UNets see embeddings of one encoder.

A ``source`` (``{ip_adapter}``) is, in this order of precedence:

- a local ``.safetensors`` or ``.bin`` file; the image encoder is the ``image_encoder`` folder beside it;
- a local folder laid out like ``h94/IP-Adapter``: ``models/ip-adapter_sd15.safetensors`` and
  ``models/image_encoder`` for an SD 1.5 pipeline, ``sdxl_models/ip-adapter_sdxl.safetensors`` and
  ``sdxl_models/image_encoder`` for an SDXL one (the family is the image UNet's);
- a hub file ``owner/repo/[folder/]name.safetensors`` (or ``.bin``), its encoder the ``image_encoder`` folder
  beside it in the repository;
- a hub repository ``owner/repo`` laid out like ``h94/IP-Adapter`` (:data:`DEFAULT_IP_ADAPTER`).

In the h94 layout a weight named ``*vit-h*`` takes the ViT-H encoder of ``models/`` and one named ``*vit-G*``
the ViT-bigG encoder of ``sdxl_models/`` (``ip-adapter_sdxl_vit-h.safetensors`` lives in ``sdxl_models/`` but was
trained on ViT-H), whichever folder the weight is in.

Only AnimateDiff pipelines take one (their video UNet is a ``UNetMotionModel``: the registry's pipelines with a
motion adapter); ModelScope and VideoCrafter run 3D UNets, for which no IP-Adapter exists. An adapter of the other
family (SDXL weights on an SD 1.5 pipeline or the reverse) is refused by the width of the text context its
``to_k_ip`` layers take, compared with the UNets' ``cross_attention_dim``, before any UNet changes; so is one
whose layers or image width do not fit. FaceID adapters (InsightFace embeddings, LoRA layers) are refused.

:func:`check_ip_adapter_source` is plain Python (no torch): what can be known before any model loads, for the
run configuration. Refusals are one line each: :class:`~ivmixed.errors.SettingError` for a value no run can
honour, :class:`~ivmixed.errors.ModelLoadError` for files that are not here and cannot be downloaded (offline
and not in the local hub cache, as :func:`ivmixed.loading.ensure_available` does for checkpoints) or that fail
to load.

Calling the pipelines: every UNet call must get ``added_cond_kwargs["image_embeds"]``, a list with one tensor per
adapter. diffusers' ``prepare_ip_adapter_image_embeds`` gives ``(videos, 1, image_embed_dim)`` per adapter
(``[uncond; cond]`` rows under guidance, the unconditional embedding being zeros); the motion UNet repeats each
row for its frames itself, whereas the image UNet, which sees ``videos * frames`` rows, needs the rows repeated
per frame (``repeat_interleave(frames, dim=0)``) in the layout of its prompt embeddings.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .errors import ModelLoadError, SettingError, quote, quote_message

__all__ = ["DEFAULT_IP_ADAPTER", "DEFAULT_WEIGHTS", "IPAdapterSource", "check_ip_adapter_source",
           "ip_adapter_pipelines", "ip_layer_shapes", "load_ip_adapter", "locate_ip_adapter", "read_ip_adapter",
           "set_ip_adapter_scale"]

KEY = "ip_adapter"  # the setting, as messages spell it ({ip_adapter}: --ip-adapter on the command line)
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
# (subfolder, weight file) of h94/IP-Adapter's plain IP-Adapter per family; its encoder is <subfolder>/image_encoder.
DEFAULT_WEIGHTS: Dict[str, Tuple[str, str]] = {
    "Stable Diffusion 1.5": ("models", "ip-adapter_sd15.safetensors"),
    "SDXL": ("sdxl_models", "ip-adapter_sdxl.safetensors"),
}
WEIGHT_EXTENSIONS = (".safetensors", ".bin")
IMAGE_ENCODER = "image_encoder"
ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
H94_FOLDERS = ("models", "sdxl_models")
_H94_ENCODERS = {"vit-h": "models", "vit-g": "sdxl_models"}  # h94: the encoder a weight file was trained on
# The text-context width of each family's cross-attention (what an adapter's to_k_ip layers take).
_CONTEXT_FAMILIES = {768: "Stable Diffusion 1.5", 1024: "Stable Diffusion 2.x", 2048: "SDXL"}


@dataclass(frozen=True)
class IPAdapterSource:
    """Where an IP-Adapter's weight file and image encoder are: ``root`` is a local folder or a hub repository
    id, the weight is ``root/subfolder/weight_name`` and the encoder the folder ``root/image_encoder_folder``."""

    source: str
    kind: str  # "file", "folder" (local), "hub-file", "hub"
    root: str
    subfolder: str  # "" for the root itself
    weight_name: str
    image_encoder_folder: str

    @property
    def local(self) -> bool:
        return self.kind in ("file", "folder")

    @property
    def weight_in_root(self) -> str:
        return f"{self.subfolder}/{self.weight_name}" if self.subfolder else self.weight_name

    @property
    def weight_file(self) -> str:
        """The weight file as a run's record names it: a local path, or ``repo/path in the repository``."""
        if self.local:
            return os.path.join(self.root, self.subfolder, self.weight_name)
        return f"{self.root}/{self.weight_in_root}"

    @property
    def image_encoder(self) -> str:
        """The image encoder folder: a local path, or ``repo/folder in the repository``."""
        if self.local:
            return os.path.join(self.root, self.image_encoder_folder)
        return f"{self.root}/{self.image_encoder_folder}"


# -- plain data: which pipelines, which files --------------------------------------------------------------------


def ip_adapter_pipelines() -> Tuple[str, ...]:
    """The pipelines that take an IP-Adapter: those whose video UNet is a 2D SD UNet with motion modules (the
    registry's pipelines with a motion adapter); the others run 3D UNets."""
    from .registry import PIPELINES

    return tuple(spec.name for spec in PIPELINES.values() if spec.takes("motion_adapter"))


def _check_pipeline(spec) -> None:
    if spec.takes("motion_adapter"):
        return
    names = ip_adapter_pipelines()
    takers = " or ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " or " + names[-1]
    raise SettingError(f"{{{KEY}}} works with AnimateDiff pipelines only ({{pipeline}} {takers}); {spec.name}'s "
                       "video model is a 3D UNet, for which no IP-Adapter exists")


def _shown(source: str) -> str:
    return quote_message(source, 160)


def _encoder_folder(subfolder: str, weight_name: str) -> str:
    """The image encoder of a weight file ``subfolder/weight_name``: ``image_encoder`` beside it, except where the
    h94 layout names another encoder (``*vit-h*``: ``models/``, ``*vit-G*``: ``sdxl_models/``)."""
    parts = [p for p in subfolder.split("/") if p]
    if parts and parts[-1] in H94_FOLDERS:
        lower = weight_name.lower()
        for marker, folder in _H94_ENCODERS.items():
            if marker in lower:
                parts[-1] = folder
    return "/".join(parts + [IMAGE_ENCODER])


def _hub_file(source: str) -> Optional[Tuple[str, str, str]]:
    """``(repo id, subfolder, file name)`` for ``owner/repo/[folder/]name.safetensors`` (or ``.bin``) that is no
    local path; None for anything else."""
    if os.path.isabs(source) or source.startswith((".", "~")) or "\\" in source:
        return None
    if not source.lower().endswith(WEIGHT_EXTENSIONS) or os.path.exists(source):
        return None
    parts = source.split("/")
    if len(parts) < 3 or not all(parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]


def locate_ip_adapter(source: str, family: str) -> IPAdapterSource:
    """Where ``source`` puts the weight file and the image encoder, for an image UNet of ``family`` (a
    :class:`~ivmixed.registry.PipelineSpec` family). Looks at local paths only; raises
    :class:`~ivmixed.errors.SettingError` for a local path that is not there or a folder without the weight."""
    from .loading import looks_like_path

    if not isinstance(source, str) or not source.strip():
        raise SettingError(f"{{{KEY}}} must be a hub id, a hub file, a local folder or a .safetensors file, got "
                           f"{quote(source)}")
    if family not in DEFAULT_WEIGHTS:
        raise SettingError(f"{{{KEY}}}: no IP-Adapter layout is known for {family} models")
    default_sub, default_weight = DEFAULT_WEIGHTS[family]
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        if not path.lower().endswith(WEIGHT_EXTENSIONS):
            raise SettingError(f"{{{KEY}}} {_shown(source)} is not a .safetensors or .bin file; give an IP-Adapter "
                               "weight file, a folder laid out like h94/IP-Adapter or a hub id")
        path = os.path.abspath(path)
        folder = os.path.dirname(path)
        root, sub, name = os.path.dirname(folder), os.path.basename(folder), os.path.basename(path)
        return IPAdapterSource(source, "file", root, sub, name, _encoder_folder(sub, name))
    if os.path.isdir(path):
        weight = os.path.join(path, default_sub, default_weight)
        if not os.path.isfile(weight):
            other = next((f"{sub}/{name} ({fam} weights)" for fam, (sub, name) in DEFAULT_WEIGHTS.items()
                          if fam != family and os.path.isfile(os.path.join(path, sub, name))), None)
            found = f"; it holds {other}" if other else ""
            raise SettingError(f"{{{KEY}}} {_shown(source)} has no {default_sub}/{default_weight} (the {family} "
                               f"IP-Adapter of the h94/IP-Adapter layout){found}; give a {family} IP-Adapter folder "
                               "or its .safetensors file")
        return IPAdapterSource(source, "folder", path, default_sub, default_weight,
                               _encoder_folder(default_sub, default_weight))
    spot = _hub_file(source)
    if spot is not None:
        repo, sub, name = spot
        return IPAdapterSource(source, "hub-file", repo, sub, name, _encoder_folder(sub, name))
    if source.lower().endswith(WEIGHT_EXTENSIONS):
        raise SettingError(f"{{{KEY}}} {_shown(source)}: no such file; give an existing IP-Adapter file, a folder "
                           "laid out like h94/IP-Adapter or a hub id")
    if looks_like_path(source) or source.count("/") != 1:
        raise SettingError(f"{{{KEY}}} {_shown(source)}: no such folder; give an existing folder laid out like "
                           "h94/IP-Adapter, an IP-Adapter file or a hub id such as h94/IP-Adapter")
    return IPAdapterSource(source, "hub", source, default_sub, default_weight,
                           _encoder_folder(default_sub, default_weight))


def _cached(where: IPAdapterSource, name: str) -> Optional[str]:
    from .loading import cached_file

    return cached_file(where.root, name)


def _missing_files(where: IPAdapterSource, image_encoder: bool) -> List[str]:
    """The files of a hub IP-Adapter this load needs that are not in the local hub cache (paths in the repo)."""
    missing = [] if _cached(where, where.weight_in_root) else [where.weight_in_root]
    if image_encoder:
        folder = where.image_encoder_folder
        if not _cached(where, f"{folder}/config.json"):
            missing.append(f"{folder}/config.json")
        if not any(_cached(where, f"{folder}/{name}") for name in ENCODER_WEIGHTS):
            missing.append(f"{folder}/{ENCODER_WEIGHTS[0]}")
    return missing


def _unavailable(where: IPAdapterSource, missing: List[str]) -> ModelLoadError:
    from .loading import _endpoint, hub_offline

    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the hub cannot be reached ({_endpoint()})"
    patterns = " ".join(f'"{m}"' for m in missing)
    return ModelLoadError(f"{why}, and the IP-Adapter '{_shown(where.source)}' is not in the local cache "
                          f"(no {', '.join(missing)}): `hf download {where.root} --include {patterns}` "
                          f"while online, or give a local folder laid out like h94/IP-Adapter with {{{KEY}}}")


def check_ip_adapter_source(spec, source: str, image_encoder: bool = True) -> IPAdapterSource:
    """What can be known of IP-Adapter ``source`` for pipeline ``spec`` (a
    :class:`~ivmixed.registry.PipelineSpec`) before any model loads: that the pipeline takes one, that local
    paths hold the weight file (and, with ``image_encoder``, the encoder folder), and that hub files are in the
    local cache or the hub can be reached. Returns where the files are; raises one line otherwise."""
    _check_pipeline(spec)
    return _check_files(source, spec.family, image_encoder)


def _check_files(source: str, family: str, image_encoder: bool) -> IPAdapterSource:
    from .loading import hub_offline, hub_reachable

    where = locate_ip_adapter(source, family)
    if where.local:
        encoder = where.image_encoder
        if image_encoder and not os.path.isfile(os.path.join(encoder, "config.json")):
            beside = "beside it" if where.kind == "file" else f"in {where.image_encoder_folder}/"
            raise SettingError(f"{{{KEY}}} {_shown(source)}: no image encoder {beside} (an {IMAGE_ENCODER} folder "
                               f"with config.json: the CLIP vision model the IP-Adapter was trained with, "
                               f"{quote_message(encoder, 160)}); add it, or give a folder laid out like h94/IP-Adapter")
        return where
    missing = _missing_files(where, image_encoder)
    if missing and (hub_offline() or not hub_reachable()):
        raise _unavailable(where, missing)
    return where


# -- torch from here on ------------------------------------------------------------------------------------------


def read_ip_adapter(path: str) -> Dict[str, Dict[str, Any]]:
    """An IP-Adapter file as diffusers' loader reads it: ``{"image_proj": {...}, "ip_adapter": {...}}``. A
    ``.safetensors`` file holds flat ``image_proj.<name>`` and ``ip_adapter.<name>`` keys, a ``.bin`` file the
    nested dict (read with ``weights_only``)."""
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        state: Dict[str, Dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in f.keys():
                for part in state:
                    if key.startswith(part + "."):
                        state[part][key[len(part) + 1:]] = f.get_tensor(key)
        return state
    from diffusers.models.modeling_utils import load_state_dict

    return load_state_dict(path)


def ip_layer_shapes(unet) -> List[Tuple[str, int, int]]:
    """``(processor name, hidden size, cross-attention width)`` of every attention layer of ``unet`` that diffusers
    gives IP weights, in the order it reads them from a file (key ids 1, 3, 5, ...): its cross-attention layers
    outside motion modules, the hidden size computed as diffusers' ``_convert_ip_adapter_attn_to_diffusers`` does."""
    config = unet.config
    out = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        if name.startswith("mid_block"):
            hidden = config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(config.block_out_channels))[int(name[len("up_blocks.")])]
        elif name.startswith("down_blocks"):
            hidden = config.block_out_channels[int(name[len("down_blocks.")])]
        else:  # diffusers would reuse the previous layer's size; no SD UNet has such a layer
            raise SettingError(f"{{{KEY}}}: the UNet's attention layer {name} is in no down, mid or up block")
        out.append((name, int(hidden), config.cross_attention_dim))
    return out


def _family_of(width: int) -> str:
    family = _CONTEXT_FAMILIES.get(int(width))
    return f" ({family})" if family else ""


def _check_fits(state: Dict[str, Dict[str, Any]], where: IPAdapterSource, unets: List[Tuple[str, Any]],
                family: str) -> int:
    """Refuse (one line) an adapter that does not fit every UNet of ``unets`` (``(what, unet)``), before any
    changes; returns its image embedding width where the layout has one (0 otherwise)."""
    shown = _shown(where.source)
    if not isinstance(state, dict) or not isinstance(state.get("ip_adapter"), dict) or not isinstance(
            state.get("image_proj"), dict) or not state["ip_adapter"] or not state["image_proj"]:
        raise SettingError(f"{{{KEY}}} {shown}: {where.weight_in_root} is not an IP-Adapter (no image_proj and "
                           "ip_adapter weights)")
    ip, proj = state["ip_adapter"], state["image_proj"]
    if any("_lora." in key for key in ip) or "perceiver_resampler.proj_in.weight" in proj or (
            "norm.weight" in proj and not {"proj.weight", "proj.3.weight", "latents"} & set(proj)):
        raise SettingError(f"{{{KEY}}} {shown}: a FaceID IP-Adapter (it takes InsightFace face embeddings and LoRA "
                           "layers), which is not supported; give a plain or Plus IP-Adapter")
    if not {"proj.weight", "proj.3.weight", "latents"} & set(proj):
        raise SettingError(f"{{{KEY}}} {shown}: its image projection ({', '.join(sorted(proj)[:3])}, ...) is no "
                           "IP-Adapter layout diffusers reads")
    first = ip.get("1.to_k_ip.weight")
    if first is None or getattr(first, "ndim", 0) != 2:
        raise SettingError(f"{{{KEY}}} {shown}: no ip_adapter.1.to_k_ip.weight; not an IP-Adapter in the original "
                           "layout (ip_adapter.<layer>.to_k_ip.weight)")
    width = int(first.shape[1])
    for what, unet in unets:
        dim = unet.config.cross_attention_dim
        if not isinstance(dim, int):
            raise SettingError(f"{{{KEY}}}: the {what} has per-block cross-attention widths {dim}; an IP-Adapter "
                               "needs one")
        if width != dim:
            sub, name = DEFAULT_WEIGHTS[family]
            raise SettingError(f"{{{KEY}}} {shown}: its layers take a {width}-wide text context{_family_of(width)}, "
                               f"but the {what}'s cross_attention_dim is {dim}{_family_of(dim)}; give a {family} "
                               f"IP-Adapter (h94/IP-Adapter: {sub}/{name})")
    layers = sorted(int(k.split(".")[0]) for k in ip if k.endswith(".to_k_ip.weight") and k.split(".")[0].isdigit())
    for what, unet in unets:
        shapes = ip_layer_shapes(unet)
        if len(shapes) != len(layers):
            raise SettingError(f"{{{KEY}}} {shown}: it has IP weights for {len(layers)} attention layers, but the "
                               f"{what} has {len(shapes)} cross-attention layers; give an IP-Adapter made for it")
        for index, (name, hidden, _) in enumerate(shapes):
            key_id = 2 * index + 1
            for part in ("to_k_ip", "to_v_ip"):
                tensor = ip.get(f"{key_id}.{part}.weight")
                if tensor is None or tuple(tensor.shape) != (hidden, width):
                    got = "none" if tensor is None else "x".join(map(str, tensor.shape))
                    raise SettingError(f"{{{KEY}}} {shown}: ip_adapter.{key_id}.{part}.weight is {got}, but the "
                                       f"{what}'s layer {name.removesuffix('.processor')} needs {hidden}x{width}; give "
                                       "an IP-Adapter made for it")
    if "proj.weight" in proj:
        return int(proj["proj.weight"].shape[-1])  # ImageProjection: the encoder's image_embeds
    if "proj_in.weight" in proj:
        return -int(proj["proj_in.weight"].shape[-1])  # Plus (Resampler): the encoder's hidden states
    return 0


def _check_encoder_width(config: Dict[str, Any], needed: int, where: IPAdapterSource, encoder: str) -> None:
    """Refuse an image encoder whose embeddings are not as wide as the adapter's image projection takes."""
    if not needed:
        return
    field, wanted = ("projection_dim", needed) if needed > 0 else ("hidden_size", -needed)
    got = config.get(field)
    if got is not None and int(got) != wanted:
        raise SettingError(f"{{{KEY}}} {_shown(where.source)}: its image projection takes {wanted}-wide image "
                           f"embeddings, but the image encoder {quote_message(encoder, 160)} gives {got} ({field}); "
                           "give the encoder it was trained with")


def _pipeline_spec(pipe):
    """The registry's spec of ``pipe``'s class (or a class it derives from), or None."""
    from .registry import PIPELINES

    paths = {f"{c.__module__}:{c.__name__}" for c in type(pipe).__mro__}
    return next((spec for spec in PIPELINES.values() if spec.class_path in paths), None)


def _unet_family(unet) -> str:
    from .registry import unet_family

    return unet_family(unet.config)


def _fetch(where: IPAdapterSource, name: str) -> str:
    """The local path of ``name`` (a path in the repository) of a hub IP-Adapter: cached, or downloaded now."""
    path = _cached(where, name)
    if path is not None:
        return path
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(where.root, name)
    except Exception as exc:  # not found, gated, network: one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{{{KEY}}} {_shown(where.source)}: could not download {quote_message(name, 120)} from "
                             f"{where.root} ({quote_message(reason, 160)}); check the id, or `hf download {where.root} "
                             f"{name}` while online, or give a local folder laid out like h94/IP-Adapter") from None


def _encoder_folder_path(where: IPAdapterSource) -> str:
    """The local folder of the image encoder: the source's own, or its files in the local hub cache (downloaded
    now when they are not there: ``config.json`` and ``model.safetensors``, else ``pytorch_model.bin``)."""
    if where.local:
        return where.image_encoder
    folder = where.image_encoder_folder
    config = _fetch(where, f"{folder}/config.json")
    if not any(_cached(where, f"{folder}/{name}") for name in ENCODER_WEIGHTS):
        try:
            _fetch(where, f"{folder}/{ENCODER_WEIGHTS[0]}")
        except ModelLoadError:
            _fetch(where, f"{folder}/{ENCODER_WEIGHTS[1]}")
    return os.path.dirname(config)  # a snapshot folder of the hub cache: the files of one revision


def _encoder_config(folder: str, where: IPAdapterSource) -> Dict[str, Any]:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{{{KEY}}} {_shown(where.source)}: cannot read the image encoder's config.json "
                             f"({quote_message(str(exc), 120)})") from None
    return data if isinstance(data, dict) else {}


def _processors(unet):
    return dict(unet.attn_processors)


def _snapshot(pipe, unets):
    return ({id(u): (u, _processors(u), u.encoder_hid_proj, u.config.encoder_hid_dim_type) for u in unets},
            getattr(pipe, "image_encoder", None), getattr(pipe, "feature_extractor", None))


def _restore(pipe, snapshot) -> None:
    """Put the UNets' attention processors, image projections and the pipeline's encoder back as they were."""
    unets, encoder, extractor = snapshot
    for unet, procs, proj, kind in unets.values():
        unet.set_attn_processor(procs)
        unet.encoder_hid_proj = proj
        unet.config.encoder_hid_dim_type = kind
    pipe.register_modules(image_encoder=encoder, feature_extractor=extractor)


def _ip_processor_types():
    from diffusers.models.attention_processor import (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0,
                                                      IPAdapterXFormersAttnProcessor)

    return IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor


def _ip_layers(unet) -> int:
    types = _ip_processor_types()
    return sum(isinstance(p, types) for p in unet.attn_processors.values())


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise SettingError(f"{{ip_adapter_scale}} must be a finite number, got {quote(scale)}")
    return float(scale)


def set_ip_adapter_scale(pipe, scale: float) -> None:
    """Set the IP-Adapter scale of both UNets (diffusers' ``set_ip_adapter_scale`` covers ``pipe.unet`` only):
    0 switches the image prompt off, 1 is the adapter as trained."""
    from types import SimpleNamespace

    from diffusers.loaders import IPAdapterMixin

    scale = _check_scale(scale)
    pipe.set_ip_adapter_scale(scale)
    image_unet = getattr(pipe, "image_unet", None)
    if image_unet is not None:
        IPAdapterMixin.set_ip_adapter_scale(SimpleNamespace(unet=image_unet), scale)  # the same rule, other UNet


def load_ip_adapter(pipe, source: str = DEFAULT_IP_ADAPTER, scale: float = 1.0) -> Dict[str, Any]:
    """Load IP-Adapter ``source`` (see the module) into both UNets of ``pipe`` and its image encoder once, at
    ``scale``; returns a record of what was loaded, for the run's JSON.

    The weight file is read once; its state dict goes to ``pipe.load_ip_adapter`` (video UNet, default
    ``feature_extractor``) and to ``pipe.image_unet._load_ip_adapter_weights``. The image encoder is loaded
    unless the pipeline has one. Everything is checked first (pipeline, files, widths, layers, encoder width),
    and a failure while loading puts both UNets and the pipeline's encoder back as they were."""
    from diffusers import UNet2DConditionModel, UNetMotionModel

    scale = _check_scale(scale)
    spec = _pipeline_spec(pipe)
    if spec is not None:
        _check_pipeline(spec)
    unet, image_unet = getattr(pipe, "unet", None), getattr(pipe, "image_unet", None)
    if not isinstance(unet, (UNetMotionModel, UNet2DConditionModel)) or not isinstance(image_unet,
                                                                                       UNet2DConditionModel):
        names = " or ".join(ip_adapter_pipelines())
        raise SettingError(f"{{{KEY}}} works with AnimateDiff pipelines only ({{pipeline}} {names}); "
                           f"{type(pipe).__name__}'s video UNet is a {type(unet).__name__}")
    family = _unet_family(image_unet)  # the image UNet decides the layout
    need_encoder = getattr(pipe, "image_encoder", None) is None
    where = _check_files(source, family, need_encoder)
    weight_path = where.weight_file if where.local else _fetch(where, where.weight_in_root)
    from .loading import loading

    with loading("IP-Adapter", where.weight_file if where.local else source, KEY):
        state = read_ip_adapter(weight_path)
    unets = [("image UNet", image_unet), ("video UNet", unet)]
    embed_width = _check_fits(state, where, unets, family)
    if need_encoder:
        encoder_shown, encoder_path = where.image_encoder, _encoder_folder_path(where)
        _check_encoder_width(_encoder_config(encoder_path, where), embed_width, where, encoder_shown)
    else:
        encoder_shown = f"the pipeline's ({getattr(pipe.image_encoder.config, '_name_or_path', '') or 'loaded'})"
        _check_encoder_width(pipe.image_encoder.config.to_dict(), embed_width, where, encoder_shown)

    snapshot = _snapshot(pipe, [image_unet, unet])
    try:
        if need_encoder:
            from transformers import CLIPVisionModelWithProjection

            with loading("IP-Adapter image encoder", encoder_path, KEY):
                encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_path, dtype=pipe.dtype)
            pipe.register_modules(image_encoder=encoder.to(pipe.device).eval())
        # The video pipeline: diffusers' loader with the state dict (the encoder is registered, so it loads none;
        # it registers the default CLIPImageProcessor sized to the encoder where the pipeline has no
        # feature_extractor) ...
        pipe.load_ip_adapter(state, subfolder=where.subfolder, weight_name=where.weight_name,
                             image_encoder_folder=None)
        # ... and the same state dict into the image UNet, by the UNet loader diffusers' loader calls.
        image_unet._load_ip_adapter_weights([state])
        set_ip_adapter_scale(pipe, scale)
    except BaseException:
        _restore(pipe, snapshot)
        raise
    return {
        "source": source,
        "weight_file": where.weight_file,
        "scale": scale,
        "image_encoder": encoder_shown,
        "ip_attention_layers": {"video": _ip_layers(unet), "image": _ip_layers(image_unet)},
    }
