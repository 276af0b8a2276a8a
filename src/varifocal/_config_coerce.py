"""Type checking of :mod:`varifocal.config`: YAML values converted to the annotated type of
their field (:func:`_coerce`, with ``_Mismatch`` and a readable type name on failure), nested
mappings and dotted ``key=value`` overrides applied to the dataclasses (:func:`_apply`,
:func:`_apply_override`) and unknown keys refused with a close-match suggestion (:func:`_unknown_key`).

It and :mod:`varifocal.config` import each other: ``config`` imports it after defining its
dataclasses, and it imports them at its end, so that either module can be imported first.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

import yaml

# --------------------------------------------------------------------------------------------
# Type checking
# --------------------------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to type ``tp``, or raise ``_Mismatch``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:  # in declaration order: bool before str, float before None...
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [_coerce(v, args[0]) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    raise TypeError(f"config.py: unsupported field type {tp!r}")


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        full = f"{prefix}{f.name}"
        keys.append(full)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, f"{full}."))
    return keys


def _unknown_key(source: str, key: str) -> ConfigError:
    match = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.6)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return ConfigError(f"{source}: unknown key '{key}'{hint}")


def _set(obj: Any, key: str, name: str, value: Any, source: str) -> None:
    """Set field ``name`` of dataclass instance ``obj`` (full dotted key ``key``)."""
    hints = typing.get_type_hints(type(obj))
    if name not in hints or name not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown_key(source, key)
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section in YAML ("model:") changes nothing
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' is a section and needs a mapping, got {value!r}")
        _apply(getattr(obj, name), value, f"{key}.", source)
        return
    try:
        setattr(obj, name, _coerce(value, tp))
    except _Mismatch:
        raise ConfigError(
            f"{source}: '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        ) from None


def _apply(obj: Any, mapping: dict[str, Any], prefix: str, source: str) -> None:
    for name, value in mapping.items():
        if not isinstance(name, str):
            raise ConfigError(
                f"{source}: keys must be strings, got {name!r} under '{prefix.rstrip('.') or 'top level'}'"
            )
        _set(obj, f"{prefix}{name}", name, value, source)


def _apply_override(cfg: Config, override: str) -> None:
    source = f"override '{override}'"
    if "=" not in override:
        raise ConfigError(f"{source}: expected key=value, e.g. train.epochs=24")
    key, _, text = override.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{source}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: value is not valid YAML ({' '.join(str(exc).split())})") from None
    *parents, name = key.split(".")
    obj: Any = cfg
    walked = []
    for part in parents:
        walked.append(part)
        if part not in {f.name for f in dataclasses.fields(obj)} or not dataclasses.is_dataclass(getattr(obj, part)):
            raise _unknown_key(source, key)
        obj = getattr(obj, part)
    _set(obj, key, name, value, source)


# At the end: varifocal.config imports this module after defining these (see above).
from .config import Config, ConfigError  # noqa: E402
