"""Typed params sections: `load_section(params, "name", Dataclass)` validates once and fails with a clear message.

Each DVC stage reads only the sections it declares in dvc.yaml; unknown keys, missing keys and wrong types are
errors that name the key and the params file, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A params.yaml section is malformed; the message says which key and how to fix it."""


def read_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the repository root (where params.yaml lives)")
    with path.open() as f:
        return yaml.safe_load(f) or {}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Coerce ints to floats where a float is expected; otherwise insist on the declared type."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not any of {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg, *_) = typing.get_args(hint) or (Any,)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, varg = typing.get_args(hint) or (Any, Any)
        return {str(k): _check_type(v, varg, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and checking every type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _check_type(data[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{f.name}'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check:
        check(where)
    return obj


def load_section(params: dict, name: str, cls: type[T]) -> T:
    """`params[name]` (dotted names reach into nested sections) as a validated `cls`."""
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"params.yaml has no section '{name}' (missing '{part}')")
        node = node[part]
    return build(cls, node, name)


def flatten(d, prefix: str = "") -> dict:
    """{dotted key: leaf value} of a nested params mapping (`report.n_boot`, as `dvc exp` names params)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def one_of(value: Any, allowed: tuple, where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")


def run_stage(command) -> None:
    """Run a stage's click command; a params or data error ends it with its message and exit code 2.

    Click already turns its own usage errors into messages; this does the same for `ConfigError` (a bad params
    key) and `DataError` (a bad dataset row or file), which are the user's to fix, so no traceback is shown.
    """
    from .data import DataError  # data imports this module

    try:
        command.main(standalone_mode=True)
    except (ConfigError, DataError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(2)
