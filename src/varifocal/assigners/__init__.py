"""Label assignment (spec §3.2, zoo_spec §1.10)."""

from .assign_result import AssignResult
from .atss import ATSSAssigner
from .max_iou import MaxIoUAssigner

__all__ = ["AssignResult", "ATSSAssigner", "MaxIoUAssigner"]
