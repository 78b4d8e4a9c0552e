"""The real architectures of each pipeline with random weights: the benchmark's networks have the real shapes and
FLOPs, without a download. The tokenizer is the tiny character-level one of :mod:`ivmixed.testing`."""

from __future__ import annotations

import os
from typing import Dict

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ivmixed.models import VideoCrafterUNet3DConditionModel
from ivmixed.registry import PIPELINES
from ivmixed.testing import SPECIAL_TOKENS, sd_scheduler, t2v_scheduler, tiny_tokenizer

SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
# guoyww/animatediff-motion-adapter-v1-5-3 (its config.json has no motion mid block)
MOTION_ADAPTER_V153_CONFIG = dict(
    block_out_channels=(320, 640, 1280, 1280),
    motion_layers_per_block=2,
    motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8,
    motion_norm_num_groups=32,
    motion_max_seq_length=32,
    use_motion_mid_block=False,
)
SD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
# The resolution each video model was trained at (height, width in pixels).
FULL_SIZE = {"Animatediff": (512, 512), "ModelScope": (256, 256), "VideoCrafter": (320, 512)}
# ali-vilab/text-to-video-ms-1.7b's UNet (UNet3DConditionModel's defaults at 256 px)
MODELSCOPE_UNET_CONFIG = dict(
    sample_size=32,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=64,
    norm_num_groups=32,
)
# adamdad/videocrafterv2_diffusers (see ivmixed.models.videocrafter_unet): the class defaults are its config
VIDEOCRAFTER_UNET_CONFIG: Dict = {}
# Token ids of the character-level tokenizer above: the full-size text encoders must end sequences on its EOS.
_TINY_VOCAB = 2 * 256 + len(SPECIAL_TOKENS)
CLIP_L_TEXT_CONFIG = dict(  # SD 1.5's CLIP ViT-L/14 text tower
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
OPEN_CLIP_H_TEXT_CONFIG = dict(  # ModelScope's and Zeroscope's OpenCLIP ViT-H/14 text tower
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
)


def _full_text_encoder(config: Dict) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**config, bos_token_id=_TINY_VOCAB - 2, eos_token_id=_TINY_VOCAB - 1,
                                        pad_token_id=_TINY_VOCAB - 1)).eval()


def full_size_pipeline(pipeline: str, folder: str, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0,
                       unet_device=None):
    """``pipeline`` with its real architectures and random weights, built on ``device`` in ``dtype``.

    The tokenizer is the character-level one (written to ``folder``): prompt lengths differ from CLIP's BPE, but
    every prompt is padded to 77 tokens, so the text encoders' work is the same. ``unet_device`` builds the UNets
    (and AnimateDiff's motion adapter) elsewhere: ``"meta"`` gives shapes without weights, for counting FLOPs
    on a machine that could not hold or run them (``flops.py``).
    """
    from diffusers import DPMSolverMultistepScheduler

    from ivmixed.pipelines.animatediff import DDIM_SETTINGS
    from ivmixed.pipelines.videocrafter import DPM_SETTINGS

    unet_device = device if unet_device is None else unet_device
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**SD_VAE_CONFIG).eval()
        if pipeline == "Animatediff":
            components = dict(
                text_encoder=_full_text_encoder(CLIP_L_TEXT_CONFIG),
                tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")),
                scheduler=DDIMScheduler.from_config(sd_scheduler().config, **DDIM_SETTINGS),
            )
        elif pipeline in ("ModelScope", "VideoCrafter"):
            components = dict(
                text_encoder=_full_text_encoder(OPEN_CLIP_H_TEXT_CONFIG),
                tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")),
                image_text_encoder=_full_text_encoder(CLIP_L_TEXT_CONFIG),
                image_tokenizer=tiny_tokenizer(os.path.join(folder, "image_tokenizer")),
            )
            scheduler = t2v_scheduler().config
            components["scheduler"] = (
                DDIMScheduler.from_config(scheduler, **DDIM_SETTINGS) if pipeline == "ModelScope"
                else DPMSolverMultistepScheduler.from_config(scheduler, **DPM_SETTINGS)
            )
        else:
            raise ValueError(f"no full-size architecture for pipeline {pipeline!r}")
    with torch.device(unet_device):
        image_unet = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
        if pipeline == "Animatediff":
            components["unet"] = UNet2DConditionModel(**SD15_UNET_CONFIG).eval()
            components["motion_adapter"] = MotionAdapter(**MOTION_ADAPTER_V153_CONFIG).eval()
        elif pipeline == "ModelScope":
            components["unet"] = UNet3DConditionModel(**MODELSCOPE_UNET_CONFIG).eval()
        else:
            components["unet"] = VideoCrafterUNet3DConditionModel(**VIDEOCRAFTER_UNET_CONFIG).eval()
        # inside the device context: AnimateDiff's constructor builds the motion UNet from the 2D one
        pipe = PIPELINES[pipeline].pipeline_class()(vae=vae, image_unet=image_unet, **components)
    return pipe.to(dtype=dtype)
