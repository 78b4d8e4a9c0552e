"""The smallest models ComfyUI and AnimateDiff-Evolved (ADE) load, built from diffusers with random weights.

ComfyUI recognises a Stable Diffusion 1.5 UNet by its keys and shapes (320 model channels, 768-wide cross
attention, no linear projection); ADE accepts only motion modules of the SD 1.5 shape (four levels of 320, 640,
1280, 1280 channels, two modules per down level and three per up level), which need a UNet of SD 1.5's channels
with two layers per level. So:

- :func:`image_checkpoint`: a one-level SD 1.5 UNet (25.8 M parameters) alone in a single file, fp32 (or with the
  video checkpoint's CLIP-L, for workflows that encode the image prompts with the image checkpoint's CLIP).
- :func:`video_checkpoint`: a four-level SD 1.5 UNet with attention at the first level only (640 M parameters), with
  a CLIP-L text encoder and the SD VAE (random too) in the same file, so ``CheckpointLoaderSimple`` gives MODEL,
  CLIP and VAE. Stored in fp16 (half the disk and memory of fp32); the diffusers twins hold the same fp16-rounded
  values in fp32, so the file and the twins agree exactly.
- :func:`motion_module`: AnimateDiff motion modules for that UNet (no mid-block module) in the original layout, fp16.

Each builder is deterministic in its seed, writes one ``.safetensors`` file into the given folder and returns it
with its diffusers twin(s). diffusers' default initialisation is kept: the UNets' predicted noise comes out finite
and small (std about 0.33 for the image UNet on unit-variance inputs). ComfyUI's CLIP uses the tokenizer files it
ships (``comfy/sd1_tokenizer``), so no tokenizer is written.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from sd_layout import motion_to_original, sd_checkpoint

IMAGE_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320,), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
VIDEO_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                  layers_per_block=2,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
MOTION = dict(block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_num_attention_heads=8,
              motion_norm_num_groups=32, motion_max_seq_length=32, use_motion_mid_block=False)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
              eos_token_id=49407, pad_token_id=1)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)


@dataclass
class Built:
    path: Path
    seconds: float = 0.0
    params: int = 0

    @property
    def name(self) -> str:
        """The file name, as ComfyUI lists it in its model folder."""
        return self.path.name

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


@dataclass
class ImageCheckpoint(Built):
    unet: object = field(default=None, repr=False)  # diffusers UNet2DConditionModel


@dataclass
class VideoCheckpoint(Built):
    unet: object = field(default=None, repr=False)  # diffusers UNet2DConditionModel
    text_encoder: object = field(default=None, repr=False)  # transformers CLIPTextModel
    vae: object = field(default=None, repr=False)  # diffusers AutoencoderKL


@dataclass
class MotionModule(Built):
    adapter: object = field(default=None, repr=False)  # diffusers MotionAdapter


def _seeded(seed: int, make):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.eval().requires_grad_(False)


def _params(*models) -> int:
    return sum(p.numel() for m in models for p in m.parameters())


def image_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    return _seeded(seed, lambda: UNet2DConditionModel(**IMAGE_UNET))


def image_checkpoint(folder, seed: int = 0, name: str = "ivmixed_tiny_image.safetensors",
                     text_encoder=None) -> ImageCheckpoint:
    """The smallest SD 1.5 UNet ComfyUI detects, fp32, in ``folder/name``: UNet only, or with ``text_encoder`` (a
    CLIP-L ``CLIPTextModel``, stored in fp16) so that ``CheckpointLoaderSimple`` also gives a CLIP."""
    start = time.perf_counter()
    unet = image_unet(seed)
    path = Path(folder) / name
    state = sd_checkpoint(unet=unet)
    if text_encoder is not None:
        clip = sd_checkpoint(text_encoder=text_encoder)
        state.update({k: (v.half() if v.is_floating_point() else v) for k, v in clip.items()})
    save_file(state, str(path))
    params = _params(unet) + (_params(text_encoder) if text_encoder is not None else 0)
    return ImageCheckpoint(path=path, seconds=time.perf_counter() - start, params=params, unet=unet)


def _to_fp16_file(path: Path, state) -> None:
    save_file({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, str(path))


def video_checkpoint(folder, seed: int = 1, name: str = "ivmixed_tiny_video.safetensors") -> VideoCheckpoint:
    """A SD 1.5-channel UNet with attention at level 0 only, CLIP-L and the SD VAE in one fp16 file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    start = time.perf_counter()
    unet = _seeded(seed, lambda: UNet2DConditionModel(**VIDEO_UNET)).half()  # in place, as are the casts below
    text_encoder = _seeded(seed + 1000, lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L))).half()
    vae = _seeded(seed + 2000, lambda: AutoencoderKL(**SD_VAE)).half()
    path = Path(folder) / name
    _to_fp16_file(path, sd_checkpoint(unet=unet, vae=vae, text_encoder=text_encoder))
    gc.collect()
    models = [m.float() for m in (unet, text_encoder, vae)]  # the fp16 values, in fp32
    return VideoCheckpoint(path=path, seconds=time.perf_counter() - start, params=_params(*models),
                           unet=models[0], text_encoder=models[1], vae=models[2])


def motion_module(folder, seed: int = 2, name: str = "ivmixed_tiny_motion.safetensors") -> MotionModule:
    """AnimateDiff motion modules for :func:`video_checkpoint`'s UNet, original layout, fp16."""
    from diffusers import MotionAdapter

    start = time.perf_counter()
    adapter = _seeded(seed, lambda: MotionAdapter(**MOTION)).half()
    path = Path(folder) / name
    _to_fp16_file(path, motion_to_original(adapter.state_dict()))
    gc.collect()
    adapter.float()
    return MotionModule(path=path, seconds=time.perf_counter() - start, params=_params(adapter), adapter=adapter)


class TinyModels:
    """The tiny models of one test session, each built on first use under ``root``: ``root/checkpoints`` and
    ``root/animatediff_models`` (ComfyUI's and ADE's folder names). ``image``, ``image_with_clip``, ``video``,
    ``motion``: the built files with their diffusers twins."""

    def __init__(self, root):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.animatediff_models = self.root / "animatediff_models"
        for folder in (self.checkpoints, self.animatediff_models):
            folder.mkdir(parents=True, exist_ok=True)
        self._built = {}
        self.records = []  # one line per model built, kept after release()

    def _get(self, key, build):
        if key not in self._built:
            built = self._built[key] = build()
            self.records.append(f"{key}: {built.name}, {built.params / 1e6:.1f} M parameters, "
                                f"{built.size_bytes / 1e6:.0f} MB, built in {built.seconds:.1f} s")
        return self._built[key]

    @property
    def image(self) -> ImageCheckpoint:
        return self._get("image", lambda: image_checkpoint(self.checkpoints))

    @property
    def image_with_clip(self) -> ImageCheckpoint:
        """``image``'s UNet (same seed, same weights) with ``video``'s text encoder, in a file of its own."""
        return self._get("image_with_clip", lambda: image_checkpoint(
            self.checkpoints, name="ivmixed_tiny_image_clip.safetensors", text_encoder=self.video.text_encoder))

    @property
    def video(self) -> VideoCheckpoint:
        return self._get("video", lambda: video_checkpoint(self.checkpoints))

    @property
    def motion(self) -> MotionModule:
        return self._get("motion", lambda: motion_module(self.animatediff_models))

    def built(self):
        return dict(self._built)

    def release(self) -> None:
        self._built.clear()
        gc.collect()
