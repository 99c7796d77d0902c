"""Command-line plumbing shared by the entry points: config loading with one-line errors.

``ml_collections.config_flags`` loads the config file (``--config=path.py[:arg]``); the
``--config.a.b=value`` overrides are applied here, typed by each field's default; the result
is converted into the typed schema and validated. Every problem (missing flag or file, an
exception in ``get_config``, unknown key, bad value, a violated rule) becomes one ConfigError
naming every problem, which ``jdjudge.entry`` prints as a single line with exit status 2.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from absl import flags
from ml_collections import ConfigDict, config_flags

from jdjudge.config.fields import ConfigError, resolve
from jdjudge.config.schema import Config

_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _root_message(error: BaseException) -> str:
    """The innermost cause's message, last line: what the user actually got wrong."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _parse_value(raw: str, kind: type, key: str) -> Any:
    """Parse ``raw`` as the type the config declares for ``key`` (its default's type)."""
    try:
        if kind is bool:
            if raw.strip().lower() not in _BOOLEANS:
                raise ValueError(f"expected true or false, got {raw!r}")
            return _BOOLEANS[raw.strip().lower()]
        if kind in (int, float):
            return kind(raw)
        if kind is str:
            return raw
        return ast.literal_eval(raw)  # tuples, lists, dicts, None
    except (ValueError, SyntaxError) as error:
        raise ConfigError(f"--config.{key}={raw}: not a valid {kind.__name__} ({error})") from None


def apply_override(config: ConfigDict, key: str, raw: str) -> None:
    """Set dotted ``key`` of ``config`` from the string ``raw``, refusing unknown keys."""
    parent: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(parent, ConfigDict) or part not in parent:
            prefix = ".".join(parts[:depth])
            where = f" under {prefix!r}" if prefix else ""
            raise ConfigError(f"unknown config key {key!r} in --config.{key}={raw}{where}")
        if depth < len(parts) - 1:
            parent = parent[part]
    leaf = parts[-1]
    kind = parent.get_type(leaf)
    if kind is ConfigDict:
        raise ConfigError(f"--config.{key}: {key!r} is a group of keys; set one of its fields")
    try:
        parent[leaf] = _parse_value(raw, kind, key)
    except TypeError as error:
        raise ConfigError(f"--config.{key}={raw}: {error}") from None


def load_config(argv: Sequence[str]) -> Config:
    """Parse ``argv`` (program name first) into the typed, validated config, or raise
    ConfigError naming every problem."""
    return resolve(Config, load_config_dict(argv))


def load_config_dict(argv: Sequence[str]) -> ConfigDict:
    """Parse ``argv`` (program name first) into a locked ConfigDict, or raise ConfigError."""
    args = list(argv[1:])
    config_args = [a for a in args if a.startswith("--config=")]
    overrides = [a for a in args if a.startswith("--config.")]
    unknown = [a for a in args if a not in config_args and a not in overrides]
    if unknown:
        raise ConfigError(
            f"unknown argument {unknown[0]!r} (expected --config=FILE and --config.KEY=VALUE)"
        )
    if not config_args:
        raise ConfigError("missing --config (for example --config=configs/tiny.py)")

    probe_flags = flags.FlagValues()  # private: parsing never touches absl's global FLAGS
    file_argv = [argv[0], config_args[-1]]  # overrides are ours to apply, not config_flags'
    holder = config_flags.DEFINE_config_file(
        "config",
        None,
        "config file",
        flag_values=probe_flags,
        lock_config=False,
        sys_argv=file_argv,
    )
    try:
        probe_flags(file_argv)
        config = holder.value
        _ = config.keys()  # an unloadable file yields an object that raises on first use
    except Exception as error:
        raise ConfigError(f"{config_args[-1]}: {_root_message(error)}") from None
    for arg in overrides:
        key, has_value, raw = arg[len("--config.") :].partition("=")
        if not has_value:
            raise ConfigError(f"{arg}: expected --config.{key}=VALUE")
        apply_override(config, key, raw)
    config.lock()
    return config
