"""Label assignment (spec §3.2, zoo_spec §1.10, FCOS §3.3, FoveaBox §5.3)."""

from .assign_result import AssignResult
from .atss import ATSSAssigner
from .fcos_assigner import FCOSAssigner, FCOSAssignResult
from .fovea_assigner import FoveaAssigner, FoveaAssignResult
from .max_iou import MaxIoUAssigner

__all__ = [
    "AssignResult",
    "ATSSAssigner",
    "FCOSAssigner",
    "FCOSAssignResult",
    "FoveaAssigner",
    "FoveaAssignResult",
    "MaxIoUAssigner",
]
