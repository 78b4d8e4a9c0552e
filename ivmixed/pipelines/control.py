"""ControlNet residuals for every guided UNet call of a run, the video UNet's and the image UNet's alike.

diffusers' ``AnimateDiffControlNetPipeline`` runs the ControlNet on the video UNet's input laid out per frame,
``(b f) c h w`` in each ``[uncond; cond]`` half, with one control image per frame; the image UNet's input is that
same layout, so one ControlNet (the same module, no second copy) serves both: each call gets the residuals of its
own latents, timestep and embeddings, scaled by ``controlnet_conditioning_scale`` times the step's keep (1 inside
``control_guidance_start/end``, the fraction of steps, else 0).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from diffusers.video_processor import VideoProcessor


def as_list(value, count: int, name: str) -> List[float]:
    """One value per ControlNet: a list of ``count``, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} values for {count} ControlNets; give one, or one per ControlNet")
        return [float(v) for v in value]
    return [float(value)] * count


class ControlConditioning:
    """The control images of one call and the residuals they give. ``frames``: one list of PIL frames (or one
    list per video) per ControlNet, ``steps`` the main steps that run (what the guidance fractions count)."""

    def __init__(self, controlnet, frames: Sequence, *, num_frames: int, batch_size: int, height: int, width: int,
                 vae_scale_factor: int, device, steps: int, scale=1.0, start=0.0, end=1.0,
                 counts: Optional[Dict[str, int]] = None):
        self.controlnet = controlnet
        self.multi = isinstance(controlnet, MultiControlNetModel)
        count = len(controlnet.nets) if self.multi else 1
        if len(frames) != count:
            raise ValueError(f"{count} ControlNet(s) and {len(frames)} control video(s): give one per ControlNet")
        if any(net.config.global_pool_conditions for net in (controlnet.nets if self.multi else [controlnet])):
            raise ValueError("a ControlNet with global_pool_conditions (guess mode only, e.g. shuffle) is not supported")
        self.scales = as_list(scale, count, "controlnet_conditioning_scale")
        starts, ends = as_list(start, count, "control_guidance_start"), as_list(end, count, "control_guidance_end")
        for s, e in zip(starts, ends):
            if not 0.0 <= s < e <= 1.0:
                raise ValueError(f"control_guidance_start {s:g} and end {e:g} must satisfy 0 <= start < end <= 1")
        # diffusers' rule: step i keeps a ControlNet unless i / N < start or (i + 1) / N > end
        self.keep = [[1.0 - float(i / steps < s or (i + 1) / steps > e) for s, e in zip(starts, ends)]
                     for i in range(steps)]
        processor = VideoProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True, do_normalize=False)
        self.images = [self._rows(processor, video, num_frames, batch_size, height, width, device) for video in frames]
        self.count = count
        self.counts = counts
        self._conditions: Dict[tuple, List[torch.Tensor]] = {}  # control rows per (rows of a call, halves)
        if counts is not None:
            counts.update(controlnet_video=0, controlnet_image=0)
        self.step = 0

    def _rows(self, processor, video, num_frames, batch_size, height, width, device) -> torch.Tensor:
        """A control video as ``(b f) 3 h w`` rows in [0, 1]: one per frame of each video of the call."""
        rows = processor.preprocess_video(video, height=height, width=width).to(dtype=torch.float32)
        rows = rows.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (videos * frames, 3, h, w)
        if rows.shape[0] < num_frames:
            raise ValueError(f"a control video has {rows.shape[0]} frames and the call makes {num_frames}")
        if rows.shape[0] == num_frames and batch_size > 1:  # one control video for every video of the call
            rows = rows.repeat(batch_size, 1, 1, 1)
        # contiguous, as diffusers' copy is: a channels-last view takes other convolution kernels (~1e-7 apart)
        return rows.contiguous().to(device=device, dtype=self.controlnet.dtype)

    def _condition(self, part: slice, halves: int) -> List[torch.Tensor]:
        """The control rows of a call covering ``part`` of each half, for every ControlNet: made once per layout,
        not at every guided call (a call's layout repeats at every step)."""
        key = (part.start, part.stop, halves)
        if key not in self._conditions:
            self._conditions[key] = [torch.cat([image[part]] * halves) for image in self.images]
        return self._conditions[key]

    def step_started(self, i: int) -> None:
        self.step = i

    def residuals(self, model: str) -> Callable:
        """``(model_input, t, embeds, part) -> UNet keywords`` for ``model``'s calls ("video" or "image"), counting
        each ControlNet evaluation in ``counts["controlnet_<model>"]``: one per guided call and ControlNet, however
        many chunks of frames the call is split into (``image_batch_size``). ``model_input`` is the UNet's input,
        ``[uncond; cond]`` halves of video latents ``(b, c, f, h, w)`` or of per-frame rows; ``part`` the rows of
        each half (of the call's frames) it covers."""
        key = f"controlnet_{model}"

        def call(model_input: torch.Tensor, t, embeds: torch.Tensor, part: slice, halves: int):
            rows = model_input
            if rows.dim() == 5:  # video latents: frames to rows, (b f) as the per-frame view lays them out
                rows = rows.transpose(1, 2).reshape(-1, *rows.shape[1:2], *rows.shape[3:])
            images = self._condition(part, halves)
            keep = self.keep[self.step]
            scales = [c * k for c, k in zip(self.scales, keep)]
            down, mid = self.controlnet(
                rows, t, encoder_hidden_states=embeds,
                controlnet_cond=images if self.multi else images[0],
                conditioning_scale=scales if self.multi else scales[0], guess_mode=False, return_dict=False,
            )
            if self.counts is not None and part.start in (None, 0):  # a guided call split in chunks counts once
                self.counts[key] += self.count
            return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

        return call


def controlnet_of(nets: Union[torch.nn.Module, Sequence[torch.nn.Module]]):
    """One ControlNet as it is, several as diffusers' ``MultiControlNetModel``."""
    if isinstance(nets, (list, tuple)):
        return nets[0] if len(nets) == 1 else MultiControlNetModel(list(nets))
    return nets
