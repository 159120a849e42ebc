"""`kebr compare RUN_A RUN_B [RUN_C …]`: paired differences of each run against the first
(kebr_core.recipes.compare)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from kebr_cli.app import app, console, number, user_errors
from kebr_cli.tables import comparison_table
from kebr_core import runs


@app.command()
def compare(
    run_dirs: list[str] = typer.Argument(..., help="Evaluation runs, ablation directories (every finished configuration) or one configuration of an ablation as ABLATION_DIR:NAME (e.g. runs/ablate:C4). The first is the reference; each other is compared with it."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for compare.json and compare.csv (default: compare-A-vs-B… beside the first run)."),
    confidence: float = typer.Option(0.95, "--confidence", parser=number(0, 1, low_open=True, high_open=True), help="Confidence level of the intervals."),
    force: bool = typer.Option(False, "--force", help="Replace compare.json/compare.csv in --out even when they hold another comparison."),
    as_json: bool = typer.Option(False, "--json", help="Print compare.json (every metric's means, paired difference, interval and p) as one JSON document on stdout instead of the tables."),
) -> None:
    """Paired differences between configurations run on the same data and seeds: per metric, the means,
    Δ (B − A) with its interval over pretraining seeds (over fine-tuning seeds when there is one
    pretraining seed) and an exact sign-flip p. Refuses runs on other data or other seeds."""
    from kebr_core.recipes.compare import compare as run_compare

    with user_errors():
        result = run_compare(run_dirs, out, confidence=confidence, force=force)
    if as_json:
        typer.echo(json.dumps({"out": str(result.out)} | json.loads((result.out / runs.COMPARE_JSON).read_text()), indent=2))
        return
    dataset = Path(str(result.inputs[0].grid.data.get("store") or "")).name
    for comparison in result.comparisons:
        console.print(comparison_table(comparison, dataset))
    console.print(f"results: [bold]{result.files[0]}[/], {result.files[1]}", highlight=False, soft_wrap=True)
