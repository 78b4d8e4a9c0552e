"""Long videos and prompt travel for AnimateDiff: per-frame prompt embeddings and the image model's frame cap.

diffusers' AnimateDiff encodes a prompt schedule (``{frame_index: prompt}``) into one embedding per frame,
interpolating between the scheduled frames, and FreeNoise (``pipe.enable_free_noise(...)``) runs the motion
modules over sliding context windows. The video UNet then takes ``[uncond frames; cond frames]`` embeddings,
each half laid out ``(b f)`` with ``b = 1``, which is exactly the per-frame view the image model takes: frame
``i`` of the image model's batch is conditioned on frame ``i``'s own (interpolated) embedding.
"""

from __future__ import annotations

from typing import Optional

import torch

# Without an explicit image_batch_size, image-model calls over more than this many frames are split ...
AUTO_IMAGE_BATCH_ABOVE = 32
# ... into calls of this many frames (each call still carries the unconditional and conditional halves).
AUTO_IMAGE_BATCH_SIZE = 16


def frames_per_image_call(image_batch_size: Optional[int], frames: int) -> Optional[int]:
    """The cap on frames per image-UNet call: ``image_batch_size`` when given; otherwise
    :data:`AUTO_IMAGE_BATCH_SIZE` when a call covers more than :data:`AUTO_IMAGE_BATCH_ABOVE` frames
    (``frames`` counts every video's frames), else ``None`` (all frames in one call)."""
    if image_batch_size is not None:
        return image_batch_size
    return AUTO_IMAGE_BATCH_SIZE if frames > AUTO_IMAGE_BATCH_ABOVE else None


def uses_frame_prompts(pipe, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> bool:
    """Whether a call encodes one prompt embedding per frame the way diffusers' FreeNoise does.

    That is every prompt schedule (a ``dict`` prompt or negative prompt), with or without FreeNoise, and, with
    FreeNoise enabled, a single string prompt (so that such a call equals diffusers' stock one exactly).
    Lists of prompts and precomputed embeddings keep the ordinary encoding (diffusers' FreeNoise refuses them).
    """
    schedule = isinstance(prompt, dict) or isinstance(negative_prompt, dict)
    if schedule and (prompt_embeds is not None or negative_prompt_embeds is not None):
        raise ValueError(
            "a prompt schedule (a dict {frame_index: prompt}) cannot be combined with prompt_embeds or "
            "negative_prompt_embeds; pass the prompts as text"
        )
    if schedule:
        return True
    return (
        getattr(pipe, "free_noise_enabled", False)
        and isinstance(prompt, str)
        and (negative_prompt is None or isinstance(negative_prompt, str))
        and prompt_embeds is None
        and negative_prompt_embeds is None
    )


def check_free_noise_frames(pipe, num_frames: int) -> None:
    """Raise ``ValueError`` when FreeNoise's context window is longer than the video (the motion modules
    would fail deep inside the UNet)."""
    if not getattr(pipe, "free_noise_enabled", False):
        return
    length = pipe._free_noise_context_length
    if isinstance(length, int) and num_frames < length:
        raise ValueError(
            f"FreeNoise context windows of {length} frames need a video of at least {length} frames, got "
            f"num_frames={num_frames}; pass a smaller context_length to enable_free_noise(), or call "
            f"disable_free_noise() for videos that fit the motion adapter"
        )


def encode_frame_prompts(
    pipe,
    prompt,
    negative_prompt,
    num_frames: int,
    device: torch.device,
    with_uncond: bool,
    lora_scale: Optional[float] = None,
    clip_skip: Optional[int] = None,
) -> torch.Tensor:
    """One embedding per frame from a prompt or prompt schedule, by diffusers' FreeNoise prompt encoding.

    Returns ``[uncond frames; cond frames]`` (``2 * num_frames`` rows; ``num_frames`` without ``with_uncond``):
    scheduled frames get their prompt's embedding, frames between two scheduled frames the interpolation of
    the two (the pipeline's FreeNoise ``prompt_interpolation_callback``, linear by default), frames after the
    last scheduled frame its embedding. diffusers requires a schedule to start at frame 0 and end before
    ``num_frames``. Works without FreeNoise too (prompt travel within the motion adapter's window), with
    linear interpolation.
    """
    if num_frames < 2:
        raise ValueError(
            f"per-frame prompts (a prompt schedule, or FreeNoise) need at least 2 frames, got num_frames={num_frames}"
        )
    name = "_free_noise_prompt_interpolation_callback"  # set by enable_free_noise(); lerp when never enabled
    previous = getattr(pipe, name, None)
    if previous is None:
        setattr(pipe, name, pipe._lerp)
    try:
        embeds, _ = pipe._encode_prompt_free_noise(
            prompt=prompt,
            num_frames=num_frames,
            device=device,
            num_videos_per_prompt=1,
            do_classifier_free_guidance=with_uncond,
            negative_prompt=negative_prompt,
            lora_scale=lora_scale,
            clip_skip=clip_skip,
        )
    finally:
        if previous is None:
            delattr(pipe, name)
    return embeds
