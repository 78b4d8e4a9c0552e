"""Speed and memory knobs of a loaded pipeline, in one place for the CLI and the benchmark harness.

Every knob is opt-in and leaves the sampled numbers equal to the default path within floating-point
tolerance; the returned record goes into a run's JSON so a timing is never separated from its settings.
"""

from __future__ import annotations

import functools
import logging
from typing import Dict, List

import torch

from .config import COMPILE_MODES, OFFLOAD_MODES

logger = logging.getLogger(__name__)

# The UNets the sampler calls on every step (the ones worth compiling and measuring).
UNET_NAMES = ("unet", "image_unet")
# Everything called on every step: the UNets and, where one is loaded, the ControlNet that feeds them.
STEP_MODULES = UNET_NAMES + ("controlnet",)


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


# -- offload ----------------------------------------------------------------------------------------------------
# Instance attributes ``enable_offload`` sets on a pipeline for offload="model" (the class keeps its own values,
# which offload="model-swap" uses); any other mode removes them again.
_RESIDENT_OVERRIDES = ("model_cpu_offload_seq", "_exclude_from_cpu_offload", "enable_model_cpu_offload")


def _without_resident_overrides(pipe) -> None:
    for name in _RESIDENT_OVERRIDES:
        pipe.__dict__.pop(name, None)


def _hooks_still_placed(pipe) -> bool:
    """Whether the offload hooks of ``pipe`` are the ones its last placement made, on the modules it has now: one
    hook per module that is not excluded from offload, each still attached."""
    hooks = getattr(pipe, "_all_hooks", None) or []
    offloaded = [module for name, module in _modules(pipe).items() if name not in pipe._exclude_from_cpu_offload]
    if not hooks or len(hooks) != len(offloaded):
        return False
    hooked = {id(hook.model): hook for hook in hooks}
    return all(id(module) in hooked and getattr(module, "_hf_hook", None) is hooked[id(module)].hook
               for module in offloaded)


def _offload_keeping_unets(pipe, gpu_id=None, device=None) -> None:
    """``pipe.enable_model_cpu_offload`` under offload="model", where the UNets stay on the device.

    diffusers calls it again at the end of every pipeline call (``maybe_free_model_hooks``) to put the hooked
    modules back on the CPU. Its own method would first move the whole pipeline to the CPU, so the UNets would
    leave the GPU and come back at every call; while the hooks are still in place this offloads the hooked modules
    (text encoders, VAE) and leaves the UNets where they are. Anything else (another device, a module swapped
    since) runs diffusers' full placement, which moves each UNet once more."""
    offload_device = getattr(pipe, "_offload_device", None)
    same_device = gpu_id is None and (device is None or torch.device(device) == offload_device)
    if offload_device is not None and same_device and _hooks_still_placed(pipe):
        for hook in pipe._all_hooks:
            hook.offload()
        for name in STEP_MODULES:
            module = getattr(pipe, name, None)
            if isinstance(module, torch.nn.Module):
                module.to(offload_device)  # a no-op while it stays there
        return
    type(pipe).enable_model_cpu_offload(pipe, gpu_id=gpu_id, device=device)


def enable_offload(pipe, mode: str, device) -> List[str]:
    """Place ``pipe``'s modules on ``device`` for offload ``mode``; returns the names of those placed there once,
    for the whole run (the others wait on the CPU until called).

    - ``"none"``: ``pipe.to(device)``, every module resident.
    - ``"model"``: the UNets and a loaded ControlNet (``STEP_MODULES``, called at every step) are moved to
      ``device`` once and stay there,
      across pipeline calls too; the modules used once per call (text encoders, image encoder, VAE) get diffusers'
      model offload hooks: each moves to the device when called and back when the next one in the pipeline's
      ``model_cpu_offload_seq`` runs, or at the end of the call. Done with diffusers' own machinery: the UNets are
      left out of this pipeline's chain and put in its ``_exclude_from_cpu_offload``.
    - ``"model-swap"``: diffusers' ``enable_model_cpu_offload`` over the whole chain, UNets included: least memory
      of the model modes, but IV-mixed alternates the two UNets, so one of them crosses to the GPU at every switch.
    - ``"sequential"``: diffusers' ``enable_sequential_cpu_offload`` (submodule by submodule).
    """
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
    device = torch.device(device)
    _without_resident_overrides(pipe)
    if mode == "none":
        pipe.to(device)
        return sorted(_modules(pipe))
    if mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        return []
    if mode == "model-swap":
        pipe.enable_model_cpu_offload(device=device)
        return []
    chain = type(pipe).model_cpu_offload_seq
    if chain is not None:
        pipe.model_cpu_offload_seq = "->".join(name for name in chain.split("->") if name not in STEP_MODULES)
    resident = [name for name in STEP_MODULES if name in _modules(pipe)]
    excluded = list(type(pipe)._exclude_from_cpu_offload)
    pipe._exclude_from_cpu_offload = excluded + [name for name in resident if name not in excluded]
    type(pipe).enable_model_cpu_offload(pipe, device=device)
    pipe.enable_model_cpu_offload = functools.partial(_offload_keeping_unets, pipe)
    return sorted(resident)


def apply_performance_options(
    pipe,
    *,
    device,
    offload: str = "none",
    compile: bool = False,
    compile_mode: str = "default",
    channels_last: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
) -> Dict:
    """Place ``pipe`` on ``device`` and apply the speed/memory options; returns a record of what was applied.

    This replaces ``pipe.to(device)`` (see :func:`enable_offload`): with ``offload="model"`` the UNets stay on the
    GPU and the text encoders and VAE move there only while used; ``"model-swap"`` offloads the UNets too (each
    crosses to the GPU when called); ``"sequential"`` moves submodule by submodule (least memory, slowest). Offload
    needs an accelerator; ``record["resident"]`` names the modules placed on the device for the whole run.
    ``compile`` wraps both UNets (and a loaded ControlNet) in ``torch.compile`` with ``compile_mode`` (``reduce-overhead``: CUDA graphs); ``channels_last`` converts their 2D convolutions;
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
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    if compile and offload == "sequential":
        raise ValueError("compile cannot be combined with offload='sequential' (its per-submodule weight hooks "
                         "break the compiled graphs); use offload='model' or 'none'")
    unets = {name: module for name, module in _modules(pipe).items() if name in STEP_MODULES}
    record: Dict = {"device": str(device), "offload": offload, "compile": compile,
                    "compile_mode": compile_mode if compile else None, "channels_last": channels_last,
                    "vae_slicing": vae_slicing, "vae_tiling": vae_tiling}

    record["resident"] = enable_offload(pipe, offload, device)
    if channels_last:
        record["channels_last_convs"] = {name: _channels_last(module) for name, module in unets.items()}
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    record["attention_processors"] = attention_processors(pipe)
    if compile:
        for name, module in unets.items():
            setattr(pipe, name, torch.compile(module, mode=compile_mode))
        logger.info("compiled %s with torch.compile; the first call of each shape compiles (slow)", ", ".join(unets))
    record["compiled"] = sorted(unets) if compile else []
    return record
