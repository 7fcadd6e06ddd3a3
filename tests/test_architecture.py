"""The package's shape: no import cycles, folders are layers that only import downwards, no god files.

Every ``import`` statement counts, at module level or inside a function: a lazy import is still
a dependency. The layer order is the one README's "Architecture" section describes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pruning_hf"
#: lowest first; a module may import from its own layer or any layer before it
LAYERS = ("utils", "sparsity", "data", "models", "methods", "config", "engine", "evaluation", "hf",
          "workflows", "cli")
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules imported by one module (``from .x import y`` resolves to ``x.y`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # "pruning_hf.x.y" where y is a name in module x
                target = target.rpartition(".")[0]
            if target.startswith("pruning_hf") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None. Package ``__init__`` re-exports are edges too."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = _graph()
    # the package root re-exports the public API: importing it from inside would be a cycle by design
    inner = {name: {t for t in targets if t != "pruning_hf"} for name, targets in graph.items() if name != "pruning_hf"}
    assert not any("pruning_hf" in targets for targets in graph.values() if targets is not graph["pruning_hf"]), \
        "modules must not import the package root (it re-exports the public API)"
    assert _cycle(inner) is None, f"import cycle: {' -> '.join(_cycle(inner))}"


def test_every_module_belongs_to_a_layer():
    loose = sorted(name for name in _modules() if name != "pruning_hf" and _layer(name) is None)
    assert loose == [], f"modules outside the layer folders: {loose}"


def test_imports_only_point_down():
    upward = []
    for name, targets in _graph().items():
        own = _layer(name)
        for target in targets:
            other = _layer(target)
            if own is not None and other is not None and other > own:
                upward.append(f"{name} ({LAYERS[own]}) imports {target} ({LAYERS[other]})")
    assert upward == [], "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_engine_imports_no_method():
    graph = _graph()
    offenders = sorted(f"{name} -> {target}" for name, targets in graph.items() if name.startswith("pruning_hf.engine")
                       for target in targets if target.startswith("pruning_hf.methods"))
    assert offenders == [], f"the engine must not know methods' maths: {offenders}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_god_files(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines (at most {MAX_LINES}); split it"
