"""Datasets (COCO JSON, PASCAL VOC XML), transforms, batch sampling and collation (spec §6.1)."""

from .base import DetectionDataset, ImageRecord, sample_seed
from .coco import CocoDetection, read_coco_json, validate_coco_dict
from .errors import DataError
from .images import load_image
from .sampler import AspectRatioGroupedBatchSampler, collate
from .transforms import Compose, RandomHorizontalFlip, Resize, build_test_transforms, build_train_transforms
from .voc import VOC_CLASSES, VOCDetection

__all__ = [
    "DataError",
    "ImageRecord",
    "DetectionDataset",
    "CocoDetection",
    "VOCDetection",
    "VOC_CLASSES",
    "load_image",
    "read_coco_json",
    "validate_coco_dict",
    "sample_seed",
    "Compose",
    "Resize",
    "RandomHorizontalFlip",
    "build_train_transforms",
    "build_test_transforms",
    "AspectRatioGroupedBatchSampler",
    "collate",
]
