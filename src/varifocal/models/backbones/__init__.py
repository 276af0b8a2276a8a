"""Backbones: ResNet/ResNeXt (+DCNv2) and EfficientNet-Lite (spec §1.1, §6.3)."""

from .efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite0,
    efficientnet_lite2,
    load_efficientnet_lite_weights,
)
from .resnet import (
    ResNet,
    load_torchvision_weights,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext101_32x4d,
    resnext101_64x4d,
)

__all__ = [
    "EfficientNetLite",
    "ResNet",
    "efficientnet_lite0",
    "efficientnet_lite2",
    "load_efficientnet_lite_weights",
    "load_torchvision_weights",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext101_32x4d",
    "resnext101_64x4d",
]
