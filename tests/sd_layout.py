"""The original Stable Diffusion and AnimateDiff key layouts, written from diffusers models, for single-file tests.

Civitai-style files hold one state dict: the UNet under ``model.diffusion_model.`` (``input_blocks``,
``middle_block``, ``output_blocks``), the VAE under ``first_stage_model.`` (``encoder.down.N.block.M``, 1x1 convolution
attention) and the CLIP text encoder under ``cond_stage_model.transformer.text_model.``. Original AnimateDiff motion
modules put each block's layers under ``temporal_transformer`` with numbered ``attention_blocks``/``norms`` and a
positional encoding per attention block. The functions below write those layouts from diffusers state dicts; the tests
check them against diffusers' own converters (which go the other way).
"""

from __future__ import annotations

import json
import struct
from typing import Dict, Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _rename_resnet(rest: str, names: Mapping[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{names.get(head, head)}.{tail}"


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> Dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in the original layout (without the prefix)."""
    per_block = config["layers_per_block"]
    n_blocks = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        top = next((k for k in _UNET_TOP if key.startswith(k + ".")), None)
        if top is not None:
            new = _UNET_TOP[top] + key[len(top):]
        elif parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":  # after the block's resnets: input_blocks.<last of block>.0.op
                new = f"input_blocks.{1 + block * (per_block + 1) + per_block}.0.op.{'.'.join(parts[5:])}"
            else:
                layer = 1 + block * (per_block + 1) + index
                new = (f"input_blocks.{layer}.0.{_rename_resnet(rest, _UNET_RESNET)}" if kind == "resnets"
                       else f"input_blocks.{layer}.1.{rest}")
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            new = (f"middle_block.{2 * index}.{_rename_resnet(rest, _UNET_RESNET)}" if kind == "resnets"
                   else f"middle_block.1.{rest}")
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            has_attention = config["up_block_types"][block].startswith("CrossAttn")
            if kind == "upsamplers":  # after the block's last layer: output_blocks.<last>.<1 or 2>.conv
                last = block * (per_block + 1) + per_block
                new = f"output_blocks.{last}.{2 if has_attention else 1}.conv.{'.'.join(parts[5:])}"
            else:
                layer = block * (per_block + 1) + index
                new = (f"output_blocks.{layer}.0.{_rename_resnet(rest, _UNET_RESNET)}" if kind == "resnets"
                       else f"output_blocks.{layer}.1.{rest}")
        else:
            raise KeyError(f"no original name for UNet key {key}")
        out[new] = value
    assert n_blocks == len(config["up_block_types"])
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping) -> Dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the original layout (without the prefix)."""
    n_blocks = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        side, _, rest = key.partition(".")
        if side in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        parts = rest.split(".")
        if parts[0] in ("conv_in", "conv_out"):
            new = rest
        elif parts[0] == "conv_norm_out":
            new = "norm_out." + ".".join(parts[1:])
        elif parts[0] in ("down_blocks", "up_blocks"):
            block, kind = int(parts[1]), parts[2]
            name, level = ("down", block) if parts[0] == "down_blocks" else ("up", n_blocks - 1 - block)
            if kind in ("downsamplers", "upsamplers"):
                new = f"{name}.{level}.{'downsample' if name == 'down' else 'upsample'}.{'.'.join(parts[4:])}"
            else:
                tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{name}.{level}.block.{parts[3]}.{tail}"
        elif parts[0] == "mid_block":
            kind, index, tail = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"mid.block_{index + 1}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                layer = next(k for k in _VAE_ATTENTION if tail.startswith(k + "."))
                new = f"mid.attn_1.{_VAE_ATTENTION[layer]}{tail[len(layer):]}"
                if value.dim() == 2:  # the original attention projections are 1x1 convolutions
                    value = value[:, :, None, None]
        else:
            raise KeyError(f"no original name for VAE key {key}")
        out[f"{side}.{new}"] = value
    return out


def text_encoder_to_original(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict as the original checkpoint's ``transformer.text_model.*``
    (without the ``cond_stage_model.transformer.text_model.`` prefix), with the position ids files carry."""
    out = {key[len("text_model."):] if key.startswith("text_model.") else key: value for key, value in state.items()}
    positions = out["embeddings.position_embedding.weight"].shape[0]
    out.setdefault("embeddings.position_ids", torch.arange(positions)[None])
    return out


def sd_checkpoint(unet=None, vae=None, text_encoder=None) -> Dict[str, torch.Tensor]:
    """A Civitai-style single-file state dict from diffusers/transformers models (any may be left out)."""
    out = {}
    if unet is not None:
        out.update({UNET_PREFIX + k: v for k, v in unet_to_original(unet.state_dict(), unet.config).items()})
    if vae is not None:
        out.update({VAE_PREFIX + k: v for k, v in vae_to_original(vae.state_dict(), vae.config).items()})
    if text_encoder is not None:
        out.update({CLIP_PREFIX + k: v for k, v in text_encoder_to_original(text_encoder.state_dict()).items()})
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def motion_to_original(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A diffusers ``MotionAdapter`` state dict in the original AnimateDiff layout."""
    out = {}
    for key, value in state.items():
        head, sep, rest = key.partition(".motion_modules.")
        index, _, tail = rest.partition(".")
        tail = (tail.replace("norm1.", "norms.0.").replace("norm2.", "norms.1.").replace("norm3.", "ff_norm.")
                .replace("attn1.", "attention_blocks.0.").replace("attn2.", "attention_blocks.1."))
        if tail.endswith("pos_embed.pe"):  # one positional encoding per attention block in the original
            block = tail[: -len("pos_embed.pe")]
            for n in (0, 1):
                out[f"{head}.motion_modules.{index}.temporal_transformer.{block}attention_blocks.{n}.pos_encoder.pe"] = value
            continue
        out[f"{head}.motion_modules.{index}.temporal_transformer.{tail}"] = value
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def write_header_only(path, entries: Mapping[str, tuple], dtype: str = "F16") -> None:
    """A well-formed .safetensors file whose tensors (name -> shape) are all zeros: a file's key layout without
    building its model."""
    width = {"F16": 2, "F32": 4}[dtype]
    table, offset = {}, 0
    for name, shape in entries.items():
        size = width
        for n in shape:
            size *= n
        table[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(table).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + bytes(offset))
