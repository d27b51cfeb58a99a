"""The layout holds: imports run only downward through the layers, there are no import circles,
and Ray is imported only where Tune is used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = (
    ("search_spaces",),
    ("services", "services.errors", "services.processes", "services.metrics", "services.paths", "services.spec"),
    ("services.training",),
    ("services.tracking",),
    ("services.results",),
    ("services.orchestration",),
    ("services.ops",),
    ("services.cli", "services.bench"),
)
"""Lowest first: a module may import its own layer and those below, never one above."""

RAY_MODULES = {
    "services.orchestration.adaptive",
    "services.orchestration.runner",
    "services.orchestration.schedulers",
    "services.orchestration.packs",
    "services.orchestration.progress",
    "services.orchestration.rungs",
    "services.tracking.callback",
}
"""The modules that import Ray at import time: the Tune side of samplewise."""


def modules() -> dict[str, Path]:
    out = {}
    for package in ("services", "search_spaces"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: dict[str, Path], top_level_only: bool = False) -> set[str]:
    """Project modules ``path`` imports (function-level and TYPE_CHECKING imports included)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "ray":
                found.add("ray")
                continue
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def layer(module: str) -> int:
    best = (-1, -1)  # (length of the longest matching prefix, its layer)
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), i))
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        # a package's __init__ seen from its own modules is the package itself, not an import
        edges[name] = {t for t in imports(path, known) if t in known and not name.startswith(t + ".")} - {name}
    return edges


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in edges.items() for t in targets if layer(t) > layer(m))


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            visit(start, [start])
    return found


def test_imports_run_only_downward():
    assert upward(graph()) == []


def test_there_are_no_import_circles():
    assert circles(graph()) == []


def test_ray_is_imported_only_on_the_tune_side():
    known = modules()
    importing_ray = {name for name, path in known.items() if "ray" in imports(path, known, top_level_only=True)}
    assert importing_ray == RAY_MODULES
    # and importing everything else loads no Ray (nor MLflow): `samplewise lr`, `export` start fast
    others = sorted(n for n in known if n not in RAY_MODULES and not n.startswith(("services.bench", "services.cli")))
    code = (
        "import sys\n"
        + "".join(f"import {n}\n" for n in others)
        + "print(sorted({'ray', 'mlflow'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_the_checks_catch_an_upward_import_and_a_circle():
    edges = graph()
    edges["services.spec"] = edges["services.spec"] | {"services.training.train"}  # spec -> train -> ... -> spec
    assert upward(edges) == ["services.spec imports services.training.train"]
    assert any("services.spec" in c and c[0] == c[-1] for c in circles(edges))
