"""Losses (spec §4, zoo_spec §1.14): Varifocal, sigmoid focal, GIoU, IoU, L1/SmoothL1 and
cross-entropy (sigmoid and softmax)."""

from .cross_entropy_loss import CrossEntropyLoss
from .focal_loss import FocalLoss
from .giou_loss import GIoULoss
from .iou_loss import IoULoss
from .l1_loss import L1Loss, SmoothL1Loss
from .varifocal_loss import VarifocalLoss, varifocal_loss

__all__ = [
    "VarifocalLoss",
    "varifocal_loss",
    "FocalLoss",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "SmoothL1Loss",
    "CrossEntropyLoss",
]
