"""The package layering of ``bnn_nested``, read from the source (docs/ARCHITECTURE.md, "Layers").

Every ``import`` statement counts, at module level and inside functions. A package may import only
from packages on lower layers (or from itself); the module graph has no cycle; a function-level
import is allowed only where it carries a ``# deferred:`` comment saying why (the command line keeps
torch out of ``--help``; heavy third-party libraries used by one code path).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bnn_nested"

#: Lower layers first; a package may import from its own layer only within itself.
LAYERS: list[set[str]] = [
    {"io", "progress", "threads"},
    {"safeyaml"},
    {"config", "registry"},
    {"distributions"},
    {"nn"},
    {"nest"},
    {"models"},
    {"cost"},
    {"data", "regularization"},
    {"evaluation"},
    {"training"},
    {"deploy"},
    {"runs"},
    {"cli"},
    {"__main__"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path, name: str):
    """``(target, lineno, inside_function, source_lines)`` for every bnn_nested import."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(s) for s in ast.walk(node) if s is not node)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        src = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        for t in targets:
            yield t, node.lineno, id(node) in in_function, src


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str, str]]]:
    mods = _modules()

    def resolve(t: str) -> str | None:
        while t and t not in mods:
            t = t.rsplit(".", 1)[0] if "." in t else ""
        return t or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    inner: list[tuple[str, int, str, str]] = []
    for m, path in mods.items():
        for t, line, in_fn, src in _imports(path, m):
            if in_fn and t.split(".")[0] != "bnn_nested":
                inner.append((m, line, t, src))
            if not t.startswith("bnn_nested"):
                continue
            r = resolve(t)
            if r is None or r == m:
                continue
            graph[m].add(r)
            if in_fn:
                inner.append((m, line, r, src))
    return graph, inner


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bnn_nested"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_every_package_has_a_layer():
    missing = {_package(m) for m in _modules()} - set(LAYER) - {"bnn_nested"}
    assert not missing, f"packages without a layer in LAYERS: {sorted(missing)}"


def test_module_graph_has_no_cycle():
    graph, _ = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_packages_import_only_lower_layers():
    graph, _ = _graph()
    bad = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if _package(m) != "bnn_nested"
        and _package(m) != _package(t)
        and LAYER[_package(t)] >= LAYER[_package(m)]
    )
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_function_level_imports_say_why():
    _, inner = _graph()
    silent = sorted(
        f"{m}:{line} imports {t}" for m, line, t, src in inner if "# deferred:" not in src
    )
    assert not silent, "function-level imports without a '# deferred:' reason:\n" + "\n".join(
        silent
    )


def test_only_the_command_line_defers_our_own_modules():
    _, inner = _graph()
    ours = sorted(
        f"{m}:{line} imports {t}"
        for m, line, t, _ in inner
        if t.startswith("bnn_nested") and _package(m) != "cli"
    )
    assert not ours, "\n".join(ours)


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks above can fail: a planted cycle and a planted upward edge are caught."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph, _ = _graph()
    assert "bnn_nested.deploy.timing" in graph  # the graph is read from the real tree
    assert LAYER["evaluation"] < LAYER["deploy"]


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["train", "--help"],
        ["evaluate", "/nonexistent", "--samples", "0"],
        ["evaluate", "/nonexistent", "--scores", "bogus"],
        ["select", "/nonexistent", "--max-ece", "2"],
        ["train", "--config", "tests/data/not-there.yaml", "--out", "/nonexistent/x"],
        ["evaluate", "/nonexistent"],  # valid arguments: the command runs, so torch is imported
    ],
)
def test_help_and_usage_errors_do_not_import_torch(command):
    import subprocess
    import sys

    code = (
        "import sys; from bnn_nested.cli.main import main\n"
        f"try: main({command!r})\n"
        "except SystemExit: pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    runs = command == ["evaluate", "/nonexistent"]
    assert out.stdout.strip().splitlines()[-1] == str(runs)
