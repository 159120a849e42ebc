"""The shape of the code base: module sizes, the biggest functions, cross-module private imports.

Used to measure a refactor before and after (issue #16). Counts lines of every module in kebr_core/ and
kebr_cli/, the length and parameter count of every function, and each `from kebr_… import _name` (absolute
or relative) that reaches into another module's private names. Pair it with the `duplicates` tool for
repeated blocks.

    python bench/code_shape.py            # this checkout
    python bench/code_shape.py /other/checkout --top 12
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

LIMIT_LINES = 400  # a kebr_core module above this must say in its docstring why it is one cohesive thing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=Path(__file__).resolve().parents[1], type=Path)
    parser.add_argument("--top", type=int, default=8, help="how many of the largest modules and functions to list")
    args = parser.parse_args()
    root: Path = args.root
    files = sorted(p for pkg in ("kebr_core", "kebr_cli") for p in (root / pkg).rglob("*.py"))
    sizes, funcs, private = [], [], []
    for path in files:
        source = path.read_text()
        rel = path.relative_to(root)
        sizes.append((len(source.splitlines()), str(rel)))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n_params = len(node.args.posonlyargs) + len(node.args.args) + len(node.args.kwonlyargs)
                funcs.append((node.end_lineno - node.lineno + 1, n_params, f"{rel}:{node.lineno} {node.name}"))
            elif isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("kebr")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{rel}: from {'.' * node.level}{node.module or ''} import {alias.name}")
    sizes.sort(reverse=True)
    funcs.sort(reverse=True)
    over = [f for s, f in sizes if s > LIMIT_LINES]
    print(f"modules: {len(files)}, lines: {sum(s for s, _ in sizes)}, over {LIMIT_LINES} lines: {len(over)}")
    for s, f in sizes[: args.top]:
        print(f"  {s:5d}  {f}")
    print(f"functions: {len(funcs)}, over 80 lines: {sum(n > 80 for n, _, _ in funcs)}, "
          f"over 15 parameters: {sum(p > 15 for _, p, _ in funcs)}")
    for n, p, f in funcs[: args.top]:
        print(f"  {n:4d} lines {p:3d} params  {f}")
    print(f"cross-module private imports: {len(private)}")
    for line in private:
        print(f"  {line}")


if __name__ == "__main__":
    main()
