"""One thin diffusers pipeline per video model, all driven by :func:`ivmixed.sampler.sample_iv_mixed`."""

from .animatediff import IVMixedAnimateDiffPipeline
from .common import IVMixedPipelineOutput, NonFiniteLatentsError
from .modelscope import IVMixedModelScopePipeline
from .text_to_video import IVMixedTextToVideoPipeline
from .videocrafter import IVMixedVideoCrafterPipeline

# The pipelines by the names the CLI and the configs use.
PIPELINES = {
    "Animatediff": IVMixedAnimateDiffPipeline,
    "ModelScope": IVMixedModelScopePipeline,
    "VideoCrafter": IVMixedVideoCrafterPipeline,
}

__all__ = [
    "PIPELINES",
    "IVMixedAnimateDiffPipeline",
    "IVMixedModelScopePipeline",
    "IVMixedPipelineOutput",
    "IVMixedTextToVideoPipeline",
    "IVMixedVideoCrafterPipeline",
    "NonFiniteLatentsError",
]
