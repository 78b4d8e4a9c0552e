"""One thin diffusers pipeline per video model, all driven by :func:`ivmixed.sampler.sample_iv_mixed`.

The pipelines by name, with their defaults, are in :mod:`ivmixed.registry`."""

from .animatediff import IVMixedAnimateDiffPipeline
from .animatediff_sdxl import IVMixedAnimateDiffSDXLPipeline
from .common import IVMixedPipelineOutput, NonFiniteLatentsError
from .modelscope import IVMixedModelScopePipeline
from .text_to_video import IVMixedTextToVideoPipeline
from .videocrafter import IVMixedVideoCrafterPipeline

__all__ = [
    "IVMixedAnimateDiffPipeline",
    "IVMixedAnimateDiffSDXLPipeline",
    "IVMixedModelScopePipeline",
    "IVMixedPipelineOutput",
    "IVMixedTextToVideoPipeline",
    "IVMixedVideoCrafterPipeline",
    "NonFiniteLatentsError",
]
