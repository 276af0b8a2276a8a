"""The model zoo: names → builder functions, like ``torchvision.models.get_model``.

Each detector family file exposes one documented builder and a ``VARIANTS`` table of named
settings; a zoo name is that builder with those arguments bound. Plain references, so "go to
definition" finds the builder.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from .detectors import atss as _atss
from .detectors import fcos as _fcos
from .detectors import fovea as _fovea
from .detectors import refinedet as _refinedet
from .detectors import reppoints as _reppoints
from .detectors import retinanet as _retinanet
from .detectors import vfnet as _vfnet

__all__ = ["build_model", "list_models", "infer_model_name"]


def _variant(builder: Callable[..., nn.Module], args: dict[str, Any]) -> Callable[..., nn.Module]:
    """``builder`` with a variant's ``args`` bound; a caller's ``test_cfg`` mapping updates the
    variant's own (e.g. FCOS tricks' NMS 0.6) field by field instead of replacing it."""

    @functools.wraps(builder)
    def build(**kwargs: Any) -> nn.Module:
        merged = {**args, **kwargs}
        if isinstance(args.get("test_cfg"), Mapping) and isinstance(kwargs.get("test_cfg"), Mapping):
            merged["test_cfg"] = {**args["test_cfg"], **kwargs["test_cfg"]}
        return builder(**merged)

    return build


def _family(
    builder: Callable[..., nn.Module], variants: dict[str, dict[str, Any]]
) -> dict[str, Callable[..., nn.Module]]:
    return {name: _variant(builder, args) for name, args in variants.items()}


#: Every public builder, by name.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    **_family(_vfnet.vfnet, _vfnet.VARIANTS),
    "vfnet_lite0_fpn": _vfnet.vfnet_lite0_fpn,
    **_family(_retinanet.retinanet, _retinanet.VARIANTS),
    "retinanet_lite0_fpn": _retinanet.retinanet_lite0_fpn,
    **_family(_fcos.fcos, _fcos.VARIANTS),
    "fcos_lite0_fpn": _fcos.fcos_lite0_fpn,
    **_family(_atss.atss, _atss.VARIANTS),
    "atss_lite0_fpn": _atss.atss_lite0_fpn,
    **_family(_fovea.fovea, _fovea.VARIANTS),
    "fovea_lite0_fpn": _fovea.fovea_lite0_fpn,
    **_family(_reppoints.reppoints_moment, _reppoints.VARIANTS),
    "reppoints_moment_lite0_fpn": _reppoints.reppoints_moment_lite0_fpn,
    **_family(_refinedet.refinedet, _refinedet.VARIANTS),
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


def _resnet_name(state_dict: Mapping[str, Tensor]) -> str:
    """``'r50'``, ``'x101_32x4d'``… of a ResNet/ResNeXt trunk, from its keys and shapes."""
    blocks = {int(m.group(1)) for k in state_dict for m in [re.match(r"backbone\.layer3\.(\d+)\.", k)] if m}
    if not blocks:
        raise ValueError("unknown backbone (neither backbone.layer3.* nor EfficientNet keys)")
    n3 = max(blocks) + 1
    bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
    depth = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101}.get((bottleneck, n3))
    if depth is None:
        raise ValueError(f"unsupported ResNet depth ({n3} blocks in layer3)")
    width = int(state_dict["backbone.layer1.0.conv2.weight"].shape[0])
    if depth in (18, 34) or width == 64:
        return f"r{depth}"
    return f"x{depth}_{width // 4}x4d"


def infer_model_name(state_dict: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """The zoo name and ``num_classes`` of a detector state dict (MMDetection or ours), from the
    head's predictor keys and the trunk's blocks.

    Recognised heads: ``vfnet_cls`` (VFNet), ``retina_cls`` (RetinaNet; A = 9 anchors),
    ``atss_cls`` (ATSS), ``conv_centerness``/``fcos_centerness`` (FCOS; the "tricks" variant has
    tower conv biases), ``conv_cls``/``fovea_cls`` without a centerness branch (FoveaBox; the
    legacy ``fovea_*`` names of pre-2020 zoo files, zoo_spec §1.18), ``reppoints_cls_out``
    (RepPoints; the moment transform's ``moment_transfer`` must be present, and ``_gn`` is
    added when the neck has GroupNorm keys, zoo_spec §6.7). FCOS checkpoints with a
    plain ResNet trunk are taken as the caffe-style zoo model (the style cannot be read from
    the keys, zoo_spec §1.2). ``odm_conf`` is RefineDet (trunk from ``fc7`` / ``_conv_stem``
    keys; always the 320 variant: the size is not in the weights, varifocal checkpoints carry
    it in their builder arguments).

    Returns:
        ``(name, {'num_classes': K})``, e.g. ``('retinanet_r50_fpn', {'num_classes': 80})``.

    Raises:
        ValueError: a head or trunk this package does not build.
    """

    def shape0(key: str) -> int:
        return int(state_dict[key].shape[0])

    lite = "backbone._conv_stem.weight" in state_dict
    if "bbox_head.odm_conf.0.weight" in state_dict:
        # RefineDet: the input size is not in the weights; 320 unless the checkpoint's meta says so.
        anchors = shape0("bbox_head.odm_loc.0.weight") // 4
        num_classes = shape0("bbox_head.odm_conf.0.weight") // anchors - 1
        trunk = "lite0" if lite else "vgg16" if "backbone.fc7.weight" in state_dict else "r101"
        return f"refinedet320_{trunk}", {"num_classes": num_classes}
    if "bbox_head.vfnet_cls.weight" in state_dict:
        family, num_classes = "vfnet", shape0("bbox_head.vfnet_cls.weight")
    elif "bbox_head.retina_cls.weight" in state_dict:
        anchors = shape0("bbox_head.retina_reg.weight") // 4
        family, num_classes = "retinanet", shape0("bbox_head.retina_cls.weight") // anchors
    elif "bbox_head.atss_cls.weight" in state_dict:
        family, num_classes = "atss", shape0("bbox_head.atss_cls.weight")
    elif "bbox_head.conv_centerness.weight" in state_dict or "bbox_head.fcos_centerness.weight" in state_dict:
        cls_key = (
            "bbox_head.conv_cls.weight" if "bbox_head.conv_cls.weight" in state_dict else "bbox_head.fcos_cls.weight"
        )
        family, num_classes = "fcos", shape0(cls_key)
    elif "bbox_head.reppoints_cls_out.weight" in state_dict:
        if "bbox_head.moment_transfer" not in state_dict:
            raise ValueError(
                "a RepPoints checkpoint without bbox_head.moment_transfer (minmax / grid-points variant): "
                "only the moment transform is built"
            )
        family, num_classes = "reppoints_moment", shape0("bbox_head.reppoints_cls_out.weight")
    elif "bbox_head.conv_cls.weight" in state_dict or "bbox_head.fovea_cls.weight" in state_dict:
        cls_key = (
            "bbox_head.conv_cls.weight" if "bbox_head.conv_cls.weight" in state_dict else "bbox_head.fovea_cls.weight"
        )
        family, num_classes = "fovea", shape0(cls_key)
    else:
        heads = sorted({k.split(".")[1] for k in state_dict if k.startswith("bbox_head.")})[:6]
        raise ValueError(f"not a checkpoint of a detector this package builds (bbox_head modules: {heads or 'none'})")
    kwargs = {"num_classes": num_classes}
    if lite:
        return f"{family}_lite0_fpn", kwargs
    trunk = _resnet_name(state_dict)
    if family == "vfnet":
        name = f"vfnet_{trunk}_fpn" + ("_dcn" if "backbone.layer2.0.conv2.conv_offset.weight" in state_dict else "")
    elif family == "fcos":
        tricks = "bbox_head.cls_convs.0.conv.bias" in state_dict
        name = f"fcos_{trunk}_fpn_gn_head" if trunk.startswith("x") else f"fcos_{trunk}_caffe_fpn_gn_head"
        name += "_tricks" if tricks else ""
    elif family == "reppoints_moment":
        name = f"{family}_{trunk}_fpn" + ("_gn" if "neck.lateral_convs.0.gn.weight" in state_dict else "")
    else:
        name = f"{family}_{trunk}_fpn"
    if name not in _BUILDERS:
        raise ValueError(f"recognised a {family} with a {trunk} trunk, but the zoo has no {name!r}")
    return name, kwargs
