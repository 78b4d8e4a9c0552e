"""The VideoCrafter2 UNet: diffusers' ``UNet3DConditionModel`` plus a frame-rate condition.

VideoCrafter2 (LVDM) conditions its 3D UNet on the clip's frame rate: a sinusoidal projection of ``fps``
goes through a two-layer MLP and is summed into the timestep embedding. Everything else maps onto
diffusers' ModelScope-style 3D UNet, which is what the diffusers-format conversion
``adamdad/videocrafterv2_diffusers`` relies on.

Parameter names and config. The checkpoint's ``config.json`` (seen on the Hub page of
``adamdad/videocrafterv2_diffusers``) has ``"_class_name": "UNet3DVideoCrafterConditionModel"``,
``"fps_cond": true``, ``"sample_size": null``, block_out_channels ``[320, 640, 1280, 1280]``,
``attention_head_dim`` 64 and ``cross_attention_dim`` 1024, and otherwise only ``UNet3DConditionModel``'s keys.
Two independent projects that load that checkpoint, the IV-mixed reference code
(``xie-lab-ml/IV-mixed-Sampler``, ``vico/video_crafter_diffusers/unet_3d_videocrafter.py``) and Video-Infinity,
build the extra modules the same way: ``fps_proj = Timesteps(block_out_channels[0], True, 0)`` (no weights) and
``fps_embedding = TimestepEmbedding(block_out_channels[0], 4 * block_out_channels[0])``, i.e. the extra weights
``fps_embedding.linear_1.{weight,bias}`` ([1280, 320], [1280]) and ``fps_embedding.linear_2.{weight,bias}``
([1280, 1280], [1280]); every other name is ``UNet3DConditionModel``'s. Built from that config, the model's
fp32 weights come to 5.65 GB, the size the Hub lists for the checkpoint's safetensors file (5.64 GB without the
fps MLP). The weights themselves were not available offline, so a load of the real file is still to be run.
The fps embedding is added to the time embedding of each video before it is repeated per frame.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from diffusers import UNet3DConditionModel

# A saved pipeline names this module as its UNet's library; diffusers finds a component's loading base class
# (ModelMixin) by name in that module, so it must be importable from here for the pipeline to load again.
from diffusers import ModelMixin  # noqa: F401
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps


class VideoCrafterUNet3DConditionModel(UNet3DConditionModel):
    """``UNet3DConditionModel`` with VideoCrafter2's fps condition (``fps_proj``, ``fps_embedding``).

    ``from_pretrained`` loads ``adamdad/videocrafterv2_diffusers`` as is; weights may sit at the folder's
    root (as on the Hub) or under ``unet/``.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: Optional[int] = None,
        in_channels: int = 4,
        out_channels: int = 4,
        down_block_types: Tuple[str, ...] = (
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "CrossAttnDownBlock3D",
            "DownBlock3D",
        ),
        up_block_types: Tuple[str, ...] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: Optional[int] = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1024,
        attention_head_dim: Union[int, Tuple[int]] = 64,
        num_attention_heads: Optional[Union[int, Tuple[int]]] = None,
        time_cond_proj_dim: Optional[int] = None,
        fps_cond: bool = True,
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            time_cond_proj_dim=time_cond_proj_dim,
        )
        if fps_cond:
            if time_cond_proj_dim is not None:
                raise ValueError("fps_cond takes the time embedding's condition input, so time_cond_proj_dim must be None")
            self.time_embedding.__class__ = _TimeEmbeddingPlusCondition
            self.fps_proj = Timesteps(block_out_channels[0], True, 0)
            self.fps_embedding = TimestepEmbedding(block_out_channels[0], block_out_channels[0] * 4, act_fn=act_fn)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader, falling back to the ``unet/`` subfolder when the root holds no model."""
        if kwargs.get("subfolder"):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except EnvironmentError as root_error:
            try:
                return super().from_pretrained(pretrained_model_name_or_path, subfolder="unet", **kwargs)
            except EnvironmentError:
                raise root_error from None

    def fps_embed(self, fps: Union[int, float, torch.Tensor], batch_size: int, device) -> torch.Tensor:
        """The ``(batch_size, time_embed_dim)`` embedding of the frame rate (one value, or one per video). A pipeline
        passes a tensor made once per call: a Python number becomes a new device tensor here at every call."""
        fps = torch.as_tensor(fps, device=device)
        if fps.ndim == 0:
            fps = fps[None]
        emb = self.fps_proj(fps.expand(batch_size)).to(dtype=self.dtype)
        return self.fps_embedding(emb)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        fps: Union[int, float, torch.Tensor, None] = None,
        **kwargs,
    ):
        """``UNet3DConditionModel.forward`` with ``fps`` (frames per second) summed into the time embedding.

        ``fps`` is required when the model has the fps condition and ignored otherwise; the other keywords
        are ``UNet3DConditionModel.forward``'s.
        """
        if not self.config.fps_cond:
            return super().forward(sample, timestep, encoder_hidden_states, **kwargs)
        if fps is None:
            raise ValueError("this VideoCrafter UNet is conditioned on the frame rate: pass `fps` (e.g. fps=24)")
        if kwargs.get("timestep_cond") is not None:
            raise ValueError("the VideoCrafter UNet carries its fps embedding in `timestep_cond`; do not pass one")
        # The parent computes the per-video time embedding with `time_embedding(t_emb, timestep_cond)` and only then
        # repeats it per frame; `_TimeEmbeddingPlusCondition` adds the condition to its output, which is
        # VideoCrafter2's `emb + fps_emb`. No hooks: the forward stays one graph for torch.compile.
        kwargs["timestep_cond"] = self.fps_embed(fps, sample.shape[0], sample.device)
        return super().forward(sample, timestep, encoder_hidden_states, **kwargs)


class _TimeEmbeddingPlusCondition(TimestepEmbedding):
    """diffusers' ``TimestepEmbedding`` with the condition summed into its output instead of projected into its
    input; same parameters and names, so checkpoints load unchanged."""

    def forward(self, sample: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = super().forward(sample)
        return out if condition is None else out + condition
