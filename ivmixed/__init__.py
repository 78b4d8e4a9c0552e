"""IV-mixed sampling: an image diffusion model lifts the frames of a video diffusion model, training-free.

The pipelines and models load on first use, so the command-line tools start fast and ``--help`` or a bad
flag answers without importing diffusers.
"""

from importlib import import_module

from .guidance import combine_guidance, guidance_schedule
from .sampler import IVMixedSettings, count_network_calls, ddim_move, sample_iv_mixed

__version__ = "0.2.0"

_LAZY = {
    "PIPELINES": ".pipelines",
    "IVMixedAnimateDiffPipeline": ".pipelines",
    "IVMixedModelScopePipeline": ".pipelines",
    "IVMixedPipelineOutput": ".pipelines",
    "IVMixedTextToVideoPipeline": ".pipelines",
    "IVMixedVideoCrafterPipeline": ".pipelines",
    "VideoCrafterUNet3DConditionModel": ".models",
    "run_sweep": ".sweep",
}

__all__ = [
    *_LAZY,
    "IVMixedSettings",
    "combine_guidance",
    "count_network_calls",
    "ddim_move",
    "guidance_schedule",
    "sample_iv_mixed",
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
