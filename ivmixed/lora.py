"""LoRA for the image model: merge kohya-format files into a Stable Diffusion folder, or apply them at load time.

Civitai-style LoRAs are kohya ``.safetensors`` files: for each layer ``<prefix>_<module path with _>`` they hold
``.lora_down.weight`` (rank x in), ``.lora_up.weight`` (out x rank) and usually ``.alpha``. Merged at strength
``s``, a layer becomes ``W + s * (alpha / rank) * up @ down`` (``alpha / rank`` is 1 when the file has no alpha).

Both routes, the converter (:func:`convert_lora`) and direct loading (:func:`apply_lora_to_pipeline`), go through
:func:`merge_lora`: diffusers' LoRA loader and peft inject, fuse and unload the layers. What this module does
itself is read the kohya names and alphas, because diffusers' kohya conversion (0.42.1, peft 0.21) gets them
wrong, as measured on the tiny models:

- Per-layer alphas become peft ``alpha_pattern`` keys that name no module (``...attn1.processor.to_q_lora.down.weight``
  for the UNet, ``text_model.encoder.layers.0.self_attn`` for a transformers 5 text encoder), so when a file's
  alphas differ between layers every layer silently gets the most common alpha. Here ``alpha / rank`` is folded
  into ``lora_up`` and diffusers gets no alphas, so its scale is exactly 1 per layer.
- A text-encoder part with neither ``out_proj`` nor MLP layers fails with "Could not automatically infer state
  dict type".
- Unknown names are skipped silently; a model none of whose names match fails (a UNet with peft's
  ``NoMatchingPeftModuleError``, a text encoder with an ``IndexError``), after the UNet may already have taken
  the adapter. Matching by name and shape first lets us report each unmatched layer and refuse a file where
  nothing matches before any weight changes.

Names are mapped by kohya's own rule (module path, dots as underscores, see :func:`kohya_layer_names`), which
gives the same modules as diffusers' conversion for every linear and conv layer of SD 1.5 (282 UNet and 72 text
encoder layers, checked), and handed to diffusers in peft's format (``<module>.lora_A.weight``).

SDXL (an image UNet with ``addition_embed_type="text_time"``): kohya's sd-scripts trains SDXL on the original
(SGM/ldm) UNet, so its files name UNet layers ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``,
``lora_unet_middle_block_...``, ``lora_unet_output_blocks_...``, and the two text encoders ``lora_te1_...`` and
``lora_te2_...``. Those UNet names are mapped by diffusers' own SDXL conversion
(``StableDiffusionXLLoraLoaderMixin.lora_state_dict`` with the UNet's config, then
``convert_unet_state_dict_to_peft``), one layer at a time, which on the tiny SDXL UNet gives the right module
for all 85 of its linear and conv layers (see :func:`sdxl_unet_layer_names`); kohya's own rule covers files in
diffusers' layout. diffusers' alphas are not used: through ``StableDiffusionXLPipeline.load_lora_weights``
and ``fuse_lora``, a file whose alphas differed between layers had its attention projections fused at the
file's most common alpha (``attn1.to_q`` with alpha/rank 2/4 got 1/4, ``attn2.to_k`` with 8/2 got 1/2; their
alphas come back as ``...processor.to_q_lora.down.weight.alpha``, a name peft never matches), while ``ff``,
``proj_in`` and resnet convs got their own; so here too ``alpha / rank`` is folded into ``lora_up``. The text
encoders' names follow kohya's rule, as for SD 1.5.

A LoRA made for the other family is refused in one line before anything changes (:func:`check_lora_family`):
by its text-encoder prefixes (``lora_te_`` is SD 1.x/2.x, ``lora_te1_``/``lora_te2_`` SDXL) and by the width of
the text context its cross-attention ``to_k``/``to_v`` layers take (SD 1.x 768, SD 2.x 1024, SDXL 2048), which
must be the UNet's ``cross_attention_dim``. Without this, an SD 1.5 LoRA would partly fit an SDXL UNet: layers
such as ``down_blocks.1``'s self-attention have the same names and shapes in both.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import ExitStack
from typing import Dict, List, Optional, Tuple

import torch
from diffusers import ModelMixin, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin
from diffusers.loaders.lora_base import fuse_text_encoder_lora
from diffusers.utils import convert_unet_state_dict_to_peft, recurse_remove_peft_layers
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import CLIPTextModel

from .leftovers import LOCK_NAME, held_temp_folder, sweep_folders
from .lora_paths import DEFAULT_SCALE as DEFAULT_ALPHA  # both routes merge at the same default strength
from .lora_paths import LORA_TARGETS as TARGETS
from .lora_paths import (TEXT_ENCODER_PREFIX, UNET_PREFIX, check_dump_path, check_lora_file, missing_parents,
                         resolve_lora)
from .registry import SDXL_FAMILY, unet_family
from .stopping import uninterrupted

logger = logging.getLogger(__name__)

_DOWN, _UP, _ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"
_PARTS = {_DOWN, _UP, _ALPHA}
_ADAPTER = "ivmixed_lora"  # fused and unloaded at once, so one name serves every load
SD, SDXL = "Stable Diffusion 1.x", "SDXL"  # the model families, as messages name them
SDXL_TEXT_ENCODER_PREFIXES = ("lora_te1", "lora_te2")  # kohya's prefixes of SDXL's two text encoders
_CONTEXT_FAMILIES = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: SDXL}  # cross-attention width


def read_lora_file(path: str) -> Dict[str, torch.Tensor]:
    """Read a LoRA ``.safetensors`` file, with one-line errors for a missing or unreadable file."""
    check_lora_file(path)
    try:
        return load_file(path)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable .safetensors file ({err})") from None


def kohya_layer_names(model: torch.nn.Module, prefix: str) -> Dict[str, str]:
    """Map the names kohya's sd-scripts gives the linear and conv layers of ``model`` to their module paths.

    kohya names a layer ``prefix + "_" + path`` with dots made underscores, taking text-encoder paths from
    transformers 4's ``CLIPTextModel`` (``text_model.encoder...``). transformers 5 dropped the ``text_model``
    wrapper, so for such a model it is put back into the name.
    """
    stem = "text_model." if isinstance(model, CLIPTextModel) and not hasattr(model, "text_model") else ""
    return {
        f"{prefix}_{(stem + name).replace('.', '_')}": name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
    }


def is_sdxl_unet(model: torch.nn.Module) -> bool:
    """Whether ``model`` is an SDXL-layout UNet: the pooled text embedding and size numbers added to the time
    embedding (``addition_embed_type="text_time"``), as SDXL's UNet and the motion UNet built on it have."""
    config = getattr(model, "config", None)
    return hasattr(config, "get") and unet_family(config) == SDXL_FAMILY


def _is_unet(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return hasattr(config, "get") and config.get("cross_attention_dim") is not None


def model_family(unet: torch.nn.Module) -> str:
    return SDXL if is_sdxl_unet(unet) else SD


def sdxl_unet_layer_names(unet: torch.nn.Module, prefix: str, names) -> Dict[str, str]:
    """Map the kohya names ``names`` of an SDXL UNet's layers (SGM layout, ``<prefix>_input_blocks_4_1_...``, or
    diffusers') to ``unet``'s module paths, with diffusers' SDXL conversion, one layer at a time (so one name it
    cannot convert costs only that layer). Names it maps to no linear or conv layer of ``unet`` are left out."""
    layers = {name for name, module in unet.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    probe = torch.zeros(0)
    out = {}
    for name in names:
        if not name.startswith(prefix + "_"):
            continue
        kohya = UNET_PREFIX + name[len(prefix):]  # diffusers converts kohya's own prefix only
        try:
            converted, _ = StableDiffusionXLLoraLoaderMixin.lora_state_dict(
                {kohya + _DOWN: probe, kohya + _UP: probe}, unet_config=unet.config
            )
            peft = convert_unet_state_dict_to_peft({key.removeprefix("unet."): v for key, v in converted.items()})
        except (ValueError, IndexError, KeyError, AttributeError):  # a name outside SDXL's block structure
            continue
        paths = [key[: -len(".lora_A.weight")] for key in peft if key.endswith(".lora_A.weight")]
        if len(paths) == 1 and paths[0] in layers:
            out[name] = paths[0]
    return out


def _layer_names(model: torch.nn.Module, prefix: str, names) -> Dict[str, str]:
    """kohya name -> module path for the layers of ``model`` that ``names`` may name."""
    mapped = kohya_layer_names(model, prefix)
    if is_sdxl_unet(model):
        mapped.update(sdxl_unet_layer_names(model, prefix, names))
    return mapped


def _text_layers(layers, prefixes: Tuple[str, ...]) -> List[str]:
    return sorted(name for name in layers if name.startswith(tuple(p + "_" for p in prefixes)))


def check_lora_family(
    layers: Dict[str, Dict[str, torch.Tensor]],
    unet: torch.nn.Module,
    source: str = "the LoRA",
    prefix: str = UNET_PREFIX,
    what: str = "the model",
) -> None:
    """Refuse a LoRA made for another model family than ``unet``'s (SD 1.x or SDXL), with a one-line
    ``ValueError``: by its text-encoder prefixes, and by the text width its cross-attention ``to_k``/``to_v``
    layers (``prefix`` ones) take. ``layers``: the LoRA's layers, ``{name: {suffix: tensor}}``."""
    family = model_family(unet)
    sd_text, xl_text = _text_layers(layers, (TEXT_ENCODER_PREFIX,)), _text_layers(layers, SDXL_TEXT_ENCODER_PREFIXES)
    if family == SDXL and sd_text and not xl_text:
        raise ValueError(
            f"{source} is a LoRA for {SD} (its text-encoder layers are {TEXT_ENCODER_PREFIX}_..., SDXL's are "
            f"lora_te1_.../lora_te2_...) and {what} is SDXL; pass a LoRA made for SDXL"
        )
    if family == SD and xl_text and not sd_text:
        raise ValueError(
            f"{source} is a LoRA for SDXL (its text-encoder layers are lora_te1_.../lora_te2_...) and {what} is "
            f"{SD}; pass a LoRA made for {SD}"
        )
    context = unet.config.get("cross_attention_dim")
    widths = {int(w) for w in (context if isinstance(context, (list, tuple)) else [context])}
    for name in sorted(layers):
        down = layers[name].get(_DOWN)
        if (name.startswith(prefix + "_") and name.endswith(("attn2_to_k", "attn2_to_v"))
                and "motion_modules" not in name and down is not None and down.ndim == 2
                and down.shape[1] not in widths):
            width = down.shape[1]
            made_for = _CONTEXT_FAMILIES.get(width, "another model family")
            raise ValueError(
                f"{source} is a LoRA for {made_for}: its cross-attention layers ({name}) take a {width}-wide text "
                f"context, and {what} ({family}) takes {'/'.join(map(str, sorted(widths)))}; pass a LoRA made for "
                f"{family}"
            )


def _group_layers(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, Dict[str, torch.Tensor]], List[str]]:
    """Split a kohya state dict into LoRA layers ``{name: {suffix: tensor}}`` and the names of other layers.

    A layer with keys other than down/up/alpha (DoRA's ``dora_scale``, LoHa's ``hada_*``, ...) is not a plain
    LoRA: merging only its down/up would be wrong, so it goes to the others.
    """
    layers: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name, _, rest = key.partition(".")
        layers.setdefault(name, {})["." + rest] = value
    lora = {name: parts for name, parts in layers.items() if _DOWN in parts and _UP in parts and set(parts) <= _PARTS}
    return lora, [name for name in layers if name not in lora]


def _fits(module: torch.nn.Module, down: torch.Tensor, up: torch.Tensor) -> bool:
    weight = module.weight
    return up.shape[0] == weight.shape[0] and up.shape[1] == down.shape[0] and down.shape[1:] == weight.shape[1:]


def _fuse_into(model: torch.nn.Module, weights: Dict[str, Tuple[torch.Tensor, torch.Tensor]], scale: float) -> None:
    """Load ``{module path: (down, up)}`` into ``model`` with diffusers' loader, fuse at ``scale``, unload."""
    state_dict = {}
    for path, (down, up) in weights.items():
        state_dict[f"{path}.lora_A.weight"] = down
        state_dict[f"{path}.lora_B.weight"] = up
    if isinstance(model, ModelMixin):
        model.load_lora_adapter(state_dict, prefix=None, adapter_name=_ADAPTER)
        model.fuse_lora(lora_scale=scale, adapter_names=[_ADAPTER])
        model.unload_lora()
    else:
        prefixed = {f"text_encoder.{key}": value for key, value in state_dict.items()}
        StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(prefixed, None, model, adapter_name=_ADAPTER)
        fuse_text_encoder_lora(model, lora_scale=scale, adapter_names=[_ADAPTER])
        recurse_remove_peft_layers(model)
        # transformers' PEFT state: left set, save_pretrained would write only the (now removed) adapter.
        del model.peft_config
        model._hf_peft_config_loaded = False


def merge_lora(
    state_dict: Dict[str, torch.Tensor],
    targets: List[Tuple[str, torch.nn.Module]],
    scale: float,
    source: str = "the LoRA",
) -> Dict[str, object]:
    """Fuse ``W += scale * (alpha / rank) * up @ down`` into every layer of ``targets`` the kohya file names.

    ``targets`` pairs a kohya prefix (``"lora_unet"``, ``"lora_te"``, or SDXL's ``"lora_te1"``/``"lora_te2"``)
    with the UNet or text encoder it names; a prefix may appear twice (one LoRA into two UNets). An SDXL UNet's
    layers are also found by their SGM names (:func:`sdxl_unet_layer_names`). A LoRA for another model family
    than a target UNet's is refused (:func:`check_lora_family`). LoRA layers that match no model layer by name
    and shape are logged as a warning; if none matches, ``ValueError`` is raised. Either way no model is changed.
    Returns ``{"merged_layers": count, "unmatched": [names]}``.
    """
    layers, unmatched = _group_layers(state_dict)
    for prefix, model in targets:
        if _is_unet(model):
            check_lora_family(layers, model, source, prefix)
    plans = []
    matched = set()
    for prefix, model in targets:
        names = _layer_names(model, prefix, layers)
        modules = dict(model.named_modules())
        hits = {
            name: parts for name, parts in layers.items()
            if name in names and _fits(modules[names[name]], parts[_DOWN], parts[_UP])
        }
        if hits:
            plans.append((model, names, hits))
            matched.update(hits)
    unmatched = sorted(unmatched + [name for name in layers if name not in matched])
    if not matched:
        prefixes = sorted({prefix for prefix, _ in targets})
        family = SDXL if any(is_sdxl_unet(model) for _, model in targets) else SD
        raise ValueError(
            f"no layer of {source} matches a layer of the model (looked for prefixes {prefixes}); "
            f"is it a kohya-format LoRA for {family}?"
        )
    if unmatched:
        logger.warning(
            "%d layers of %s match no model layer and were skipped: %s", len(unmatched), source, ", ".join(unmatched)
        )
    for model, names, hits in plans:
        weights = {}
        for name, parts in hits.items():
            down, up = parts[_DOWN].float(), parts[_UP].float()
            ratio = float(parts[_ALPHA]) / down.shape[0] if _ALPHA in parts else 1.0
            weights[names[name]] = (down, up * ratio)
        _fuse_into(model, weights, scale)
        logger.info("merged %d layers of %s into %s", len(hits), source, type(model).__name__)
    return {"merged_layers": len(matched), "unmatched": unmatched}


def convert_lora(
    base_model_path: str,
    checkpoint_path: str,
    dump_path: str,
    alpha: float = DEFAULT_ALPHA,
    lora_prefix_unet: str = UNET_PREFIX,
    lora_prefix_text_encoder: str = TEXT_ENCODER_PREFIX,
    to_safetensors: bool = False,
    device: str = "cpu",
) -> Dict[str, object]:
    """Merge a kohya LoRA into a Stable Diffusion 1.x folder's UNet and text encoder; save the whole pipeline.

    The folder is written beside ``dump_path`` under a temporary name, locked while it is written, and renamed at
    the end, so a failed or stopped conversion leaves nothing at ``dump_path``, and a killed one leaves only that
    temporary folder, which the next conversion to the same ``dump_path`` removes. Folders above ``dump_path``
    that this call creates are removed again when it fails. An existing ``dump_path`` is refused rather than
    overwritten. Paths and the LoRA file are checked before the base model loads.
    """
    check_dump_path(dump_path)  # the LoRA file and the base model's path are checked as they are read
    parent, name = os.path.split(os.path.abspath(dump_path))
    prefix = f".{name}.partial-"
    sweep_folders(parent, prefix)
    state_dict = read_lora_file(checkpoint_path)
    from .loading import ensure_available, loading

    ensure_available([("base model", base_model_path, "base_model_path", "unet/config.json")])
    with loading("base model", base_model_path, "base_model_path"):
        pipe = StableDiffusionPipeline.from_pretrained(base_model_path, dtype=torch.float32)
    pipe = pipe.to(device)
    report = merge_lora(
        state_dict,
        [(lora_prefix_unet, pipe.unet), (lora_prefix_text_encoder, pipe.text_encoder)],
        alpha,
        source=checkpoint_path,
    )
    created = missing_parents(dump_path)
    partial = None
    try:
        with ExitStack() as held:
            with uninterrupted():  # a stop while the folder is made comes once it has a name to remove
                os.makedirs(parent, exist_ok=True)
                partial = held.enter_context(held_temp_folder(prefix=prefix, parent=parent, remove=False))
            pipe.save_pretrained(partial, safe_serialization=to_safetensors)
            with uninterrupted(stop_after=False):  # complete: dump_path is whole, whenever a stop comes
                os.remove(os.path.join(partial, LOCK_NAME))
                os.chmod(partial, 0o777 & ~_umask())  # a temporary folder is private; the result is not
                os.rename(partial, dump_path)
                partial = None
    except BaseException:
        with uninterrupted(stop_after=False):
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            if not os.path.exists(dump_path):
                _remove_empty(created)
        raise
    logger.info(
        "merged %d layers of %s at alpha %s into %s", report["merged_layers"], checkpoint_path, alpha, dump_path
    )
    return report


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_empty(folders: List[str]) -> None:
    """Remove ``folders`` (deepest first) as long as they are empty: the ones a failed call created."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _replace_image_model(pipe, folder: str) -> None:
    """Swap in the converted folder's UNet (and text encoder, where the image model has its own)."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=pipe.image_unet.dtype)
    pipe.register_modules(image_unet=unet.to(pipe.image_unet.device))
    old_encoder = getattr(pipe, "image_text_encoder", None)
    if old_encoder is not None:
        encoder = type(old_encoder).from_pretrained(folder, subfolder="text_encoder", dtype=old_encoder.dtype)
        pipe.register_modules(image_text_encoder=encoder.to(old_encoder.device))


def _folder_family(folder: str) -> Optional[str]:
    """The family of a converted folder's UNet, from its config (None where it cannot be read)."""
    try:
        with open(os.path.join(folder, "unet", "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return SDXL if isinstance(config, dict) and unet_family(config) == SDXL_FAMILY else SD


def _text_targets(unet: torch.nn.Module, first, second) -> List[Tuple[str, torch.nn.Module]]:
    """The text encoders that go with ``unet`` (``second``: SDXL's other one), each with its kohya prefix."""
    if is_sdxl_unet(unet):
        pairs = zip(SDXL_TEXT_ENCODER_PREFIXES, (first, second))
    else:
        pairs = [(TEXT_ENCODER_PREFIX, first)]
    return [(prefix, encoder) for prefix, encoder in pairs if encoder is not None]


def apply_lora_to_pipeline(
    pipe,
    spec: str,
    scale: Optional[float] = None,
    target: str = "image",
    lora_dirs=None,
) -> Dict[str, object]:
    """Apply the LoRA ``spec`` names (see :func:`resolve_lora`) to an IV-mixed pipeline, fused into its weights.

    ``target``: ``"image"`` (``pipe.image_unet``, and the image model's own text encoders where it has them:
    ``pipe.image_text_encoder``, and for SDXL ``pipe.image_text_encoder_2``), ``"video"`` (``pipe.unet`` and the
    video model's text encoders) or ``"both"``. An SDXL image UNet (``addition_embed_type="text_time"``) takes
    SDXL kohya files (SGM block names, ``lora_te1_``/``lora_te2_`` text encoders, see the module docstring); a
    LoRA for the other family is refused. A ``.safetensors`` file is loaded directly at strength ``scale``
    (default :data:`DEFAULT_ALPHA`, the converter's default, so both routes give the same model). A converted
    (Stable Diffusion 1.x) folder replaces the image model; its strength was fixed at conversion, so ``scale``
    does not apply. Call this before enabling CPU offload. Returns a record for the run's JSON.
    """
    if target not in TARGETS:
        raise ValueError(f"LoRA target must be one of {', '.join(TARGETS)}, not {target!r}")
    if target in ("image", "both") and getattr(pipe, "image_unet", None) is None:
        raise ValueError("the pipeline has no image model (image_unet) to apply the LoRA to; use --lora-target video")
    kind, path = resolve_lora(spec, lora_dirs)
    name = os.path.basename(os.path.normpath(path)).removesuffix(".safetensors")
    record = {"name": name, "path": path, "kind": kind, "scale": scale, "target": target}
    if kind == "folder":
        if target != "image":
            raise ValueError(
                f"{path} is a converted Stable Diffusion folder and can only replace the image model; "
                "pass the LoRA's .safetensors file to apply it to the video model"
            )
        family, folder_family = model_family(pipe.image_unet), _folder_family(path)
        if folder_family is not None and folder_family != family:
            raise ValueError(
                f"{path} is a converted {folder_family} folder and the image model is {family}; pass a LoRA "
                f".safetensors file made for {family}"
            )
        if scale is not None:
            logger.warning("LoRA scale %s ignored: converted folder %s was merged at its --alpha", scale, path)
        _replace_image_model(pipe, path)
        record["scale"] = None
        return record

    scale = DEFAULT_ALPHA if scale is None else scale
    record["scale"] = scale
    targets, unets = [], []
    if target in ("image", "both"):
        unets.append(("the image model", pipe.image_unet))
        targets.append((UNET_PREFIX, pipe.image_unet))
        targets += _text_targets(pipe.image_unet, getattr(pipe, "image_text_encoder", None),
                                 getattr(pipe, "image_text_encoder_2", None))
    if target in ("video", "both"):
        if not hasattr(pipe.unet, "load_lora_adapter"):
            raise ValueError(
                f"the video model's {type(pipe.unet).__name__} cannot take a LoRA; use --lora-target image"
            )
        unets.append(("the video model", pipe.unet))
        targets.append((UNET_PREFIX, pipe.unet))
        targets += _text_targets(pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    state_dict = read_lora_file(path)
    layers, _ = _group_layers(state_dict)
    for what, unet in unets:  # before the text-encoder layers are set aside: their prefixes tell the family too
        check_lora_family(layers, unet, path, what=what)
    sdxl = is_sdxl_unet(unets[0][1])
    text_prefixes = SDXL_TEXT_ENCODER_PREFIXES if sdxl else (TEXT_ENCODER_PREFIX,)
    taken = {prefix for prefix, _ in targets}
    skipped = tuple(f"{prefix}_" for prefix in text_prefixes if prefix not in taken)
    left_out = {key.partition(".")[0] for key in state_dict if skipped and key.startswith(skipped)}
    if left_out:
        logger.info(
            "%d text-encoder layers of %s not applied: the image model shares the video model's text encoder%s",
            len(left_out), path, "s" if sdxl else " (target 'both' applies them to it)",
        )
        state_dict = {key: value for key, value in state_dict.items() if key.partition(".")[0] not in left_out}
    record.update(merge_lora(state_dict, targets, scale, source=path))
    return record
