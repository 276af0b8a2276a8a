"""Losses of VFNet (spec §4): Varifocal, sigmoid focal (ablation) and IoU-weighted GIoU."""

from .focal_loss import FocalLoss
from .giou_loss import GIoULoss
from .varifocal_loss import VarifocalLoss, varifocal_loss

__all__ = ["VarifocalLoss", "varifocal_loss", "FocalLoss", "GIoULoss"]
