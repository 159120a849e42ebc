"""`kebr table RUN… --format latex|markdown|csv`: the paper's Table 1 / Table 4 as text for a paper
(kebr_core.paper_table)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from kebr_cli.app import app, err_console, user_errors


@app.command()
def table(
    inputs: list[str] = typer.Argument(..., metavar="RUN...", help="Evaluation runs (kebr eval --out), results-table.csv files, or ablation folders (kebr ablate --out; Table 4); RUN=LABEL names its rows (default: KEBR, or the configuration)."),
    fmt: str = typer.Option("latex", "--format", "-f", metavar="latex|markdown|csv", help="latex: a booktabs table (\\usepackage{booktabs}; amssymb for Table 4's ✓); markdown: a pipe table with a pandoc caption; csv: means, stds and the best per column."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table to this file (default: print it)."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it exists."),
) -> None:
    """The paper's result tables: a row per run (Table 1: a column group per dataset) or per ablation
    configuration (Table 4), mean ± std with the seeds in the caption, the best of each column in bold."""
    from kebr_core.paper_table import paper_table

    with user_errors():
        text = paper_table(inputs, fmt, out, force=force)
    if out is None:
        typer.echo(text, nl=False)
    else:
        err_console.print(f"wrote {out}", highlight=False, soft_wrap=True)
