"""Whether a run's sizes can fit its device at all: a lower bound of the memory sampling and decoding hold, against
the device's memory. Checked before any model loads, so an impossible size is one line, not a swap storm. The
functions take a :class:`~ivmixed.config.RunConfig` (which imports this module, so it is not imported here)."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from .errors import SettingError

# The estimate's model widths (see memory_needed): every pipeline's video UNet is 320 channels wide at latent
# resolution, the Stable Diffusion VAE's decoder 128 channels wide at full resolution in its last level.
UNET_CHANNELS, VAE_CHANNELS = 320, 128
GIB = 1 << 30
LARGEST_GPU_BYTES = 256 * GIB  # more than the largest accelerators have (192-256 GB)


def memory_needed(config, bytes_per_value: int, batch: int = 1) -> Dict[str, int]:
    """A lower bound of the memory the sampling and decoding of ``batch`` videos in one pipeline call (see
    ``batch_size``) hold at once on the run's device, in bytes by part, with ``bytes_per_value`` for the network's
    dtype (2 for fp16/bf16, 4 for fp32). Every part but the decoder's chunk is held for each video of the call.

    What it counts, each at its smallest:

    - ``latents``: frames x 4 x height/8 x width/8 values, one copy (the sampler keeps several).
    - ``video UNet activations``: the video UNet takes every frame of every video at once (FreeNoise's context
      windows only window the motion modules; the image model's calls are smaller), and its first level is
      :data:`UNET_CHANNELS` wide at latent resolution; one convolution there holds its input and its output, for
      the unconditional and the conditional half under classifier-free guidance (guidance_scale > 1).
    - ``VAE decoding``: the decoder's last level is :data:`VAE_CHANNELS` wide at full resolution, input and output,
      for every frame decoded at once (the pipeline's ``decode_chunk`` of the call's frames, else all of them; one
      with ``vae_slicing``; none counted with ``vae_tiling``).
    - ``decoded video``: frames x 3 x height x width float32 values.

    The peak is at least the latents plus the largest of the other three (they are not all held at once);
    weights, attention and every other activation are left out, so a size refused by this cannot run, while a
    size that passes may still run out of memory. ``tiny`` runs are held to the full-size figures: a tiny run
    checks what the same sizes would do on the real models.
    """
    frames, h, w = batch * config.num_frames, config.height, config.width  # the frames of every video of the call
    guided = 2 if config.guidance_scale > 1 else 1
    if config.vae_tiling:
        decoded_at_once = 0
    elif config.vae_slicing:
        decoded_at_once = 1
    else:
        chunk = config.spec.decode_chunk
        decoded_at_once = frames if chunk is None else min(frames, chunk)
    return {
        "latents": frames * 4 * (h // 8) * (w // 8) * bytes_per_value,
        "video UNet activations": 2 * guided * frames * UNET_CHANNELS * (h // 8) * (w // 8) * bytes_per_value,
        "VAE decoding": 2 * decoded_at_once * VAE_CHANNELS * h * w * bytes_per_value,
        "decoded video": frames * 3 * h * w * 4,
    }


def gpu_driver_present() -> bool:
    """Whether this machine shows an NVIDIA or AMD GPU driver, so that a run without ``device`` may be on CUDA."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")


def device_memory(device: Optional[str]) -> Optional[Tuple[str, int, bool]]:
    """``(what, bytes, on CUDA)`` of the memory a run on ``device`` computes in: a CUDA GPU's total memory, else
    the machine's physical RAM (the CPU, and Apple's unified memory for mps); ``None`` when unknown.

    torch is imported only for a CUDA device, or without ``device`` (CUDA when available) on a machine with a GPU
    driver; elsewhere a run without ``device`` is on the CPU.
    """
    kind = (device or "").split(":")[0].strip().lower()
    if kind == "cuda" or (not device and gpu_driver_present()):
        import torch

        try:
            if torch.cuda.is_available():
                index = torch.device(device or "cuda").index
                index = torch.cuda.current_device() if index is None else index
                total = torch.cuda.get_device_properties(index).total_memory
                return f"GPU memory of cuda:{index}", int(total), True
        except Exception:  # a bad device string or index: the runtime check says so
            return None
        if kind == "cuda":
            return None
        kind = "cpu"
    if kind in ("", "cpu", "mps"):
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not a POSIX system
            return None
        return "RAM", int(ram), False
    return None


def check_fits_memory(config, batch: int = 1) -> None:
    """Refuse sizes whose :func:`memory_needed` (for ``batch`` videos per call) is more than the device has: they
    cannot run, and without this they would load the models, then swap, hang or be killed."""
    memory = device_memory(config.device)
    if memory is None:
        return
    what, available, on_cuda = memory
    dtype = config.dtype or ("fp16" if on_cuda else "fp32")
    parts = memory_needed(config, 4 if dtype == "fp32" else 2, batch)
    latents = parts.pop("latents")
    largest = max(parts, key=parts.get)
    needed = latents + parts[largest]
    if needed <= available:
        return
    beyond = " and far more than any GPU can sample" if needed > LARGEST_GPU_BYTES else ""
    fix = "lower {num_frames}, {height} or {width}"
    if batch > 1:
        fix = "lower {batch_size} (prompts sampled together), {num_frames}, {height} or {width}"
    without_decoding = latents + max(parts["video UNet activations"], parts["decoded video"])
    if largest == "VAE decoding" and without_decoding <= available:
        fix = "decode in tiles with {vae_tiling}, or " + fix
    videos = f"{batch} videos of " if batch > 1 else ""
    raise SettingError(
        f"{videos}{config.num_frames} frames of {config.height}x{config.width} px need at least "
        f"{needed / GIB:,.1f} GiB at {dtype} ({largest} {parts[largest] / GIB:,.1f} GiB + latents "
        f"{latents / GIB:,.1f} GiB), more than the {available / GIB:,.1f} GiB of {what}{beyond}; {fix}")


__all__ = ["check_fits_memory", "device_memory", "memory_needed"]
