"""The model zoo: names → builder functions, like ``torchvision.models.get_model``.

Each detector family file exposes one documented builder and a ``VARIANTS`` table of named
settings; a zoo name is that builder with those arguments bound. Plain references, so "go to
definition" finds the builder.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from torch import nn

from .detectors import vfnet as _vfnet

__all__ = ["build_model", "list_models"]


def _family(builder: Callable[..., nn.Module], variants: dict[str, dict[str, Any]]) -> dict[str, Callable[..., nn.Module]]:
    return {name: functools.partial(builder, **args) for name, args in variants.items()}


#: Every public builder, by name.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **_family(_vfnet.vfnet, _vfnet.VARIANTS),
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
        **kwargs: forwarded to the builder (``pretrained_backbone``, ``scale``, ``test_cfg``,
            head options).

    Raises:
        ValueError: for an unknown name (the message suggests the closest names).
    """
    if name not in _BUILDERS:
        import difflib

        close = difflib.get_close_matches(name, _BUILDERS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(list_models())}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _BUILDERS[name](num_classes=num_classes, **kwargs)
