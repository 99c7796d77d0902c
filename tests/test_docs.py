"""The configuration reference is generated from the schema and covers every shipped config;
CI runs the README's test command."""

from __future__ import annotations

import importlib.util
import re

import pytest
from ml_collections import ConfigDict

from jdjudge.config.__main__ import main as config_main
from jdjudge.config.fields import keys
from jdjudge.config.reference import render
from jdjudge.config.schema import Config
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


def test_configuration_page_is_generated_from_the_schema():
    """docs/configuration.md is exactly what ``python -m jdjudge.config --doc`` writes."""
    page = (PROJECT_ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    assert page == render(), "docs/configuration.md is stale: run python -m jdjudge.config --doc"
    assert config_main(["--check", "--output", str(PROJECT_ROOT / "docs/configuration.md")]) == 0


def test_stale_page_is_detected(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text(render().replace("| `steps` | int | `500` |", "| `steps` | int | `400` |"))
    assert config_main(["--check", "--output", str(stale)]) == 1
    assert config_main(["--doc", "--output", str(stale)]) == 0
    assert stale.read_text() == render()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_configs_add_no_keys_beyond_the_schema(path):
    """A config file may change values, never invent keys (data.options are per loader)."""
    schema_keys = {info.name for info in keys(Config)}
    extra = [k for k in _flat_keys(_load(path)) if k not in schema_keys]
    assert all(k.startswith("data.options.") for k in extra), extra


def test_ci_runs_exactly_the_readme_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "python -m pytest" in line)
    ci_lines = (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
