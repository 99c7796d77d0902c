"""The machinery behind the schema: how a key is declared, checked and converted.

A key is a dataclass field declared with ``key(default, doc, choices=..., ge=...)``; its type
comes from the annotation. Everything else is derived from those declarations: the
``ConfigDict`` that ``configs/*.py`` and ``--config.a.b=value`` work on, the conversion back
into the typed config (type errors, unknown keys), the per-key checks (allowed values,
bounds) and the reference page. A section adds rules that span several keys with a
``cross_checks`` method yielding ``(field, message)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from ml_collections import ConfigDict, config_dict

T = TypeVar("T")


class ConfigError(ValueError):
    """A problem with the command line or the configuration; reported as one line."""


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}  # fmt: skip


def key(
    default: Any,
    doc: str,
    *,
    choices: tuple[Any, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """Declare one config key: its default, a one-line doc, and what values it allows.

    ``choices`` restricts the value (each element, for a tuple key); ``ge``/``gt``/``le``/
    ``lt`` bound a number (a tuple's length is not bounded). Mutable defaults (dicts) are
    copied per instance.
    """
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
              if value is not None}  # fmt: skip
    metadata = {"doc": doc, "choices": choices, "bounds": bounds}
    if isinstance(default, dict):
        frozen = dict(default)
        return dataclasses.field(
            default_factory=lambda: dict(frozen), metadata=metadata, hash=False
        )
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type[T]) -> Any:
    """Declare a nested group of keys (``config.model``, ``config.data``, …)."""
    return dataclasses.field(default_factory=cls, metadata={"section": True})


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One key as the tooling sees it: dotted name, type, default and declaration."""

    name: str
    kind: Any  # the resolved annotation: int, float, str, bool, int | None, tuple[str, ...], dict
    default: Any
    doc: str
    choices: tuple[Any, ...] | None
    bounds: Mapping[str, float]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_section(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get("section"))


def keys(cls: type, prefix: str = "") -> Iterator[KeyInfo]:
    """Every leaf key of a schema class, depth first, in declaration order."""
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        name = prefix + field.name
        if is_section(field):
            yield from keys(hints[field.name], name + ".")
            continue
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
        yield KeyInfo(name, hints[field.name], default, field.metadata["doc"],
                      field.metadata["choices"], field.metadata["bounds"])  # fmt: skip


def sections(cls: type, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(dotted prefix, class) for the class itself and every nested section."""
    yield prefix, cls
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        if is_section(field):
            yield from sections(hints[field.name], prefix + field.name + ".")


# --- ConfigDict <-> typed config --------------------------------------------------------------


def _optional_inner(kind: Any) -> Any | None:
    """``int`` for ``int | None`` (and None for anything that is not Optional)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0]
    return None


def to_config_dict(config: Any) -> ConfigDict:
    """The ConfigDict a ``configs/*.py`` file edits: same keys, typed by the schema (an
    ``int | None`` key set to None is an int placeholder, so overrides parse as int)."""
    out = ConfigDict()
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = hints[field.name]
        if is_section(field):
            out[field.name] = to_config_dict(value)
        elif value is None and _optional_inner(kind) is not None:
            out[field.name] = config_dict.placeholder(_optional_inner(kind))
        elif isinstance(value, dict):
            out[field.name] = ConfigDict(value)
        else:
            out[field.name] = value
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict as JSON holds it (tuples as lists): what config.json and checkpoint
    metadata store, and what a resume compares against them."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(value: Any, kind: Any, name: str) -> tuple[Any, str | None]:
    """``value`` as type ``kind``, or an error message. Only lossless conversions: an int is
    a valid float, a list of strings a valid tuple; a bool is never a number."""
    inner = _optional_inner(kind)
    if inner is not None:
        return (None, None) if value is None else _coerce(value, inner, name)
    origin = typing.get_origin(kind)
    if kind is bool:
        return (value, None) if isinstance(value, bool) else (value, "must be true or false")
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (value, "must be an integer")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value, "must be a number"
        if not math.isfinite(value):
            return value, "must be finite"
        return float(value), None
    if kind is str:
        return (value, None) if isinstance(value, str) else (value, "must be a string")
    if origin is tuple:
        (element, _) = typing.get_args(kind)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            return value, f"must be a tuple of {element.__name__}"
        if not all(isinstance(v, element) for v in value):
            return value, f"must be a tuple of {element.__name__}"
        return tuple(value), None
    if origin is dict or kind is dict:
        if isinstance(value, ConfigDict):
            value = value.to_dict()
        return (dict(value), None) if isinstance(value, Mapping) else (value, "must be a mapping")
    raise TypeError(f"{name}: unsupported schema type {kind!r}")  # a schema bug, not user input


def from_mapping(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> tuple[T, list[str]]:
    """Build ``cls`` from nested ``values`` (a ConfigDict or a loaded config.json).

    Returns the typed config and one message per problem (unknown key, wrong type); missing
    keys take their defaults. A key whose value has the wrong type keeps its default, so the
    remaining checks still run and every problem is reported in one go.
    """
    if isinstance(values, ConfigDict):
        values = values.to_dict()
    errors: list[str] = []
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for unknown in sorted(set(values) - set(fields)):
        errors.append(f"{prefix}{unknown}: unknown config key")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in values:
            continue
        dotted = prefix + name
        if is_section(field):
            if not isinstance(values[name], Mapping):
                errors.append(f"{dotted}={values[name]!r}: must be a group of keys")
                continue
            kwargs[name], sub_errors = from_mapping(hints[name], values[name], dotted + ".")
            errors.extend(sub_errors)
            continue
        value, problem = _coerce(values[name], hints[name], dotted)
        if problem:
            errors.append(f"{dotted}={values[name]!r}: {problem}")
        else:
            kwargs[name] = value
    return cls(**kwargs), errors


# --- checks derived from the declarations ---------------------------------------------------


def _describe(choices: tuple[Any, ...]) -> str:
    return "one of " + ", ".join(str(c) for c in choices)


def check(config: Any, prefix: str = "") -> list[str]:
    """One ``key=value: problem`` line per violated declaration or cross-field rule (types
    too, for configs built in code rather than through ``resolve``)."""
    errors: list[str] = []
    hints = _hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        dotted = prefix + field.name
        if is_section(field):
            errors.extend(check(value, dotted + "."))
            continue
        _, problem = _coerce(value, hints[field.name], dotted)  # a config built in code
        if problem:
            errors.append(f"{dotted}={value!r}: {problem}")
            continue
        choices = field.metadata["choices"]
        if choices is not None:
            elements = value if isinstance(value, tuple) else (value,)
            if any(v not in choices for v in elements):
                errors.append(f"{dotted}={value!r}: {_describe(choices)}")
            if isinstance(value, tuple) and (not value or len(set(value)) != len(value)):
                errors.append(f"{dotted}={value!r}: must be non-empty, without duplicates")
        if isinstance(value, int | float) and not isinstance(value, bool):
            for bound, limit in field.metadata["bounds"].items():
                symbol, holds = _BOUNDS[bound]
                if not holds(value, limit):
                    errors.append(f"{dotted}={value!r}: must be {symbol} {limit}")
    cross = getattr(config, "cross_checks", None)
    if cross is not None:
        for name, message in cross():
            errors.append(f"{prefix}{name}={getattr(config, name)!r}: {message}")
    return errors


def describe_allowed(info: KeyInfo) -> str:
    """'One of `a`, `b`.' / 'Range: >= 1.' for the reference page (empty when free)."""
    parts = []
    if info.choices is not None:
        parts.append("One of " + ", ".join(f"`{c}`" for c in info.choices) + ".")
    if info.bounds:
        limits = [f"{_BOUNDS[bound][0]} {limit:g}" for bound, limit in info.bounds.items()]
        parts.append("Must be " + " and ".join(limits) + ".")
    return " ".join(parts)


def validate(config: Any) -> Any:
    """``config`` if every declaration and rule holds, else ConfigError with all problems."""
    errors = check(config)
    if errors:
        raise ConfigError("; ".join(errors))
    return config


def resolve(cls: type[T], values: Mapping[str, Any]) -> T:
    """The typed, validated config for ``values`` (a ConfigDict after overrides, or a saved
    config.json), or ConfigError listing every problem."""
    config, errors = from_mapping(cls, values)
    errors.extend(check(config))
    if errors:
        raise ConfigError("; ".join(errors))
    return config
