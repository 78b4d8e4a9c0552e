"""ComfyUI-IVMixed: IV-mixed sampling nodes for ComfyUI (with AnimateDiff-Evolved).

The nodes live in the installed ``ivmixed`` package (``pip install`` it into ComfyUI's Python); this folder only
registers them.
"""

from ivmixed.comfyui.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
