"""The package layering: no module imports from a layer above its own, and no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import clipforge

ROOT = Path(clipforge.__file__).parent
# Bottom to top. A module may import its own layer and the layers below it.
LAYERS = {
    "errors": 0, "registry": 0, "config": 0, "checkpoint": 0, "outputs": 0, "precision": 0,
    "ranges": 0, "allocator": 0,
    "data": 1, "models": 1,
    "losses": 2, "eval": 2, "index": 2, "adapt": 2,
    "train": 3, "serve": 3,
    "cli": 4, "embed": 4,
}  # fmt: skip


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every clipforge module -> the clipforge modules it imports (lazy imports too)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        mod = _module(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "clipforge":  # from clipforge import checkpoint
                    deps.update(f"clipforge.{a.name}" for a in node.names)
                elif node.module.startswith("clipforge"):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("clipforge"))
        graph[mod] = deps
    return graph


def _layer(mod: str) -> int:
    parts = mod.split(".")
    # `python -m` entry points (clipforge.train for torchrun) sit on top with the CLI.
    if len(parts) == 1 or parts[-1] == "__main__":
        return max(LAYERS.values()) + 1
    return LAYERS[parts[1]]


def test_no_module_imports_from_a_higher_layer():
    graph = _imports()
    unplaced = [m for m in graph if m.split(".")[-1] != "__main__" and m != "clipforge"
                and m.split(".")[1] not in LAYERS]  # fmt: skip
    assert unplaced == []
    upward = sorted(
        f"{m} -> {d}" for m, deps in graph.items() if m != "clipforge"
        for d in deps if _layer(d) > _layer(m)
    )  # fmt: skip
    assert upward == []


def test_packages_import_one_another_without_cycles():
    # Between top-level packages (data, models, eval, ...): a cycle there is a layering bug.
    graph = {m: d for m, d in _imports().items() if not m.endswith("__main__")}
    edges: dict[str, set[str]] = {}
    for m, deps in graph.items():
        a = ".".join(m.split(".")[:2])
        for d in deps:
            b = ".".join(d.split(".")[:2])
            if a != b:
                edges.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for n in edges.get(start, ()):
            if n == goal or (n not in seen and reaches(n, goal, seen | {n})):
                return True
        return False

    cycles = sorted(a for a in edges if reaches(a, a, {a}))
    assert cycles == []
