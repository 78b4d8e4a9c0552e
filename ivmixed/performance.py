"""Speed and memory knobs of a loaded pipeline, in one place for the CLI and the benchmark harness.

Every knob is opt-in and leaves the sampled numbers equal to the default path within floating-point
tolerance; the returned record goes into a run's JSON so a timing is never separated from its settings.
"""

from __future__ import annotations

import logging
from typing import Dict, List

import torch

from .config import OFFLOAD_MODES

logger = logging.getLogger(__name__)

# The networks the sampler calls on every step (the ones worth compiling and measuring).
UNET_NAMES = ("unet", "image_unet")


def _modules(pipe) -> Dict[str, torch.nn.Module]:
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def attention_processors(pipe) -> Dict[str, List[str]]:
    """The attention implementation of every model in ``pipe``, so a run records whether PyTorch's fused
    scaled-dot-product attention is in use: the distinct processor classes of each diffusers model (the motion
    modules live inside ``unet``; ``AttnProcessor2_0`` is SDPA), and the ``attn_implementation`` of each
    transformers text encoder (``sdpa``)."""
    found = {}
    for name, module in _modules(pipe).items():
        module = getattr(module, "_orig_mod", module)  # a torch.compile wrapper
        processors = getattr(module, "attn_processors", None)
        if processors:
            found[name] = sorted({type(p).__name__ for p in processors.values()})
        elif getattr(getattr(module, "config", None), "_attn_implementation", None):
            found[name] = [module.config._attn_implementation]
    return found


def _channels_last(module: torch.nn.Module) -> int:
    """Put every 2D convolution of ``module`` in channels-last layout; 3D convolutions (ModelScope's temporal
    layers) have no channels-last layout for 5-D weights and stay as they are. Returns the count converted."""
    count = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            sub.to(memory_format=torch.channels_last)
            count += 1
    return count


def apply_performance_options(
    pipe,
    *,
    device,
    offload: str = "none",
    compile: bool = False,
    channels_last: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
) -> Dict:
    """Place ``pipe`` on ``device`` and apply the speed/memory options; returns a record of what was applied.

    This replaces ``pipe.to(device)``: with ``offload="model"`` (diffusers' ``enable_model_cpu_offload``: whole
    components move to the GPU when called) or ``"sequential"`` (``enable_sequential_cpu_offload``: submodule by
    submodule, least memory, slowest) the weights stay on the CPU until used, which needs an accelerator.
    ``compile`` wraps both UNets in ``torch.compile``; ``channels_last`` converts their 2D convolutions;
    ``vae_slicing`` decodes one frame at a time, ``vae_tiling`` decodes large frames in overlapping tiles.
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    device = torch.device(device)
    if offload != "none" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise ValueError(
            f"offload={offload!r} moves weights between the CPU and a CUDA GPU, but the device is {device} "
            f"(CUDA available: {torch.cuda.is_available()}); use offload='none' on a CPU-only machine"
        )
    if compile and offload == "sequential":
        raise ValueError("compile cannot be combined with offload='sequential' (its per-submodule weight hooks "
                         "break the compiled graphs); use offload='model' or 'none'")
    unets = {name: module for name, module in _modules(pipe).items() if name in UNET_NAMES}
    record: Dict = {"device": str(device), "offload": offload, "compile": compile, "channels_last": channels_last,
                    "vae_slicing": vae_slicing, "vae_tiling": vae_tiling}

    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if channels_last:
        record["channels_last_convs"] = {name: _channels_last(module) for name, module in unets.items()}
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    record["attention_processors"] = attention_processors(pipe)
    if compile:
        for name, module in unets.items():
            setattr(pipe, name, torch.compile(module))
        logger.info("compiled %s with torch.compile; the first call of each shape compiles (slow)", ", ".join(unets))
    record["compiled"] = sorted(unets) if compile else []
    return record
