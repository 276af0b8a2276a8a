"""Loading MMDetection VFNet checkpoints and varifocal's own, and converting between them.

Formats recognised by :func:`read_checkpoint` (all read with ``weights_only=True``):

- **mmdet**: ``{'state_dict': {...}, 'meta': {'CLASSES': (...), ...}}`` as published in the
  MMDetection model zoo (spec §8.1). Keys load verbatim because our module names reproduce
  MMDetection's (spec §8.2); a ``module.`` prefix (DDP) is stripped.
- **varifocal**: ``{'format': 'varifocal', 'format_version': 1, 'model_name', 'model_kwargs',
  'class_names', 'state_dict', 'meta'}`` written by :func:`save_checkpoint` (training
  checkpoints add optimizer/scheduler state beside these keys).
- **raw**: a plain ``{name: tensor}`` state dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .utils.io import atomic_torch_save

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "infer_model_name",
    "convert_mmdet_checkpoint",
    "slim_checkpoint",
    "convert_checkpoint",
]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model.

    Attributes ``missing``, ``unexpected`` and ``mismatched`` hold the full key lists (the
    message shows the first few of each).
    """

    def __init__(
        self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (), mismatched: Sequence[str] = ()
    ):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file and normalise it.

    Returns:
        ``{'format': 'mmdet' | 'varifocal' | 'raw', 'state_dict': {key: tensor},
        'class_names': list[str] | None, 'model_name': str | None, 'model_kwargs': dict,
        'raw': the loaded object}``.

    Raises:
        CheckpointError: if the file is missing, not a torch checkpoint, needs unpickling of
            arbitrary objects (refused: ``weights_only=True``), or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable weights-only torch checkpoint ({first})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")

    if obj.get("format") == "varifocal":
        fmt = "varifocal"
        state = obj.get("state_dict")
        class_names = obj.get("class_names")
        model_name = obj.get("model_name")
        model_kwargs = _upgrade_model_kwargs(dict(obj.get("model_kwargs") or {}))
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        fmt = "mmdet"
        state = obj["state_dict"]
        meta = obj.get("meta") or {}
        classes = meta.get("CLASSES") if isinstance(meta, Mapping) else None
        if classes is None and isinstance(meta, Mapping):
            classes = (meta.get("dataset_meta") or {}).get("classes")
        class_names = list(classes) if classes is not None else None
        model_name, model_kwargs = None, {}
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        fmt, state, class_names, model_name, model_kwargs = "raw", obj, None, None, {}
    else:
        raise CheckpointError(f"{path}: no state_dict found (keys: {sorted(map(str, obj.keys()))[:8]})")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path}: the state_dict is empty or malformed")
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    return {
        "format": fmt,
        "state_dict": state,
        "class_names": class_names,
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "raw": obj,
    }


#: Test settings that format-1 checkpoints of varifocal 0.1 stored as flat builder kwargs.
_LEGACY_TEST_KEYS = ("score_thr", "nms_pre", "nms_iou", "max_per_img", "postprocess")


def _upgrade_model_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Flat test settings (``score_thr=…``) of older checkpoints → ``test_cfg={…}``."""
    legacy = {k: kwargs.pop(k) for k in _LEGACY_TEST_KEYS if k in kwargs}
    if legacy:
        kwargs["test_cfg"] = {**legacy, **dict(kwargs.get("test_cfg") or {})}
    return kwargs


#: Predictor names of MMDetection's anchor-free heads before its July 2020 refactor (zoo_spec
#: §1.18): ``bbox_head.fcos_cls.*`` → ``bbox_head.conv_cls.*`` and likewise for FoveaBox.
_LEGACY_HEAD_PREFIXES = ("fcos", "fovea")
_LEGACY_HEAD_SUFFIXES = ("cls", "reg", "centerness")


def _rename_legacy_keys(state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """MMDetection's legacy renamer: a key ``bbox_head.<p>_<s>.*`` (p in fcos/fovea, s in
    cls/reg/centerness) becomes ``bbox_head.conv_<s>.*`` when the model has that key and the
    checkpoint does not."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "bbox_head" and key not in own:
            prefix, _, suffix = parts[1].partition("_")
            renamed = ".".join(["bbox_head", f"conv_{suffix}", *parts[2:]])
            if (
                prefix in _LEGACY_HEAD_PREFIXES
                and suffix in _LEGACY_HEAD_SUFFIXES
                and renamed in own
                and renamed not in state
            ):
                key = renamed
        out[key] = value
    return out


def _summarise(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    prefixes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Load MMDetection or varifocal weights into ``model`` (spec §8.4).

    Floating tensors are cast to the model's dtype (the golden checkpoint stores float16).
    The class names of the checkpoint (MMDetection ``meta.CLASSES`` or ours) become
    ``model.class_names`` when the model has that attribute.

    Args:
        model: e.g. a model from :func:`varifocal.build_model`.
        path: checkpoint file.
        strict: require the checkpoint keys (restricted to ``prefixes``) and the model keys
            (likewise) to match exactly.
        prefixes: only load/check keys starting with one of these, e.g. ``('bbox_head.',)``.

    Returns:
        ``{'format', 'class_names', 'missing', 'unexpected'}``.

    Raises:
        CheckpointError: unreadable file, or keys that do not fit: the one-line message names
            the file and lists missing, unexpected and mis-shaped keys (e.g. a checkpoint of
            another architecture or class count).
    """
    return _load_into(model, read_checkpoint(path), path, strict=strict, prefixes=prefixes)


def _load_into(
    model: nn.Module,
    ckpt: dict[str, Any],
    path: str | os.PathLike,
    *,
    strict: bool = True,
    prefixes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`load_checkpoint` of an already read checkpoint (``path`` names it in errors)."""
    own = model.state_dict()
    state = _rename_legacy_keys(ckpt["state_dict"], own) if ckpt["format"] == "mmdet" else ckpt["state_dict"]

    def selected(key: str) -> bool:
        return prefixes is None or any(key.startswith(p) for p in prefixes)

    ckpt_keys = [k for k in state if selected(k)]
    model_keys = [k for k in own if selected(k)]
    missing = [k for k in model_keys if k not in state]
    unexpected = [k for k in ckpt_keys if k not in own]
    mismatched = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in ckpt_keys
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if mismatched or (strict and (missing or unexpected)) or not ckpt_keys:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} mis-shaped ({_summarise(mismatched)})")
        if missing:
            parts.append(f"{len(missing)} missing ({_summarise(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_summarise(unexpected)})")
        if not ckpt_keys:
            parts.append("no key matches the model")
        raise CheckpointError(
            f"{path}: {ckpt['format']} checkpoint does not fit {type(model).__name__}: " + "; ".join(parts),
            missing,
            unexpected,
            mismatched,
        )
    to_load = {}
    for k in ckpt_keys:
        if k not in own:
            continue
        v = state[k]
        if v.is_floating_point() and own[k].is_floating_point():
            v = v.to(own[k].dtype)
        to_load[k] = v
    model.load_state_dict(to_load, strict=False)
    if ckpt["class_names"] is not None and hasattr(model, "class_names"):
        model.class_names = list(ckpt["class_names"])
    return {"format": ckpt["format"], "class_names": ckpt["class_names"], "missing": missing, "unexpected": unexpected}


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    half: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` in varifocal's format, atomically (a crash leaves the old file).

    Args:
        path: destination file.
        model: the model; its ``state_dict`` is stored (unwrap DDP first).
        model_name: builder name for :func:`varifocal.build_model` (e.g. ``'vfnet_r50_fpn'``).
        model_kwargs: builder keyword arguments (``num_classes`` etc.).
        class_names: class names; defaults to ``model.class_names``.
        meta: free-form JSON-like information (versions, dataset, command).
        half: store floating tensors as float16 (halves the file; loading casts back).
        extra: additional top-level entries (optimizer state etc.); must be weights-only
            loadable (tensors, numbers, strings, lists, dicts).
    """
    state = model.state_dict()
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    obj: dict[str, Any] = {
        "format": "varifocal",
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs or {}),
        "class_names": list(names) if names is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "meta": dict(meta or {}),
    }
    if extra:
        obj.update(extra)
    atomic_torch_save(obj, path)


def infer_model_name(state_dict: Mapping[str, Tensor]) -> tuple[str, dict[str, Any]]:
    """Guess the zoo name and ``num_classes`` of a detector state dict from its keys and shapes
    (see :func:`varifocal.models.zoo.infer_model_name`).

    Raises:
        CheckpointError: if the keys are not those of a detector this package builds.
    """
    from .models.zoo import infer_model_name as _infer

    try:
        return _infer(state_dict)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def convert_mmdet_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, model_name: str | None = None
) -> dict[str, Any]:
    """Convert an MMDetection checkpoint (any detector of :func:`varifocal.list_models`) into
    varifocal's format.

    The weights are loaded into a freshly built model first (so a checkpoint that does not
    fit fails here, with the key lists), then saved with the model name, ``num_classes`` and
    class names, atomically.

    Returns:
        ``{'model_name', 'num_classes', 'class_names'}``.

    Raises:
        CheckpointError: unreadable or unrecognised checkpoint, or keys that do not fit.
    """
    return _convert_mmdet(read_checkpoint(src), src, dst, model_name)


def _convert_mmdet(
    ckpt: dict[str, Any], src: str | os.PathLike, dst: str | os.PathLike, model_name: str | None
) -> dict[str, Any]:
    from .models.zoo import build_model

    name, kwargs = infer_model_name(ckpt["state_dict"])
    name = model_name or name
    model = build_model(name, **kwargs)
    info = _load_into(model, ckpt, src)
    save_checkpoint(
        dst,
        model,
        model_name=name,
        model_kwargs=kwargs,
        class_names=info["class_names"],
        meta={"converted_from": str(src), "source_format": ckpt["format"]},
    )
    return {"model_name": name, "num_classes": kwargs["num_classes"], "class_names": info["class_names"]}


def slim_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, half: bool = True) -> dict[str, Any]:
    """Keep only what inference needs from a varifocal (training) checkpoint: weights, model
    name and kwargs, class names and meta; drop optimizer and RNG state. With ``half``,
    floating weights are stored as float16 (loading casts them back to the model's dtype).

    Returns:
        ``{'bytes': size of dst, 'num_tensors': count}``.

    Raises:
        CheckpointError: if ``src`` is not a varifocal checkpoint.
    """
    return _slim(read_checkpoint(src), src, dst, half)


def _slim(ckpt: dict[str, Any], src: str | os.PathLike, dst: str | os.PathLike, half: bool) -> dict[str, Any]:
    if ckpt["format"] != "varifocal":
        raise CheckpointError(f"{src}: not a varifocal checkpoint (format {ckpt['format']})")
    raw = ckpt["raw"]
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    meta = dict(raw.get("meta") or {})
    for key in ("epoch", "iteration", "cat_ids"):
        if key in raw and key not in meta:
            meta[key] = raw[key]
    obj = {
        "format": "varifocal",
        "format_version": FORMAT_VERSION,
        "model_name": raw.get("model_name"),
        "model_kwargs": dict(ckpt["model_kwargs"]),
        "class_names": raw.get("class_names"),
        "state_dict": state,
        "meta": meta,
    }
    atomic_torch_save(obj, dst)
    return {"bytes": Path(dst).stat().st_size, "num_tensors": len(state)}


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, model_name: str | None = None, half: bool = False
) -> dict[str, Any]:
    """``varifocal convert``: read ``src`` once, then :func:`slim_checkpoint` a varifocal
    checkpoint (``half`` as there) or :func:`convert_mmdet_checkpoint` any other.

    Returns:
        ``{'kind': 'slim', 'bytes', 'num_tensors'}`` or ``{'kind': 'mmdet', 'model_name',
        'num_classes', 'class_names'}``.

    Raises:
        CheckpointError: as the two functions do.
    """
    ckpt = read_checkpoint(src)
    if ckpt["format"] == "varifocal":
        return {"kind": "slim", **_slim(ckpt, src, dst, half)}
    return {"kind": "mmdet", **_convert_mmdet(ckpt, src, dst, model_name)}
