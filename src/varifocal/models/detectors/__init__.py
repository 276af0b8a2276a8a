"""Detectors: the generic single-stage detector and one builder file per family."""

from .single_stage import DenseHead, Detector, SingleStageDetector

__all__ = ["DenseHead", "Detector", "SingleStageDetector"]
