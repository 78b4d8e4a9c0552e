"""IV-mixed sampling: an image diffusion model lifts the frames of a video diffusion model, training-free."""

from .guidance import combine_guidance, guidance_schedule
from .models import VideoCrafterUNet3DConditionModel
from .pipelines import (
    PIPELINES,
    IVMixedAnimateDiffPipeline,
    IVMixedModelScopePipeline,
    IVMixedPipelineOutput,
    IVMixedTextToVideoPipeline,
    IVMixedVideoCrafterPipeline,
)
from .sampler import IVMixedSettings, count_network_calls, ddim_move, sample_iv_mixed

__version__ = "0.1.0"

__all__ = [
    "PIPELINES",
    "IVMixedAnimateDiffPipeline",
    "IVMixedModelScopePipeline",
    "IVMixedPipelineOutput",
    "IVMixedTextToVideoPipeline",
    "IVMixedVideoCrafterPipeline",
    "IVMixedSettings",
    "combine_guidance",
    "count_network_calls",
    "ddim_move",
    "guidance_schedule",
    "sample_iv_mixed",
    "VideoCrafterUNet3DConditionModel",
]
