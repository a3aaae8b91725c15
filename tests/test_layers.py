"""The import structure of ``pipeline/``, read from every module's source (``ast``: no
module is imported). Imports inside functions count; imports under ``if TYPE_CHECKING:``
(types only, nothing runs) do not.

- no import circle between modules;
- no two packages (a subpackage, or a top-level module) that import each other;
- every import points down the layers of :data:`LAYERS` (commands → user loops → workflows →
  configuration → training → applications → adapters → the pure engine → base), or stays within its own layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline"

# highest first; a package (first name under pipeline/) imports only its own layer or lower
LAYERS = [
    ("commands", {"cli", "__main__"}),
    # users' own training loops: the Recorder registers runs as a sweep's driver does
    # (workflows.sync), the framework callbacks build on it
    ("user loops", {"record", "integrations"}),
    ("workflows", {"workflows", "ray_cluster", "seams"}),
    ("configuration", {"config", "yamlload"}),
    ("training", {"training"}),
    ("applications", {"apps", "results", "spectra", "plots"}),
    ("adapters", {"storage", "tracking", "runtime"}),
    ("engine", {"koopman"}),   # pure: imports nothing of pipeline but errors
    ("base", {"errors", "console", "outputs", "pathsafety", "secrets"}),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _targets(mods, name: str, node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = name.split(".")
        if mods[name].name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module
    return [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of pipeline it imports}`` (a package import counts as its __init__)."""
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.If) and getattr(n.test, "id", getattr(n.test, "attr", None)) == "TYPE_CHECKING":
                typing_only.update(id(x) for b in n.body for x in ast.walk(b))
        for n in ast.walk(tree):
            if not isinstance(n, (ast.Import, ast.ImportFrom)) or id(n) in typing_only:
                continue
            for t in _targets(mods, name, n):
                if not (t or "").startswith("pipeline"):
                    continue
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t != name and t != "pipeline":
                    edges[name].add(t)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_graph_is_read():
    edges = import_graph()
    # the reader sees module-level and in-function imports alike
    assert "pipeline.koopman.estimator" in edges["pipeline.workflows.analyze"] or "pipeline.koopman" in edges["pipeline.workflows.analyze"]
    assert "pipeline.storage.store" in edges["pipeline.storage.health"]
    assert "pipeline.training.runner" in edges["pipeline.ray_cluster"]   # imported inside a function


def test_a_circle_is_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_no_two_way_package_pair():
    pairs: dict[tuple[str, str], list[str]] = {}
    for a, bs in import_graph().items():
        for b in bs:
            if package(a) != package(b):
                pairs.setdefault((package(a), package(b)), []).append(f"{a} -> {b}")
    both = sorted({tuple(sorted(k)) for k in pairs if (k[1], k[0]) in pairs})
    assert both == [], [(p, pairs[p], pairs[p[::-1]]) for p in both]


def test_imports_point_down_the_layers():
    rank = {pkg: i for i, (_, pkgs) in enumerate(LAYERS) for pkg in pkgs}
    packages = {package(m) for m in modules()} - {"pipeline"}
    assert packages <= set(rank), f"packages on no layer: {sorted(packages - set(rank))}"
    up = [f"{a} -> {b}" for a, bs in import_graph().items() for b in bs
          if package(a) in rank and package(b) in rank and rank[package(b)] < rank[package(a)]]
    assert up == []
