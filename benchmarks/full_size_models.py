"""The real architectures of each pipeline with random weights: the benchmark's networks have the real shapes and
FLOPs, without a download. The tokenizer is the tiny character-level one of :mod:`ivmixed.testing`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DPMSolverMultistepScheduler, MotionAdapter,
                       UNet2DConditionModel, UNet3DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ivmixed.models import VideoCrafterUNet3DConditionModel
from ivmixed.pipelines.animatediff import DDIM_SETTINGS
from ivmixed.pipelines.animatediff_sdxl import SDXL_DDIM_SETTINGS
from ivmixed.pipelines.videocrafter import DPM_SETTINGS
from ivmixed.registry import PIPELINES
from ivmixed.testing import SPECIAL_TOKENS, sd_scheduler, sdxl_scheduler, t2v_scheduler, tiny_tokenizer

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
# lllyasviel/control_v11p_sd15_openpose, config.json: ControlNetModel.from_unet of the SD 1.5 UNet above (its encoder
# half and mid block, with a zero convolution per residual) plus the control image's embedding (16/32/96/256
# channels from a 3-channel RGB image at the pixel size down to the latent size). Every SD 1.5 ControlNet v1.1
# (openpose, canny, depth, ...) has this architecture: 361,279,120 parameters (tests/test_flops.py).
SD15_CONTROLNET_CONFIG = dict(
    in_channels=4,
    conditioning_channels=3,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
    use_linear_projection=False,
    class_embed_type=None,
    num_class_embeds=None,
    upcast_attention=False,
    resnet_time_scale_shift="default",
    projection_class_embeddings_input_dim=None,
    controlnet_conditioning_channel_order="rgb",
    conditioning_embedding_out_channels=(16, 32, 96, 256),
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


# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (the values that differ from UNet2DConditionModel's
# defaults, and the block layout): three levels, no attention at the first, 1/2/10 transformer layers at the
# others, cross-attention over both text encoders' widths (768 + 1280), and the pooled embedding (1280) plus the
# six size numbers (6 x 256) added to the time embedding.
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
# guoyww/animatediff-motion-adapter-sdxl-beta: motion modules at the three SDXL levels, none in the mid block;
# heads, window and mid-block setting from the AnimateDiff sdxl branch's configs/inference/inference.yaml
# (num_attention_heads 8, one temporal transformer block, temporal_position_encoding_max_len 32,
# motion_module_mid_block false); two motion layers per down block (three per up block) follow SDXL's
# layers_per_block, as UNetMotionModel.from_unet2d requires.
MOTION_ADAPTER_SDXL_BETA_CONFIG = dict(
    block_out_channels=(320, 640, 1280),
    motion_layers_per_block=2,
    motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=8,
    motion_norm_num_groups=32,
    motion_max_seq_length=32,
    use_motion_mid_block=False,
)
# stabilityai/stable-diffusion-xl-base-1.0, vae/config.json: SD's VAE architecture at 1024 px, its own scaling
# factor, and force_upcast (it overflows in fp16, so the pipeline decodes in fp32).
SDXL_VAE_CONFIG = dict(SD_VAE_CONFIG, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# SDXL's second text encoder: OpenCLIP ViT-bigG/14's text tower with its projection (CLIPTextModelWithProjection;
# the projection gives the pooled embedding); the first is CLIP_L_TEXT_CONFIG.
OPEN_CLIP_BIGG_TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)


def _full_text_encoder(config: Dict, cls=CLIPTextModel):
    return cls(CLIPTextConfig(**config, bos_token_id=_TINY_VOCAB - 2, eos_token_id=_TINY_VOCAB - 1,
                              pad_token_id=_TINY_VOCAB - 1)).eval()


# -- what each pipeline is built from -------------------------------------------------------------------------
# Each builder returns keyword arguments of the pipeline class. ``text`` runs on ``device`` (it gets the folder
# for the tokenizers), ``unets`` on ``unet_device``; the pipeline class is constructed inside the UNet device's
# context, since AnimateDiff's constructors build the motion UNet from the 2D UNet and the adapter.


def _sd_text(folder: str) -> Dict:
    return dict(text_encoder=_full_text_encoder(CLIP_L_TEXT_CONFIG),
                tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")))


def _t2v_text(folder: str) -> Dict:
    return dict(
        text_encoder=_full_text_encoder(OPEN_CLIP_H_TEXT_CONFIG),
        tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")),
        image_text_encoder=_full_text_encoder(CLIP_L_TEXT_CONFIG),
        image_tokenizer=tiny_tokenizer(os.path.join(folder, "image_tokenizer")),
    )


def _sdxl_text(folder: str) -> Dict:
    """SDXL's two encoders; the image UNet (also SDXL base) shares them, as the pipeline's default does."""
    return dict(
        text_encoder=_full_text_encoder(CLIP_L_TEXT_CONFIG),
        text_encoder_2=_full_text_encoder(OPEN_CLIP_BIGG_TEXT_CONFIG, CLIPTextModelWithProjection),
        tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")),
        tokenizer_2=tiny_tokenizer(os.path.join(folder, "tokenizer_2")),
    )


def _scheduler(cls, base, settings: Dict):
    """``cls`` from the config of the scheduler the checkpoint ships (``base``), with the pipeline's settings."""
    return lambda: cls.from_config(base().config, **settings)


def _motion(unet_config: Dict, adapter_config: Dict):
    return lambda: dict(unet=UNet2DConditionModel(**unet_config).eval(),
                        motion_adapter=MotionAdapter(**adapter_config).eval())


@dataclass(frozen=True)
class FullSizeModels:
    size: Tuple[int, int]  # the resolution the video model was trained at (height, width in pixels)
    vae: Dict  # AutoencoderKL config
    text: Callable[[str], Dict]  # text encoders and tokenizers (the tokenizers written under the folder)
    scheduler: Callable[[], object]
    image_unet: Dict  # UNet2DConditionModel config of the image model
    unets: Callable[[], Dict]  # the video model: ``unet`` (and ``motion_adapter``)
    controlnet: Optional[Dict] = None  # ControlNetModel config, for a pipeline that takes ControlNets


FULL_SIZE_MODELS: Dict[str, FullSizeModels] = {
    "Animatediff": FullSizeModels(
        size=(512, 512), vae=SD_VAE_CONFIG, text=_sd_text,
        scheduler=_scheduler(DDIMScheduler, sd_scheduler, DDIM_SETTINGS),
        image_unet=SD15_UNET_CONFIG, unets=_motion(SD15_UNET_CONFIG, MOTION_ADAPTER_V153_CONFIG),
        controlnet=SD15_CONTROLNET_CONFIG,
    ),
    "ModelScope": FullSizeModels(
        size=(256, 256), vae=SD_VAE_CONFIG, text=_t2v_text,
        scheduler=_scheduler(DDIMScheduler, t2v_scheduler, DDIM_SETTINGS),
        image_unet=SD15_UNET_CONFIG,
        unets=lambda: dict(unet=UNet3DConditionModel(**MODELSCOPE_UNET_CONFIG).eval()),
    ),
    "VideoCrafter": FullSizeModels(
        size=(320, 512), vae=SD_VAE_CONFIG, text=_t2v_text,
        scheduler=_scheduler(DPMSolverMultistepScheduler, t2v_scheduler, DPM_SETTINGS),
        image_unet=SD15_UNET_CONFIG,
        unets=lambda: dict(unet=VideoCrafterUNet3DConditionModel(**VIDEOCRAFTER_UNET_CONFIG).eval()),
    ),
    "AnimatediffSDXL": FullSizeModels(
        size=(1024, 1024), vae=SDXL_VAE_CONFIG, text=_sdxl_text,
        scheduler=_scheduler(DDIMScheduler, sdxl_scheduler, SDXL_DDIM_SETTINGS),
        image_unet=SDXL_UNET_CONFIG, unets=_motion(SDXL_UNET_CONFIG, MOTION_ADAPTER_SDXL_BETA_CONFIG),
    ),
}
# The resolution each video model was trained at (height, width in pixels).
FULL_SIZE = {name: models.size for name, models in FULL_SIZE_MODELS.items()}


def full_size_controlnet(pipeline: str = "Animatediff", device="cpu", seed: int = 0) -> ControlNetModel:
    """The full-size ControlNet architecture of ``pipeline``'s image model, with random weights, on ``device``."""
    config = FULL_SIZE_MODELS[pipeline].controlnet if pipeline in FULL_SIZE_MODELS else None
    if config is None:
        raise ValueError(f"no full-size ControlNet architecture for pipeline {pipeline!r}")
    torch.manual_seed(seed)
    with torch.device(device):
        return ControlNetModel(**config).eval()


def full_size_pipeline(pipeline: str, folder: str, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0,
                       unet_device=None, controlnets: int = 0):
    """``pipeline`` with its real architectures and random weights, built on ``device`` in ``dtype``.

    The tokenizer is the character-level one (written to ``folder``): prompt lengths differ from CLIP's BPE, but
    every prompt is padded to 77 tokens, so the text encoders' work is the same. ``unet_device`` builds the UNets
    (and AnimateDiff's motion adapter) elsewhere: ``"meta"`` gives shapes without weights, for counting FLOPs
    on a machine that could not hold or run them (``flops.py``). ``controlnets`` registers that many full-size
    ControlNets (:func:`full_size_controlnet`, on ``unet_device``) as the pipeline's ``controlnet`` (several as
    one ``MultiControlNetModel``), for the pipelines that take them.
    """
    models = FULL_SIZE_MODELS.get(pipeline)
    if models is None:
        raise ValueError(f"no full-size architecture for pipeline {pipeline!r}")
    if controlnets and models.controlnet is None:
        raise ValueError(f"no full-size ControlNet architecture for pipeline {pipeline!r}")
    unet_device = device if unet_device is None else unet_device
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**models.vae).eval()
        components = models.text(folder)
    components["scheduler"] = models.scheduler()  # schedulers keep their tables on the CPU
    with torch.device(unet_device):
        image_unet = UNet2DConditionModel(**models.image_unet).eval()
        components.update(models.unets())
        # inside the device context: AnimateDiff's constructors build the motion UNet from the 2D one
        pipe = PIPELINES[pipeline].pipeline_class()(vae=vae, image_unet=image_unet, **components)
    if controlnets:
        from ivmixed.pipelines.control import controlnet_of

        nets = [full_size_controlnet(pipeline, unet_device, seed=seed + 1 + i) for i in range(controlnets)]
        pipe.register_modules(controlnet=controlnet_of(nets))
    return pipe.to(dtype=dtype)
