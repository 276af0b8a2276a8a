"""Detectors (one file per family) and their builder functions."""

from .vfnet import VFNet

__all__ = ["VFNet"]
