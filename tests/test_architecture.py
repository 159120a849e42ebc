"""The house rules that keep the code navigable (issue #16): packages meet through public names, and a
kebr_core module stays small enough to read unless it is one cohesive thing that says so."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kebr_core", "kebr_cli")
MAX_CORE_LINES = 400

# (importing file, imported module, name): known offenders, each with the change that removes it.
ALLOWED_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()

# kebr_core modules over MAX_CORE_LINES that are being split, each with the change that shrinks it.
ALLOWED_LONG_MODULES: set[str] = set()


def package_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    """kebr_core/extract/pipeline.py -> kebr_core.extract.pipeline; a package's __init__.py -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_module(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module of `from <module> import ...`, relative imports (`from .x`, `from ..x`) resolved."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a module's relative imports start from its package
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_names_imported_across_modules() -> None:
    offenders = set()
    for path in package_files(*PACKAGES):
        here = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = imported_module(node, path)
            if source == here or not source.startswith(PACKAGES):
                continue
            private = [a.name for a in node.names if is_private(a.name) or any(map(is_private, source.split(".")))]
            offenders |= {(path.relative_to(ROOT).as_posix(), source, name) for name in private}
    new = sorted(offenders - ALLOWED_PRIVATE_IMPORTS)
    assert not new, "private names imported across modules (make them public in their module, or move them): " + \
        "; ".join(f"{file}: from {source} import {name}" for file, source, name in new)


def test_core_modules_stay_small() -> None:
    too_long = []
    for path in package_files("kebr_core"):
        source = path.read_text(encoding="utf-8")
        lines = len(source.splitlines())
        rel = path.relative_to(ROOT).as_posix()
        if lines <= MAX_CORE_LINES or rel in ALLOWED_LONG_MODULES:
            continue
        if "cohesive" not in (ast.get_docstring(ast.parse(source)) or ""):
            too_long.append(f"{rel} ({lines} lines)")
    assert not too_long, (f"kebr_core modules over {MAX_CORE_LINES} lines: {', '.join(too_long)}; split them by job, "
                          "or say in the module docstring why it is one cohesive thing")


# ───────────────────────── the layers: imports go down, no cycles (issue #31, item 4) ─────────────────────────

# What kebr_core/modules/ may import besides torch, the standard library and its siblings: the user-error type,
# a leaf that imports only the standard library (checked below), so that a bad size is one sentence there too.
MODULES_MAY_IMPORT = ("kebr_core.errors",)
# What kebr_core never imports: the command line and its rendering.
CLI_ONLY = ("kebr_cli", "typer", "rich", "click")
# Import cycles being removed, each with the change that removes it.
ALLOWED_CYCLES: list[list[str]] = []


def import_graph(*packages: str) -> dict[str, set[str]]:
    """module → the modules it imports (kebr's own and third-party, by their full dotted name as written),
    every import of the file counted: at the top, inside a function (a lazy import is still an arrow) and
    under TYPE_CHECKING. `from kebr_core import runs` is an arrow to kebr_core.runs."""
    files = package_files(*packages)
    known = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        edges = graph.setdefault(module_name(path), set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                source = imported_module(node, path)
                edges |= {f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself): each is
    at least one import cycle (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root] & graph.keys())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child] & graph.keys()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    cycles.append(sorted(component))
    return cycles


def within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Imports against the layers of docs/architecture.md (kebr_cli → recipes → kebr_core → modules):
    modules/ imports only torch, the standard library, its siblings and `MODULES_MAY_IMPORT`; kebr_core
    never imports `CLI_ONLY`; nothing below the recipes imports a recipe; the errors leaf imports no kebr."""
    import sys

    wrong = []
    for module, imports in sorted(graph.items()):
        for target in sorted(imports):
            top = target.split(".")[0]
            if within(module, "kebr_core.modules"):
                allowed = (within(target, "torch", "kebr_core.modules", *MODULES_MAY_IMPORT) or target == "__future__"
                           or (top in sys.stdlib_module_names and top not in PACKAGES))
                if not allowed:
                    wrong.append(f"{module} imports {target} (modules/ is torch and its siblings only)")
            if within(module, "kebr_core") and within(target, *CLI_ONLY):
                wrong.append(f"{module} imports {target} (kebr_core never imports the command line)")
            if (within(module, "kebr_core") and not within(module, "kebr_core.recipes")
                    and within(target, "kebr_core.recipes")):
                wrong.append(f"{module} imports {target} (a recipe is above the library it calls)")
            if module in MODULES_MAY_IMPORT and within(target, *PACKAGES):
                wrong.append(f"{module} imports {target} (it is a leaf every layer may import)")
    return wrong


def test_no_import_cycles() -> None:
    cycles = [c for c in import_cycles(import_graph(*PACKAGES)) if c not in ALLOWED_CYCLES]
    assert not cycles, "import cycles (move the shared name down, or pass plain values): " + \
        "; ".join(" ↔ ".join(c) for c in cycles)


def test_imports_go_down_only() -> None:
    wrong = upward_arrows(import_graph(*PACKAGES))
    assert not wrong, "imports against the layers (docs/architecture.md): " + "; ".join(wrong)


def test_the_checks_see_a_cycle_and_an_upward_arrow() -> None:
    """The two checks above on a made-up graph, so that a broken check cannot pass quietly."""
    graph = {"kebr_core.a": {"kebr_core.b", "json"}, "kebr_core.b": {"kebr_core.c"}, "kebr_core.c": {"kebr_core.a"},
             "kebr_core.d": {"kebr_core.d"}, "kebr_core.e": {"kebr_core.a"},
             "kebr_core.modules.m": {"torch", "math", "kebr_core.modules.n", "kebr_core.errors", "kebr_core.config"},
             "kebr_core.modules.n": {"numpy"}, "kebr_core.errors": {"errno"},
             "kebr_core.f": {"typer", "kebr_cli.app"}, "kebr_core.g": {"kebr_core.recipes.finetune"},
             "kebr_core.recipes.finetune": {"kebr_core.g", "rich.console"}}
    assert import_cycles(graph) == [["kebr_core.a", "kebr_core.b", "kebr_core.c"], ["kebr_core.d"],
                                    ["kebr_core.g", "kebr_core.recipes.finetune"]]
    assert upward_arrows(graph) == [
        "kebr_core.f imports kebr_cli.app (kebr_core never imports the command line)",
        "kebr_core.f imports typer (kebr_core never imports the command line)",
        "kebr_core.g imports kebr_core.recipes.finetune (a recipe is above the library it calls)",
        "kebr_core.modules.m imports kebr_core.config (modules/ is torch and its siblings only)",
        "kebr_core.modules.n imports numpy (modules/ is torch and its siblings only)",
        "kebr_core.recipes.finetune imports rich.console (kebr_core never imports the command line)",
    ]
