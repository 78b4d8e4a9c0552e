"""Model classes diffusers does not ship: the VideoCrafter2 UNet."""

from .videocrafter_unet import VideoCrafterUNet3DConditionModel

__all__ = ["VideoCrafterUNet3DConditionModel"]
