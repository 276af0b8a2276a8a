"""Label assignment (spec §3.2)."""

from .atss import AssignResult, ATSSAssigner

__all__ = ["AssignResult", "ATSSAssigner"]
