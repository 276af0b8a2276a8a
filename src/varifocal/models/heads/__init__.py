"""Dense detection heads."""

from .vfnet_head import VFNetHead, grid_points

__all__ = ["VFNetHead", "grid_points"]
