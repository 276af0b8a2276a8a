"""Dense detection heads, one file per family (RepPoints also keeps its point-set geometry and target
records in ``reppoints_points`` / ``reppoints_targets``)."""

from .atss_head import ATSSHead, ATSSOutputs
from .fcos_head import FCOSHead, FCOSOutputs
from .fovea_head import FoveaHead, FoveaOutputs
from .reppoints_head import RepPointsHead, RepPointsOutputs
from .retina_head import RetinaHead, RetinaOutputs
from .vfnet_head import VFNetHead, VFNetOutputs

__all__ = [
    "ATSSHead",
    "ATSSOutputs",
    "FCOSHead",
    "FCOSOutputs",
    "FoveaHead",
    "FoveaOutputs",
    "RepPointsHead",
    "RepPointsOutputs",
    "RetinaHead",
    "RetinaOutputs",
    "VFNetHead",
    "VFNetOutputs",
]
