"""IV-mixed sampling: an image diffusion model lifts the frames of a video diffusion model, training-free."""

from .guidance import combine_guidance, guidance_schedule
from .pipelines import IVMixedAnimateDiffPipeline, IVMixedPipelineOutput
from .sampler import IVMixedSettings, count_network_calls, ddim_move, sample_iv_mixed

__version__ = "0.1.0"

__all__ = [
    "IVMixedAnimateDiffPipeline",
    "IVMixedPipelineOutput",
    "IVMixedSettings",
    "combine_guidance",
    "count_network_calls",
    "ddim_move",
    "guidance_schedule",
    "sample_iv_mixed",
]
