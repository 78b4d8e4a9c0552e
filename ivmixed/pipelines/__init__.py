"""One thin diffusers pipeline per video model, all driven by :func:`ivmixed.sampler.sample_iv_mixed`."""

from .animatediff import IVMixedAnimateDiffPipeline
from .common import IVMixedPipelineOutput

__all__ = ["IVMixedAnimateDiffPipeline", "IVMixedPipelineOutput"]
