"""Dense detection heads, one file per family."""

from .atss_head import ATSSHead, ATSSOutputs
from .fcos_head import FCOSHead, FCOSOutputs
from .fovea_head import FoveaHead, FoveaOutputs
from .retina_head import RetinaHead, RetinaOutputs
from .vfnet_head import VFNetHead, VFNetOutputs

__all__ = [
    "ATSSHead",
    "ATSSOutputs",
    "FCOSHead",
    "FCOSOutputs",
    "FoveaHead",
    "FoveaOutputs",
    "RetinaHead",
    "RetinaOutputs",
    "VFNetHead",
    "VFNetOutputs",
]
