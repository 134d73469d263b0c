"""No import cycles among the project's own modules.

A cycle (even one hidden in a function-level import) means two modules cannot be understood, tested or moved
apart; the project promises none. The graph is read from the source with `ast` (nothing is imported), over
fgresq_sdk/, train/ (installed as fgresq_sdk.train) and export/ (fgresq_sdk.export). `from pkg import name`
is an edge to the submodule `pkg.name` when there is one, otherwise to `pkg` itself.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fgresq_sdk": ROOT / "fgresq_sdk", "fgresq_sdk.train": ROOT / "train",
            "fgresq_sdk.export": ROOT / "export"}
# How the source folders are spelled inside imports when run from a checkout (train/, export/ are top level).
ALIASES = {"train": "fgresq_sdk.train", "export": "fgresq_sdk.export"}


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _canonical(name: str) -> str:
    head, _, rest = name.partition(".")
    return ALIASES[head] + ("." + rest if rest else "") if head in ALIASES else name


def import_edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [_canonical(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = _canonical(node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            edges[mod].update(t for t in targets if t in mods and t != mod)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_checker_finds_a_cycle_and_a_clean_graph():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "fgresq_sdk"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from fgresq_sdk.a import f\n")
    monkeypatch.setitem(PACKAGES, "fgresq_sdk", pkg)
    monkeypatch.delitem(PACKAGES, "fgresq_sdk.train")
    monkeypatch.delitem(PACKAGES, "fgresq_sdk.export")
    assert cycles(import_edges(project_modules())) == [["fgresq_sdk.a", "fgresq_sdk.b"]]


def test_no_import_cycles_in_the_project():
    mods = project_modules()
    assert len(mods) > 40  # the walk found the three source trees
    found = cycles(import_edges(mods))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
