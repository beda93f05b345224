"""The package's import structure: no import cycle between rsseg's modules, and every module importable alone.

The static check reads every ``import`` of every module, also those inside functions (a lazy import only
hides a cycle until someone calls the function); a package's ``__init__`` importing its own modules is the
one allowed back edge (Python runs it first). The dynamic check imports each module in a fresh state of
``rsseg`` (third-party libraries stay loaded: it is rsseg's own order of initialisation being tested).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rsseg_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((REPO / "rsseg").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the rsseg modules it imports (``from pkg import name`` counts as ``pkg.name`` when that is a
    module, else as ``pkg``)."""

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names if alias.name.startswith("rsseg")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 packages
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                if base.startswith("rsseg"):
                    full = {f"{base}.{alias.name}" for alias in node.names}
                    targets |= {name if name in modules else known(base) for name in full}
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), ignoring the edges from a
    package's ``__init__`` to its own submodules."""
    edges = {v: {w for w in ws if not w.startswith(v + ".")} for v, ws in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "p": {"p.x"}, "p.x": {"p"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_between_rsseg_modules():
    graph = import_graph(rsseg_modules())
    assert "rsseg.lightning_cli" in graph["rsseg.cli"] and "rsseg.lightning_cli" in graph["rsseg.bench.runs"]
    assert cycles(graph) == []


def test_every_module_imports_alone():
    names = sorted(rsseg_modules())
    script = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'rsseg' or m.startswith('rsseg.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc(limit=-1).strip())\n"
        "print('\\n'.join(failed))\nsys.exit(bool(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


# The layers (docs/architecture.md): what each part of the package may import from rsseg and from Lightning.
MAY_NOT_IMPORT = {
    "rsseg.models": ("rsseg.data", "rsseg.tasks", "rsseg.metrics", "rsseg.bench", "rsseg.cli", "rsseg.lightning_cli",
                     "lightning", "pytorch_lightning"),
    "rsseg.metrics": ("rsseg.data", "rsseg.tasks", "rsseg.models", "rsseg.bench", "rsseg.cli", "rsseg.lightning_cli",
                      "lightning", "pytorch_lightning"),
    "rsseg.data": ("rsseg.tasks", "rsseg.models", "rsseg.bench", "rsseg.cli", "rsseg.lightning_cli"),
    "rsseg.tasks": ("rsseg.bench", "rsseg.cli", "rsseg.lightning_cli"),
    "rsseg.bench": ("rsseg.cli",),
}


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute imports; rsseg uses no relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_layers_import_only_downwards():
    """Models are plain nn.Modules and metrics plain torchmetrics (no Lightning, no data knowledge); data never
    reaches up into tasks or models; nothing below the command line imports it."""
    violations = []
    for module, path in rsseg_modules().items():
        for layer, forbidden in MAY_NOT_IMPORT.items():
            if module == layer or module.startswith(layer + "."):
                violations += [f"{module} imports {name}" for name in sorted(imported_names(path))
                               if any(name == f or name.startswith(f + ".") for f in forbidden)]
    assert violations == []
