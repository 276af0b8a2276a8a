"""Label assignment (spec §3.2, zoo_spec §1.10, §1.12, FCOS §3.3, FoveaBox §5.3)."""

from .assign_result import AssignResult
from .atss import ATSSAssigner
from .fcos_assigner import FCOSAssigner, FCOSAssignResult
from .fovea_assigner import FoveaAssigner, FoveaAssignResult
from .max_iou import MaxIoUAssigner
from .point_assigner import PointAssigner, PointAssignResult

__all__ = [
    "AssignResult",
    "ATSSAssigner",
    "FCOSAssigner",
    "FCOSAssignResult",
    "FoveaAssigner",
    "FoveaAssignResult",
    "MaxIoUAssigner",
    "PointAssigner",
    "PointAssignResult",
]
