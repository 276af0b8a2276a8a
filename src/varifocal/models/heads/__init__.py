"""Dense detection heads, one file per family."""

from .vfnet_head import VFNetHead, VFNetOutputs

__all__ = ["VFNetHead", "VFNetOutputs"]
