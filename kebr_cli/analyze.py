"""`kebr analyze RUN_DIR`: figures of a pretraining, evaluation or ablation run (kebr_core.recipes.analyze)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from kebr_cli.app import app, console, err_console, fail, user_errors
from kebr_core.errors import KebrError
from kebr_core.config import REPORTERS


class PlotFormat(str, Enum):
    png = "png"
    pdf = "pdf"
    svg = "svg"


@app.command()
def analyze(
    run_dirs: list[Path] = typer.Argument(..., metavar="run_dir", help="A pretraining run, an evaluation run (kebr eval --out), an ablation, a kebr compare output or a search; several runs of one kind are overlaid (one colour per run, --out required)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the figures, index.md and, for an ablation, balance.csv (default: RUN_DIR/plots)."),
    formats: list[PlotFormat] = typer.Option([PlotFormat.png], "--format", "-f", help="File format of the figures; repeat for several (e.g. -f png -f pdf)."),
    report_to: list[str] = typer.Option([], "--report-to", metavar="tensorboard", help="Also add the figures to TensorBoard, in OUT/tensorboard (needs pip install kebr\\[tensorboard])."),
) -> None:
    """Plot a run: F1/MAE vs g, modality balance (c_a, c_v, |θa − θv|) with and without MCC, PCA of the
    fused test representations, and per-epoch training curves — whichever the directory allows.
    `kebr analyze runs/a runs/b -o plots/` overlays two runs where a figure can hold both."""
    from kebr_core.recipes.analyze import analyze as run_analysis  # matplotlib loads only for this command

    with user_errors():
        unknown = [name for name in report_to if name not in REPORTERS]
        if unknown:
            raise KebrError(f"--report-to must name only {', '.join(REPORTERS)}, not '{unknown[0]}'.")
        report = run_analysis(run_dirs, out, formats=tuple(f.value for f in formats), report_to=report_to)
    for name, reason in report.skipped.items():
        err_console.print(f"[yellow]skipped[/] {name}: {reason}", highlight=False, soft_wrap=True)
    if not report.written:
        raise fail(f"Nothing could be plotted from {report.kind} directory {', '.join(map(str, run_dirs))}; see the reasons above.")
    console.print(f"[bold]{report.kind}[/] directory {', '.join(map(str, run_dirs))}: wrote {len(report.plots)} plot(s)",
                  highlight=False)
    for path in report.written:
        console.print(f"  {path}", highlight=False, soft_wrap=True)
    console.print(f"  {report.index}  (each figure with a one-line caption)", highlight=False, soft_wrap=True)
    for path in report.tables:
        console.print(f"  {path}  (c_a, c_v, |θa − θv| at the end of each configuration)", highlight=False, soft_wrap=True)
