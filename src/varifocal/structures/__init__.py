"""Box structures and geometry (spec §3, §4.3, §5)."""

from .boxes import bbox2distance, bbox_overlaps, centerness_target, distance2bbox, xywh_to_xyxy, xyxy_to_xywh

__all__ = ["bbox_overlaps", "distance2bbox", "bbox2distance", "centerness_target", "xyxy_to_xywh", "xywh_to_xyxy"]
