"""Samplers: which assigned priors a loss sees (hard negative mining of SSD / RefineDet)."""

from .hard_negative import hard_negative_mining

__all__ = ["hard_negative_mining"]
