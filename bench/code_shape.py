"""The shape of the code base: module sizes, the biggest functions, cross-module private imports.

Used to measure a refactor before and after (issues #16, #31). Counts lines of every module in kebr_core/ and
kebr_cli/, the length and parameter count of every function, and each `from kebr_… import _name` (absolute
or relative) that reaches into another module's private names. Pair it with the `duplicates` tool for
repeated blocks.

Also (#31): the parameters of each training command's function as written in the source (a command whose
options are generated from the settings' declaration takes them as **settings), and the places that name
a setting with an option: the top-level statements (a class's statements each count) of kebr_cli/,
kebr_core/config.py, runs.py and run_identity.py that mention its field, flag or option constant, for a sample of
settings; that is what adding such a setting touches. A command's help-order list (`*_ORDER`, which keeps
today's order of --help; a setting it does not list goes after the last one listed) is counted apart: a
new setting needs no entry there.

    python bench/code_shape.py            # this checkout
    python bench/code_shape.py /other/checkout --top 12
"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

LIMIT_LINES = 400  # a kebr_core module above this must say in its docstring why it is one cohesive thing
COMMANDS = {"kebr_cli/train.py": ("pretrain", "eval_"), "kebr_cli/ablate.py": ("ablate",), "kebr_cli/tune.py": ("tune",)}
# settings whose flag, parameter and option constant follow from the field's name (--random-word, random_word,
# RandomWord): the places naming them are found by name in any version of the code
SAMPLE_SETTINGS = ("checkpoint_every_steps", "text_cache_dtype", "modality_dropout", "random_word", "head_hidden",
                   "max_parameters", "checkpoint_every_minutes", "dropped_modality")


def places(root: Path, name: str) -> list[str]:
    """The statements naming setting `name` (as name, --flag or CamelCase constant) where options live."""
    camel = "".join(part.title() for part in name.split("_"))
    pattern = re.compile(rf"(?<![\w-])({name}|--{name.replace('_', '-')}|{camel})(?![\w-])")
    core = [root / "kebr_core" / name for name in ("config.py", "runs.py", "run_identity.py")]
    files = sorted((root / "kebr_cli").glob("*.py")) + [path for path in core if path.is_file()]
    found = []
    for path in files:
        source = path.read_text()
        for node in ast.parse(source).body:
            statements = node.body if isinstance(node, ast.ClassDef) else [node]
            for statement in statements:
                segment = ast.get_source_segment(source, statement) or ""
                if pattern.search(segment):
                    order = isinstance(statement, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id.endswith("_ORDER") for t in statement.targets)
                    found.append(f"{path.relative_to(root)}:{statement.lineno}" + (" (order)" if order else ""))
    return found


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
    print("parameters of the training commands' functions (as written):")
    for rel, names in COMMANDS.items():
        tree = ast.parse((root / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in names:
                n = len(node.args.args) + len(node.args.kwonlyargs) + (node.args.kwarg is not None)
                print(f"  {n:3d}  {rel}:{node.name}" + ("  (+ **settings)" if node.args.kwarg else ""))
    counts = {name: places(root, name) for name in SAMPLE_SETTINGS}
    mean = sum(len([w for w in where if not w.endswith("(order)")]) for where in counts.values()) / len(counts)
    orders = sum(len([w for w in where if w.endswith("(order)")]) for where in counts.values()) / len(counts)
    print(f"places naming a setting with an option (mean of {len(counts)}): {mean:.1f}, "
          f"and {orders:.1f} help-order lists")
    for name, where in counts.items():
        print(f"  {len(where):3d}  {name}: {', '.join(where)}")


if __name__ == "__main__":
    main()
