"""Tiny random-weight components, saved in the hub repositories' layout.

The tests and ``inference.py --tiny`` share these builders, so the real ``from_pretrained`` code is
what they exercise, offline and in seconds. Their outputs are noise: the weights are random. (The benchmark's
full-size random architectures live beside it, in ``benchmarks/full_size_models.py``.)
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, PNDMScheduler, UNet2DConditionModel, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .models import VideoCrafterUNet3DConditionModel
from .registry import PIPELINES, TINY_MOTION_FRAMES, unet_family

TEXT_DIM = 32
TINY_FOLDER_PREFIX = "ivmixed-tiny-"  # the temporary folder the tiny models are saved in while they load
LATENT_SIZE = 8  # image UNets' native sample size; the VAE scales by 8, so 64 px
VIDEO_LATENT_SIZE = 4  # text-to-video UNets' default size: unlike LATENT_SIZE, so the image model's resize path runs
VAE_SCALE = 8
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _byte_alphabet():
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (printable bytes keep their glyph)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, shift = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shift))
            shift += 1
    return chars


def write_tiny_tokenizer(folder: str) -> None:
    """Write a character-level CLIP tokenizer (vocab.json, merges.txt without merges) to ``folder``."""
    os.makedirs(folder, exist_ok=True)
    tokens = [c for c in _byte_alphabet()] + [c + "</w>" for c in _byte_alphabet()] + list(SPECIAL_TOKENS)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    CLIPTokenizer.from_pretrained(folder, model_max_length=77).save_pretrained(folder)


def tiny_tokenizer(folder: str) -> CLIPTokenizer:
    write_tiny_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def save_tiny_clip(folder: str, seed: int = 0) -> str:
    """A tiny random CLIP (32 px images) with its processor, saved like a hub repository (for scoring offline)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    write_tiny_tokenizer(folder)
    vocab = 2 * 256 + len(SPECIAL_TOKENS)
    tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(tiny, vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(tiny, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(folder)).save_pretrained(folder)
    return folder


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    vocab = 2 * 256 + len(SPECIAL_TOKENS)
    config = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
        projection_dim=TEXT_DIM,
    )
    return CLIPTextModel(config).eval()


def tiny_image_unet(seed: int = 0, sample_size: int = LATENT_SIZE) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def tiny_motion_adapter(seed: int = 0, mid_block: bool = True) -> MotionAdapter:
    """Motion modules for the tiny UNets; ``mid_block=False``: none in the mid block, as the SDXL beta adapter."""
    torch.manual_seed(seed)
    return MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=32,
        motion_max_seq_length=TINY_MOTION_FRAMES,
        use_motion_mid_block=mid_block,
    ).eval()


def _tiny_3d_unet_config(sample_size: Optional[int]) -> Dict:
    return dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def tiny_video_unet(seed: int = 0, sample_size: Optional[int] = LATENT_SIZE) -> UNet3DConditionModel:
    """A ModelScope-style 3D UNet (diffusers' ``UNet3DConditionModel``)."""
    torch.manual_seed(seed)
    return UNet3DConditionModel(**_tiny_3d_unet_config(sample_size)).eval()


def tiny_videocrafter_unet(
    seed: int = 0, sample_size: Optional[int] = VIDEO_LATENT_SIZE, fps_cond: bool = True
) -> VideoCrafterUNet3DConditionModel:
    """The same 3D UNet with VideoCrafter2's fps condition; same seed, same weights as :func:`tiny_video_unet`."""
    torch.manual_seed(seed)
    return VideoCrafterUNet3DConditionModel(**_tiny_3d_unet_config(sample_size), fps_cond=fps_cond).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=LATENT_SIZE * VAE_SCALE,
    ).eval()


def sd_scheduler() -> PNDMScheduler:
    """The scheduler Stable Diffusion 1.5 checkpoints ship (the pipelines swap in DDIM from its config)."""
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )


def t2v_scheduler() -> DDIMScheduler:
    """The scheduler ModelScope and Zeroscope checkpoints ship (DDIM over SD's scaled-linear betas)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def save_in_hub_layout(folder: str, pipeline_class: str, **components) -> str:
    """Save components in subfolders of ``folder`` with a ``model_index.json`` naming ``pipeline_class``."""
    os.makedirs(folder, exist_ok=True)
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1"}
    for name, component in components.items():
        if component is None:
            index[name] = [None, None]
            continue
        component.save_pretrained(os.path.join(folder, name))
        library = "transformers" if type(component).__module__.startswith("transformers") else "diffusers"
        index[name] = [library, type(component).__name__]
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return folder


def save_tiny_sd(folder: str, seed: int = 0, sample_size: int = LATENT_SIZE) -> str:
    """A tiny Stable Diffusion 1.5-layout checkpoint (unet, vae, text_encoder, tokenizer, scheduler)."""
    return save_in_hub_layout(
        folder,
        "StableDiffusionPipeline",
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")),
        unet=tiny_image_unet(seed, sample_size),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
    )


def save_tiny_motion_adapter(folder: str, seed: int = 0, mid_block: bool = True) -> str:
    tiny_motion_adapter(seed, mid_block).save_pretrained(folder)
    return folder


def save_tiny_text_to_video(folder: str, seed: int = 0, sample_size: int = VIDEO_LATENT_SIZE) -> str:
    """A tiny ModelScope/Zeroscope-layout checkpoint (``TextToVideoSDPipeline``: unet, vae, text_encoder, ...)."""
    return save_in_hub_layout(
        folder,
        "TextToVideoSDPipeline",
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")),
        unet=tiny_video_unet(seed, sample_size),
        scheduler=t2v_scheduler(),
    )


HUB_VIDEOCRAFTER_CLASS = "UNet3DVideoCrafterConditionModel"  # `_class_name` in adamdad/videocrafterv2_diffusers


def save_tiny_videocrafter_unet(folder: str, seed: int = 0, subfolder: Optional[str] = None) -> str:
    """A tiny VideoCrafter2 UNet laid out like ``adamdad/videocrafterv2_diffusers``: weights at the root
    (or under ``subfolder``), and the config naming the class the conversion used."""
    target = os.path.join(folder, subfolder) if subfolder else folder
    tiny_videocrafter_unet(seed).save_pretrained(target)
    config_path = os.path.join(target, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["_class_name"] = HUB_VIDEOCRAFTER_CLASS
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    return folder


def save_tiny_animatediff(root: str) -> Dict[str, str]:
    return {
        "video_model": save_tiny_sd(os.path.join(root, "video-base"), seed=1),
        "motion_adapter": save_tiny_motion_adapter(os.path.join(root, "motion-adapter"), seed=2),
        "image_model": save_tiny_sd(os.path.join(root, "image-model"), seed=3),
    }


def save_tiny_modelscope(root: str) -> Dict[str, str]:
    return {
        "video_model": save_tiny_text_to_video(os.path.join(root, "text-to-video"), seed=1),
        "image_model": save_tiny_sd(os.path.join(root, "image-model"), seed=3),
    }


def save_tiny_videocrafter(root: str) -> Dict[str, str]:
    return {
        "video_model": save_tiny_text_to_video(os.path.join(root, "zeroscope"), seed=1),
        "unet": save_tiny_videocrafter_unet(os.path.join(root, "videocrafter-unet"), seed=2),
        "image_model": save_tiny_sd(os.path.join(root, "image-model"), seed=3),
    }


# -- SDXL -----------------------------------------------------------------------------------------------------

SDXL_TEXT_DIMS = (TEXT_DIM, TEXT_DIM)  # the two text encoders' widths (SDXL: 768 and 1280)
SDXL_POOLED_DIM = TEXT_DIM  # the second encoder's projection (SDXL: 1280)
SDXL_TIME_DIM = 8  # addition_time_embed_dim (SDXL: 256); six micro-conditioning numbers each


def tiny_sdxl_text_encoders(seed: int = 0):
    """SDXL's two text encoders, tiny: a CLIP-L-like ``CLIPTextModel`` and a ``CLIPTextModelWithProjection``
    whose projection gives the pooled embedding."""
    from transformers import CLIPTextModelWithProjection

    first = tiny_text_encoder(seed)
    torch.manual_seed(seed + 1000)
    config = first.config.to_dict()
    config.update(hidden_size=SDXL_TEXT_DIMS[1], projection_dim=SDXL_POOLED_DIM)
    second = CLIPTextModelWithProjection(CLIPTextConfig(**config)).eval()
    return first, second


def tiny_sdxl_unet(seed: int = 0, sample_size: int = LATENT_SIZE) -> UNet2DConditionModel:
    """An SDXL-layout UNet: cross-attention over both encoders' widths, and the pooled embedding plus the six
    size and crop numbers (``time_ids``) added to the time embedding (``addition_embed_type="text_time"``)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=sum(SDXL_TEXT_DIMS),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_DIM + SDXL_POOLED_DIM,
        norm_num_groups=32,
    ).eval()


def sdxl_scheduler():
    """The scheduler SDXL base 1.0 ships (the pipeline swaps in DDIM from its config)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading")


def save_tiny_sdxl(folder: str, seed: int = 0, text_seed: Optional[int] = None) -> str:
    """A tiny SDXL-layout checkpoint (``StableDiffusionXLPipeline``: unet, vae, two text encoders and tokenizers,
    scheduler); ``text_seed`` (default ``seed``) seeds the text encoders, so two checkpoints can share them."""
    first, second = tiny_sdxl_text_encoders(seed if text_seed is None else text_seed)
    return save_in_hub_layout(
        folder,
        "StableDiffusionXLPipeline",
        vae=tiny_vae(seed),
        text_encoder=first,
        text_encoder_2=second,
        tokenizer=tiny_tokenizer(os.path.join(folder, "tokenizer")),
        tokenizer_2=tiny_tokenizer(os.path.join(folder, "tokenizer_2")),
        unet=tiny_sdxl_unet(seed),
        scheduler=sdxl_scheduler(),
    )


def save_tiny_animatediff_sdxl(root: str) -> Dict[str, str]:
    """The image model shares the base's text encoders, as the default (SDXL base for both) does."""
    return {
        "video_model": save_tiny_sdxl(os.path.join(root, "video-base"), seed=1),
        "motion_adapter": save_tiny_motion_adapter(os.path.join(root, "motion-adapter"), seed=2, mid_block=False),
        "image_model": save_tiny_sdxl(os.path.join(root, "image-model"), seed=3, text_seed=1),
    }


def save_tiny_checkpoints(root: str, pipeline: str) -> Dict[str, str]:
    """Write every checkpoint ``pipeline`` (a name of :data:`ivmixed.registry.PIPELINES`) loads under ``root``;
    returns the model-path arguments to load them."""
    from .registry import find_pipeline

    spec = find_pipeline(pipeline)
    if spec is None:
        raise ValueError(f"no tiny checkpoints for pipeline {pipeline!r}")
    return spec.save_tiny_checkpoints(root)


def load_tiny(spec, **options):
    """Pipeline ``spec`` (a :class:`~ivmixed.registry.PipelineSpec`) on freshly saved random tiny models, loaded
    through its real ``from_checkpoints`` (``options`` go to it). The models are saved in a locked temporary
    folder, removed once loaded; folders that killed runs left are removed first (see :mod:`ivmixed.leftovers`)."""
    import tempfile

    from .leftovers import held_temp_folder, sweep_folders

    sweep_folders(tempfile.gettempdir(), TINY_FOLDER_PREFIX)
    with held_temp_folder(TINY_FOLDER_PREFIX) as root:
        return spec.pipeline_class().from_checkpoints(**save_tiny_checkpoints(root, spec.name), **options)


def tiny_pipeline(pipeline: str = "Animatediff"):
    """A ready pipeline on random tiny models, offline, to try the API in seconds (its videos are noise).

    ``pipeline`` is a name of :data:`ivmixed.registry.PIPELINES` (any case). Sets torch to one CPU thread, as
    ``--tiny`` does (:func:`ivmixed.runtime.set_cpu_threads`).
    """
    from .registry import find_pipeline
    from .runtime import quiet_libraries, set_cpu_threads

    spec = find_pipeline(pipeline)
    if spec is None:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
    quiet_libraries()
    set_cpu_threads("cpu", tiny=True)
    pipe = load_tiny(spec)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- IP-Adapter ---------------------------------------------------------------------------------------------------

# The image embedding width of the tiny IP-Adapters' image encoders, per family (h94's ViT-H gives 1024, ViT-bigG
# 1280): unlike each other, so an encoder of the wrong family is refused by width as a real one would be.
TINY_IP_IMAGE_EMBED_DIMS = {"Stable Diffusion 1.5": 16, "SDXL": 24}
TINY_IMAGE_ENCODER_SIZE = 32  # the tiny image encoder's image_size (h94's encoders: 224)


def tiny_image_encoder(seed: int = 0, image_embed_dim: int = 16):
    """A tiny random ``CLIPVisionModelWithProjection`` (32 px images, hidden 32) giving ``image_embed_dim``-wide
    ``image_embeds``: an IP-Adapter's image encoder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=TINY_IMAGE_ENCODER_SIZE, patch_size=8, projection_dim=image_embed_dim)
    return CLIPVisionModelWithProjection(config).eval()


def tiny_ip_adapter_state_dict(unet, seed: int = 0, image_embed_dim: int = 16, num_tokens: int = 4):
    """Random IP-Adapter weights for ``unet`` in the original layout, flat as its ``.safetensors`` files hold them:
    ``image_proj.proj.*`` (image embedding -> ``num_tokens`` context tokens), ``image_proj.norm.*``, and
    ``ip_adapter.{1, 3, 5, ...}.to_k_ip.weight`` / ``to_v_ip.weight`` for its cross-attention layers in the order of
    ``unet.attn_processors`` (as diffusers reads them, :func:`ivmixed.ip_adapter.ip_layer_shapes`)."""
    from .ip_adapter import ip_layer_shapes

    if num_tokens != 4:  # diffusers reads this layout (ImageProjection) as 4 tokens, whatever the file holds
        raise ValueError(f"the plain IP-Adapter layout has 4 image tokens in diffusers, got num_tokens={num_tokens}")
    width = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(seed)

    def random(*shape, scale=0.2):
        return (torch.randn(*shape, generator=generator) * scale).contiguous()

    state = {
        "image_proj.proj.weight": random(num_tokens * width, image_embed_dim),
        "image_proj.proj.bias": random(num_tokens * width),
        "image_proj.norm.weight": 1 + random(width, scale=0.05),
        "image_proj.norm.bias": random(width, scale=0.05),
    }
    for index, (_, hidden, _) in enumerate(ip_layer_shapes(unet)):
        state[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = random(hidden, width)
        state[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = random(hidden, width)
    return state


def save_tiny_ip_adapter(folder: str, unet, seed: int = 0, image_embed_dim: Optional[int] = None,
                         num_tokens: int = 4) -> str:
    """A tiny random IP-Adapter for ``unet`` (an SD 1.5 or SDXL-layout UNet, or the 2D UNet a motion UNet is built
    from) saved in ``folder`` laid out like ``h94/IP-Adapter``: ``models/ip-adapter_sd15.safetensors`` and
    ``models/image_encoder`` (an SDXL UNet, ``addition_embed_type="text_time"``: ``sdxl_models/...sdxl...``).
    diffusers builds the default ``CLIPImageProcessor`` (sized to the encoder's 32 px) when it loads the adapter
    into a pipeline without a ``feature_extractor``, so none is saved, as h94's folders have none. Returns
    ``folder``, a source for :func:`ivmixed.ip_adapter.load_ip_adapter`."""
    from safetensors.torch import save_file

    from .ip_adapter import DEFAULT_WEIGHTS, IMAGE_ENCODER

    family = unet_family(unet.config)
    image_embed_dim = image_embed_dim or TINY_IP_IMAGE_EMBED_DIMS[family]
    subfolder, weight_name = DEFAULT_WEIGHTS[family]
    os.makedirs(os.path.join(folder, subfolder), exist_ok=True)
    save_file(tiny_ip_adapter_state_dict(unet, seed, image_embed_dim, num_tokens),
              os.path.join(folder, subfolder, weight_name))
    tiny_image_encoder(seed + 1, image_embed_dim).save_pretrained(os.path.join(folder, subfolder, IMAGE_ENCODER))
    return folder


# -- ControlNet -----------------------------------------------------------------------------------------------


def tiny_controlnet(seed: int = 0, unet: Optional[UNet2DConditionModel] = None):
    """A ControlNet of the tiny SD 1.5 UNet's shapes (diffusers' ``ControlNetModel.from_unet``), with every weight
    random, its zero-initialised output convolutions too, so its residuals change the frames."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(unet if unet is not None else tiny_image_unet(seed)).eval()
    generator = torch.Generator().manual_seed(seed + 500)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return net


def save_tiny_controlnet(folder: str, seed: int = 0) -> str:
    """:func:`tiny_controlnet` saved as a diffusers ControlNet folder (what ``--tiny --controlnet FOLDER`` takes)."""
    tiny_controlnet(seed).save_pretrained(folder)
    return folder
