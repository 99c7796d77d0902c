"""The package layout: no import cycles, the core never reaches up to training or the entry
points, and the README's Layout section names exactly what is there."""

from __future__ import annotations

import ast
import re

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "jdjudge"
CORE = ("jdjudge.objective", "jdjudge.models", "jdjudge.data")
# What the core may build on: the config schema (and its field machinery) and the mesh rules.
CORE_MAY_IMPORT = ("jdjudge.config.schema", "jdjudge.config.fields", "jdjudge.sharding")


def _module_name(path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the jdjudge modules it imports (anywhere in the file)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from pkg import module` names a module
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_a_hand_made_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    assert _cycle(_import_graph()) is None


def test_core_never_imports_training_checkpointing_or_entry_points():
    graph = _import_graph()
    bad = {
        (module, target)
        for module, targets in graph.items()
        if module.startswith(CORE)
        for target in targets
        if not target.startswith(CORE) and target not in CORE_MAY_IMPORT and target != "jdjudge"
    }
    assert not bad, sorted(bad)


def test_readme_layout_names_exactly_the_package_tree():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```")[1]
    named = set(re.findall(r"^  (\w+(?:\.py|/))", block, re.M))
    present = {
        p.name + ("/" if p.is_dir() else "")
        for p in PACKAGE.iterdir()
        if p.name != "__init__.py" and not p.name.startswith("__pycache__")
    }
    assert named == present, (
        f"README names {sorted(named - present)}, misses {sorted(present - named)}"
    )
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        line = next(x for x in block.splitlines() if x.startswith(f"  {folder.name}/"))
        described = set(re.findall(r"(\w+)\.py", line))
        missing = described - {p.stem for p in folder.glob("*.py")}
        assert not missing, f"README names {folder.name}/{sorted(missing)}, which do not exist"
