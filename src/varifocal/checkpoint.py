"""Loading MMDetection VFNet checkpoints and varifocal's own, and converting between them.

Formats recognised by :func:`read_checkpoint` (all read with ``weights_only=True``):

- **mmdet**: ``{'state_dict': {...}, 'meta': {'CLASSES': (...), ...}}`` as published in the
  MMDetection model zoo (spec §8.1). Keys load verbatim because our module names reproduce
  MMDetection's (spec §8.2); a ``module.`` prefix (DDP) is stripped.
- **varifocal**: ``{'format': 'varifocal', 'format_version': 1, 'model_name', 'model_kwargs',
  'class_names', 'state_dict', 'meta', 'state_dict_sha256'}`` written by :func:`save_checkpoint`
  (training checkpoints add optimizer/scheduler state beside these keys).
  ``state_dict_sha256`` (see :func:`state_dict_sha256`) is checked on reading when present;
  files written before it existed (such as the bundled ``models/vfnet_lite0_bccd.pth``) have
  none and load unchecked, with the same ``format_version``.
- **raw**: a plain ``{name: tensor}`` state dict.

Loading is weights-only: a file whose pickle holds Python objects beyond tensors and plain
containers is refused, because unpickling such objects can run arbitrary code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .utils.io import atomic_torch_save

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "load_checkpoint",
    "load_state_into",
    "save_checkpoint",
    "state_dict_sha256",
    "validate_model_kwargs",
    "infer_model_name",
    "convert_mmdet_checkpoint",
    "slim_checkpoint",
    "convert_checkpoint",
]

FORMAT_VERSION = 1

#: Top-level key of a varifocal checkpoint holding :func:`state_dict_sha256` of its state dict.
HASH_KEY = "state_dict_sha256"


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


def read_checkpoint(path: str | os.PathLike, *, check_model_kwargs: bool = True) -> dict[str, Any]:
    """Read a checkpoint file and normalise it.

    A varifocal checkpoint with a stored ``state_dict_sha256`` has it recomputed and compared
    (about 1.3 s per GiB of weights, see :func:`state_dict_sha256`); one without loads unchecked.

    Args:
        path: checkpoint file.
        check_model_kwargs: for a varifocal checkpoint of a zoo model, check the stored builder
            arguments with :func:`validate_model_kwargs` (turn off when the weights go into a
            model built elsewhere, as :func:`load_checkpoint` does).

    Returns:
        ``{'format': 'mmdet' | 'varifocal' | 'raw', 'state_dict': {key: tensor},
        'class_names': list[str] | None, 'model_name': str | None, 'model_kwargs': dict,
        'raw': the loaded object}``.

    Raises:
        CheckpointError: one line naming the file, if it is missing, not a torch checkpoint,
            holds Python objects beyond tensors and plain containers (refused: unpickling them
            can run code), holds no state dict, fails its content hash (corrupted or modified
            weights), or (``check_model_kwargs``) stores a builder argument this version does
            not know.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        raise CheckpointError(_load_error_message(path, exc)) from None
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
    if fmt == "varifocal" and obj.get(HASH_KEY) is not None:
        _verify_hash(path, state, obj[HASH_KEY])
    if fmt == "varifocal" and check_model_kwargs:
        validate_model_kwargs(model_name, model_kwargs, path)
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    return {
        "format": fmt,
        "state_dict": state,
        "class_names": class_names,
        "model_name": model_name,
        "model_kwargs": model_kwargs,
        "raw": obj,
    }


def _load_error_message(path: Path, exc: BaseException) -> str:
    """Our one-line wording for a file ``torch.load(weights_only=True)`` rejected: what it holds
    and why it was refused. It never passes on torch's hint to switch the safety off."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"{path}: not a loadable weights-only torch checkpoint: it contains Python objects beyond "
            f"tensors and plain containers ({found.group(1)}), and unpickling those can run arbitrary code, "
            "so it was refused; varifocal reads only checkpoints of tensors, numbers, strings, lists and dicts"
        )
    reason = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if reason:
        detail = reason.group(1).strip()
    else:
        detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if "weights_only" in detail or "trust" in detail:  # torch's advice, not a reason
        detail = type(exc).__name__
    return f"{path}: not a loadable weights-only torch checkpoint ({detail})"


def state_dict_sha256(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a state dict's content, in key order.

    For every entry: ``key``, dtype, shape and byte count, separated by NUL bytes, then the
    tensor's bytes (C-contiguous, native byte order). Non-tensor entries contribute their key,
    type name and ``repr``. Stored by :func:`save_checkpoint` and :func:`slim_checkpoint` over
    the tensors as stored (float16 ones with ``half``), checked by :func:`read_checkpoint`.

    Cost: one pass of SHA-256 over the weights, no copy (with SHA extensions about 0.16 s for
    the 126 MiB of a VFNet-R50, against 0.25 s for its ``torch.load``; 20 ms for the bundled
    9 MiB Lite0 model).
    """
    digest = hashlib.sha256()
    for key, value in state.items():
        if isinstance(value, Tensor):
            t = value.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous().reshape(-1)
            nbytes = t.numel() * t.element_size()
            shape = ",".join(str(d) for d in value.shape)
            digest.update(f"{key}\0{t.dtype}\0{shape}\0{nbytes}\0".encode())
            if nbytes:
                digest.update(memoryview(t.view(torch.uint8).numpy()))
        else:
            digest.update(f"{key}\0{type(value).__name__}\0{value!r}\0".encode())
    return digest.hexdigest()


def _verify_hash(path: Path, state: Mapping[str, Any], stored: Any) -> None:
    if not isinstance(stored, str) or not re.fullmatch(r"[0-9a-f]{64}", stored):
        raise CheckpointError(f"{path}: malformed {HASH_KEY} entry {stored!r} (expected 64 hex digits)")
    actual = state_dict_sha256(state)
    if actual != stored:
        raise CheckpointError(
            f"{path}: content hash mismatch: the weights' SHA-256 is {actual[:12]}… but the checkpoint "
            f"stores {stored[:12]}…; the file is corrupted or was modified after saving, refusing to load it"
        )


def _builder_parameters(model_name: str) -> set[str] | None:
    """Keyword arguments the zoo builder ``model_name`` accepts: its named parameters and, when
    it forwards ``**head_kwargs``, those of the head class its module builds (``None``: a name
    this version does not have, or a builder whose head cannot be told)."""
    from .models import zoo

    builder = zoo._BUILDERS.get(model_name)
    if builder is None:
        return None
    func = inspect.unwrap(builder)
    params = inspect.signature(func).parameters
    names = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return names
    module = inspect.getmodule(func)
    heads = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, nn.Module)
        and obj.__module__.startswith("varifocal.models.heads.")
        and obj.__name__.endswith("Head")
    ]
    if len(heads) != 1:
        return None
    head_params = inspect.signature(heads[0].__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in head_params.values()):
        return None
    # num_classes and in_channels are always passed by the builder itself.
    return names | (set(head_params) - {"self", "num_classes", "in_channels"})


def validate_model_kwargs(
    model_name: str | None, model_kwargs: Mapping[str, Any], source: str | os.PathLike = "checkpoint"
) -> None:
    """Check builder arguments (e.g. a checkpoint's ``model_kwargs``) against the signature of
    the zoo builder ``model_name`` and of the head it forwards ``**head_kwargs`` to, and the
    fields of a ``test_cfg`` mapping against :class:`~varifocal.models.postprocess.TestConfig`.
    Nothing is checked for ``None`` or a name this version does not have (the caller reports
    that).

    Raises:
        CheckpointError: one line naming ``source``, the model and the first unknown key.
    """
    if not model_name:
        return
    accepted = _builder_parameters(model_name)
    if accepted is None:
        return
    from . import __version__
    from .models.postprocess import TestConfig

    unknown = [k for k in model_kwargs if k not in accepted]
    if unknown:
        raise CheckpointError(
            f"{source}: stored builder argument {unknown[0]!r} of {model_name} is not known to varifocal "
            f"{__version__} (unknown: {', '.join(map(repr, unknown))}); use the version that wrote the "
            "checkpoint, or re-save it without that argument"
        )
    test_cfg = model_kwargs.get("test_cfg")
    if isinstance(test_cfg, Mapping):
        fields = {f.name for f in dataclasses.fields(TestConfig)}
        bad = [k for k in test_cfg if k not in fields]
        if bad:
            raise CheckpointError(
                f"{source}: stored builder argument 'test_cfg.{bad[0]}' of {model_name} is not known to "
                f"varifocal {__version__} (test_cfg fields: {', '.join(sorted(fields))})"
            )


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
    ckpt = read_checkpoint(path, check_model_kwargs=False)
    return load_state_into(model, ckpt, path, strict=strict, prefixes=prefixes)


def load_state_into(
    model: nn.Module,
    ckpt: dict[str, Any],
    path: str | os.PathLike,
    *,
    strict: bool = True,
    prefixes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`load_checkpoint` of a checkpoint already read by :func:`read_checkpoint` (so it is
    read and hash-checked once); ``path`` names it in errors. Same arguments, return value and
    errors as :func:`load_checkpoint`."""
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

    The file also stores ``state_dict_sha256`` (:func:`state_dict_sha256` of the stored
    tensors), which :func:`read_checkpoint` checks.
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
    obj[HASH_KEY] = state_dict_sha256(obj["state_dict"])
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
    info = load_state_into(model, ckpt, src)
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
        CheckpointError: if ``src`` is not a varifocal checkpoint (or unreadable, see
            :func:`read_checkpoint`).
    """
    return _slim(read_checkpoint(src, check_model_kwargs=False), src, dst, half)


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
        HASH_KEY: state_dict_sha256(state),
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
    ckpt = read_checkpoint(src, check_model_kwargs=False)
    if ckpt["format"] == "varifocal":
        return {"kind": "slim", **_slim(ckpt, src, dst, half)}
    return {"kind": "mmdet", **_convert_mmdet(ckpt, src, dst, model_name)}
