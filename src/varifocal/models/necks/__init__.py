"""Necks: FPN producing P3-P7 (spec §1.2)."""

from .fpn import FPN

__all__ = ["FPN"]
