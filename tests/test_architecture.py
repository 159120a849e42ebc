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
