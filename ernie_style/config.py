"""Typed run configs: YAML file -> `key=value` overrides -> validation -> dataclasses.

Every field carries its help text in `metadata["help"]`; unknown keys, wrong types and bad values
are errors that name the dotted key (e.g. `optim.lr`). YAML is parsed with the safe loader.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with help text (mutable defaults are copied per instance)."""
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(
            default_factory=lambda: _copy(value), metadata={"help": help}, **kwargs
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path` (safe loader); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML: {error}") from error
    except RecursionError:
        raise ValueError(f"{path}: invalid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Override:
    """A command-line value: its YAML reading and its literal text.

    `from_dict` takes the text where the option is typed as a string and YAML would read the
    text as something else: `precision=no`, `x=off`, `name=yes` stay strings there, while
    `flag=yes` still sets a bool option to True.
    """

    value: Any
    text: str


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides (values parsed as YAML, kept as `Override` leaves
    with their text) to a nested mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: invalid value: {error}") from error
        except RecursionError:
            raise ValueError(f"override {item!r}: invalid value: nested too deeply") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if isinstance(child, Override) and isinstance(child.value, dict):
                child = node[part] = child.value  # an earlier `key={...}` override
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = Override(value, raw)
    return data


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str = "") -> C:
    """Build dataclass `cls` from a mapping, recursively; errors name the dotted key."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping")
    migrate = getattr(cls, "migrate_keys", None)
    if callable(migrate):  # a config that reads an older shape of itself
        data = migrate(data)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if not isinstance(k, str) or k not in known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; "
            f"known keys here: {sorted(prefix + k for k in known)}"
        )
    values = {}
    for name, field in known.items():
        key = prefix + name
        if name in data:
            values[name] = _convert(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing required config key {key!r}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _admits(hint: Any, kind: type) -> bool:
    """Whether a type hint accepts values of `kind` (through unions and literals)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_admits(arg, kind) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return any(type(arg) is kind for arg in typing.get_args(hint))
    return hint is kind


def _from_override(hint: Any, override: Override) -> Any:
    """The override's text for a string option that YAML reads as a scalar of another type."""
    parsed = override.value
    scalar = isinstance(parsed, bool | int | float) or (
        parsed is None and not _admits(hint, type(None))
    )
    if scalar and _admits(hint, str) and not _admits(hint, type(parsed)):
        return override.text
    return parsed


def _plain(value: Any) -> Any:
    """`value` with every `Override` leaf replaced by its YAML reading."""
    if isinstance(value, Override):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _yaml_boolean_hint(value: Any) -> str:
    if isinstance(value, bool):
        return " (YAML reads no/off/yes/on as booleans: quote the value, e.g. 'no')"
    return ""


def _convert(hint: Any, value: Any, key: str) -> Any:
    if isinstance(value, Override):
        value = _from_override(hint, value)
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, {} if value is None else value, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(f"config key {key!r}: {value!r} fits none of {hint}: {errors}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or type(value) not in {type(a) for a in allowed}:
            raise ValueError(
                f"config key {key!r} must be one of {allowed}, got {value!r}"
                + _yaml_boolean_hint(value)
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
        _, item = typing.get_args(hint) or (str, Any)
        return {str(k): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return _plain(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)  # YAML 1.1 reads 3e-5 (no dot) as a string
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(
                f"config key {key!r} must be {hint.__name__}, got {type(value).__name__} {value!r}"
                + (_yaml_boolean_hint(value) if hint is str else "")
            )
        return value
    return value


def to_dict(obj: Any) -> Any:
    """A plain (YAML-safe) nested dict of a config dataclass."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def dump_yaml(obj: Any) -> str:
    """The config as YAML, keys in declaration order."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


def load_config(cls: type[C], path: str | Path | None, overrides: Sequence[str] = ()) -> C:
    """Read YAML (optional), apply overrides, validate into `cls`; errors name file and key."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}" if path else str(error)) from error
