"""IV-mixed sampling: an image diffusion model lifts the frames of a video diffusion model, training-free.

Everything loads on first use, so ``import ivmixed`` is instant and the command line answers ``--help`` or a bad
flag without importing torch or diffusers. The libraries' own notes and loading bars stay quiet unless
``TRANSFORMERS_VERBOSITY``/``DIFFUSERS_VERBOSITY`` say otherwise or :func:`ivmixed.runtime.set_verbose` is called.
"""

import os
from importlib import import_module

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

__version__ = "0.2.0"

_LAZY = {
    "IVMixedAnimateDiffPipeline": ".pipelines",
    "IVMixedAnimateDiffSDXLPipeline": ".pipelines",
    "IVMixedModelScopePipeline": ".pipelines",
    "IVMixedPipelineOutput": ".pipelines",
    "IVMixedTextToVideoPipeline": ".pipelines",
    "IVMixedVideoCrafterPipeline": ".pipelines",
    "VideoCrafterUNet3DConditionModel": ".models",
    "IVMixedSettings": ".sampler",
    "count_network_calls": ".sampler",
    "ddim_move": ".sampler",
    "sample_iv_mixed": ".sampler",
    "combine_guidance": ".guidance",
    "guidance_schedule": ".guidance",
    "RunConfig": ".config",
    "build_config": ".config",
    "Runner": ".runner",
    "tiny_pipeline": ".testing",
    "run_sweep": ".sweep",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
