"""The model zoo: names → builder functions, like ``torchvision.models.get_model``."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .detectors import vfnet as _vfnet

__all__ = ["build_model", "list_models"]

#: Every public builder, by name. Plain references, so "go to definition" finds the class.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vfnet_r18_fpn": _vfnet.vfnet_r18_fpn,
    "vfnet_r34_fpn": _vfnet.vfnet_r34_fpn,
    "vfnet_r50_fpn": _vfnet.vfnet_r50_fpn,
    "vfnet_r50_fpn_dcn": _vfnet.vfnet_r50_fpn_dcn,
    "vfnet_r101_fpn": _vfnet.vfnet_r101_fpn,
    "vfnet_r101_fpn_dcn": _vfnet.vfnet_r101_fpn_dcn,
    "vfnet_x101_32x4d_fpn": _vfnet.vfnet_x101_32x4d_fpn,
    "vfnet_x101_32x4d_fpn_dcn": _vfnet.vfnet_x101_32x4d_fpn_dcn,
    "vfnet_x101_64x4d_fpn": _vfnet.vfnet_x101_64x4d_fpn,
    "vfnet_x101_64x4d_fpn_dcn": _vfnet.vfnet_x101_64x4d_fpn_dcn,
    "vfnet_lite0_fpn": _vfnet.vfnet_lite0_fpn,
}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_BUILDERS)


def build_model(name: str, *, num_classes: int = 80, **kwargs: Any) -> nn.Module:
    """Build a detector by name, e.g. ``build_model('vfnet_r50_fpn', num_classes=80)``.

    Args:
        name: one of :func:`list_models`.
        num_classes: foreground classes.
        **kwargs: forwarded to the builder (``pretrained_backbone``, ``scale``, head options).

    Raises:
        ValueError: for an unknown name (the message suggests the closest names).
    """
    if name not in _BUILDERS:
        import difflib

        close = difflib.get_close_matches(name, _BUILDERS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _BUILDERS[name](num_classes=num_classes, **kwargs)
