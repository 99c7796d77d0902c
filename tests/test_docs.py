"""The configuration reference lists every key of every shipped config."""

from __future__ import annotations

import importlib.util
import re

import pytest
from ml_collections import ConfigDict

from tests.conftest import PROJECT_ROOT

CONFIG_FILES = sorted((PROJECT_ROOT / "configs").glob("*.py"))


def _flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, ConfigDict):
            keys.extend(_flat_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_key_is_documented(path):
    documented = set(
        re.findall(r"^\| `([\w.]+)` \|", (PROJECT_ROOT / "docs/configuration.md").read_text(), re.M)
    )
    missing = [key for key in _flat_keys(_load(path)) if key not in documented]
    assert not missing, f"keys of {path.name} missing from docs/configuration.md: {missing}"


def test_documented_defaults_match_tiny_config():
    """The reference's default column is the tiny config's value, so the page cannot drift."""
    text = (PROJECT_ROOT / "docs/configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| `([^`]*)` \|", text, re.M))
    config = _load(PROJECT_ROOT / "configs/tiny.py")
    for key in _flat_keys(config):
        value = config
        for part in key.split("."):
            value = value[part]
        assert rows[key] == str(value), f"{key}: documented {rows[key]!r}, config has {value!r}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "python -m pytest" in line)
    ci_lines = (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
