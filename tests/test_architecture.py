"""The house rules a reader relies on: imports run one way, and files and functions stay small.

- ``bench.core`` imports nothing else of the project; ``tasks`` and ``saes`` import only ``bench.core`` (and
  themselves); so there is no cycle between ``bench``, ``tasks`` and ``saes``.
- No file over 400 lines, no function over 60 lines (``tests``, ``.venv`` and results excepted).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "saes", "tasks", "benchmarks")


def _modules():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            yield path, ".".join(path.relative_to(REPO).with_suffix("").parts)


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _in(name: str, pkg: str) -> bool:
    return name == pkg or name.startswith(pkg + ".")


def _allowed(importer: str, imported: str) -> bool:
    top, own = imported.split(".")[0], importer.split(".")[0]
    if top not in PACKAGES:
        return True
    if _in(importer, "bench.core"):
        return _in(imported, "bench.core")
    if own in ("tasks", "saes"):
        return _in(imported, "bench.core") or top == own
    if own == "bench":
        return top != "benchmarks" or importer == "bench.cli"
    return True


def test_imports_run_one_way():
    bad = [
        f"{name} imports {imp}"
        for path, name in _modules()
        for imp in _imports(ast.parse(path.read_text()))
        if not _allowed(name, imp)
    ]
    assert not bad, "\n".join(bad)


def _module_level_graph() -> dict[str, set[str]]:
    """Module → project modules it imports at module level (a package's ``__init__`` is the package; a
    submodule's implicit import of its own parent package is not an edge: registries import their parts)."""
    names = {}
    for path, name in _modules():
        names[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        edges = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            edges |= {m for m in mods if m in names and m != name and not _in(name, m)}
        graph[name] = edges
    return graph


def test_no_import_cycle_at_module_level():
    graph, state, cycles = _module_level_graph(), {}, []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(" → ".join(stack[stack.index(v) :] + [v]))
            elif v not in state:
                visit(v, stack + [v])
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_files_and_functions_stay_small():
    long_files, long_funcs = [], []
    for path, name in _modules():
        text = path.read_text()
        if text.count("\n") > 400:
            long_files.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long_funcs.append(f"{name}.{node.name}: {n} lines")
    assert not long_files and not long_funcs, "\n".join(long_files + long_funcs)


@pytest.mark.parametrize("pkg", ["tasks", "saes"])
def test_parts_load_without_the_harness(pkg):
    """A fresh interpreter importing tasks or saes loads no harness module (only bench.core)."""
    import subprocess
    import sys

    code = (
        f"import sys, {pkg}, pkgutil, importlib\n"
        f"[importlib.import_module(m.name) for m in pkgutil.walk_packages({pkg}.__path__, '{pkg}.')]\n"
        "bad = sorted(m for m in sys.modules if m.startswith('bench.') and not m.startswith('bench.core'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"{pkg} pulls in {out.stdout.strip()}"
