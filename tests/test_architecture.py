"""The layout's rules, read from the code itself (docs/architecture.md draws the same layers).

A module imports only its own layer and the layers below it; no import circle; at most a handful of
imports of the package's own modules inside functions outside the entry points; no module over 450
lines; no module name used twice (outside ``commands/``, whose files are named after their verbs);
one loader reads model files.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geotrainr"

#: bottom to top; a module may import its own layer and those below. The first matching prefix decides.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("geotrainr.version", "geotrainr.errors", "geotrainr.files", "geotrainr.geo",
                    "geotrainr.countries", "geotrainr.gazetteer", "geotrainr.progress", "geotrainr.metrics",
                    "geotrainr.config_files", "geotrainr.runs")),
    ("images", ("geotrainr.preprocess", "geotrainr.augment")),
    ("data", ("geotrainr.data",)),
    ("model", ("geotrainr.artifact", "geotrainr.models", "geotrainr.geocells", "geotrainr.tasks")),
    ("loading", ("geotrainr.loading", "geotrainr.onnx_runtime")),
    ("use", ("geotrainr.predictions", "geotrainr.locator", "geotrainr.listing", "geotrainr.multiview",
             "geotrainr.report", "geotrainr.benchmarking", "geotrainr.explain", "geotrainr.plots",
             "geotrainr.figures", "geotrainr.maps", "geotrainr.hub", "geotrainr.serve", "geotrainr.ablation",
             "geotrainr.lightning_cli", "geotrainr.evaluation")),
    ("entry", ("geotrainr.cli", "geotrainr.commands", "geotrainr.__main__", "geotrainr.web", "geotrainr")),
]
ENTRY_POINTS = ("geotrainr", "geotrainr.cli", "geotrainr.__main__", "geotrainr.commands")
MAX_LINES = 450
MAX_FUNCTION_LEVEL_IMPORTS = 10


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/architecture.md)")


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    """The package's own modules an import statement names (``from a import b`` names ``a.b`` if a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
    out = []
    for name in names:
        if name != "geotrainr" and not name.startswith("geotrainr."):
            continue
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name != module and name not in out:
            out.append(name)
    return out


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """Module-level imports per module, and function-level ones as (module, target, line)."""
    top: dict[str, set[str]] = defaultdict(set)
    inner: list[tuple[str, str, int]] = []
    for module, path in MODULES.items():
        is_package = path.name == "__init__.py"

        class Visitor(ast.NodeVisitor):
            depth = 0

            def visit_FunctionDef(self, node):
                self.depth += 1
                self.generic_visit(node)
                self.depth -= 1

            visit_AsyncFunctionDef = visit_FunctionDef

            def visit_If(self, node):
                if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                    return  # annotations only: never run
                self.generic_visit(node)

            def visit_Import(self, node):
                for target in _targets(module, node, is_package):
                    if self.depth:
                        inner.append((module, target, node.lineno))
                    else:
                        top[module].add(target)

            visit_ImportFrom = visit_Import

        Visitor().visit(ast.parse(path.read_text(), str(path)))
    return top, inner


TOP, INNER = _imports()


def _is_entry(module: str) -> bool:
    """The command line and the packages' ``__init__`` facades (which may import lazily to keep ``--help`` fast)."""
    return (any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS[1:]) or module == "geotrainr"
            or MODULES[module].name == "__init__.py")


def test_every_module_has_a_layer_and_imports_only_downwards():
    wrong = []
    for module in MODULES:
        for target in sorted(TOP[module]) + [t for m, t, _ in INNER if m == module]:
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_import_circle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in TOP[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not circles, circles


def test_few_function_level_imports_of_own_modules():
    inner = sorted({(m, t, line) for m, t, line in INNER if not _is_entry(m)})
    listing = "\n".join(f"{m}:{line} imports {t}" for m, t, line in inner)
    assert len(inner) <= MAX_FUNCTION_LEVEL_IMPORTS, f"{len(inner)} function-level imports:\n{listing}"


def test_no_module_imports_the_package_api():
    wrong = [m for m in MODULES if layer_of(m) < len(LAYERS) - 1 and "geotrainr" in TOP[m] | {t for n, t, _ in INNER if n == m}]
    assert not wrong, f"import geotrainr.version (or the module itself) instead of the package root: {wrong}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines (split it by concept)"


def test_module_names_are_unique():
    seen = defaultdict(list)
    for module, path in MODULES.items():
        if path.name != "__init__.py" and ".commands." not in module:
            seen[path.stem].append(module)
    assert not {k: v for k, v in seen.items() if len(v) > 1}


def test_one_loader_reads_model_files():
    readers = []
    for module, path in MODULES.items():
        text = path.read_text()
        if ("torch.load(" in text or "safe_open(" in text or "load_file(" in text) and not module.startswith(
                "geotrainr.artifact"):
            readers.append(module)
    assert not readers, f"model files are read by geotrainr.artifact only: {readers}"


def layer_graph() -> dict[str, set[str]]:
    """Which layer imports which (from the modules' actual imports)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target in TOP[module] | {t for m, t, _ in INNER if m == module}:
            a, b = LAYERS[layer_of(module)][0], LAYERS[layer_of(target)][0]
            if a != b:
                edges[a].add(b)
    return edges


def render_diagram() -> str:
    """The Mermaid picture of docs/architecture.md: the layers, top to bottom, and the imports between them."""
    lines = ["```mermaid", "flowchart TD"]
    for name, prefixes in reversed(LAYERS):
        shown = sorted(p.removeprefix("geotrainr.") if p != "geotrainr" else "geotrainr (package API)" for p in prefixes)
        lines.append(f'    {name}["<b>{name}</b><br/>{", ".join(shown)}"]')
    edges = layer_graph()
    for name, _ in reversed(LAYERS):
        for target in sorted(edges.get(name, ()), key=lambda t: -[n for n, _ in LAYERS].index(t)):
            lines.append(f"    {name} --> {target}")
    lines.append("```")
    return "\n".join(lines)


def test_architecture_page_draws_the_code():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    assert render_diagram() in page, ("docs/architecture.md's picture differs from the code; regenerate it with "
                                      "`python tests/test_architecture.py --write`")


if __name__ == "__main__":  # python tests/test_architecture.py [--write]: print (or redraw docs/architecture.md's) picture
    import re
    import sys

    if "--write" in sys.argv:
        page = PACKAGE.parent / "docs" / "architecture.md"
        page.write_text(re.sub(r"```mermaid\n.*?```", lambda _: render_diagram(), page.read_text(), count=1, flags=re.S))
    else:
        print(render_diagram())
