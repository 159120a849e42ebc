"""`kebr demo`: the whole pipeline on the embedded default, no user data, no downloads (kebr_core.recipes.demo)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from kebr_cli.app import DEVICE_METAVAR, Verbosity, app, console, err_console, user_errors
from kebr_cli.reporter import Reporter
from kebr_cli.threads import Threads, using_threads
from kebr_core.config import DEFAULT_TEXT_MODEL

_STATUS_STYLE = {"done": "green", "skipped": "yellow"}


def _outputs_cell(outputs: dict) -> str:
    """name: path lines; a list of paths shows its count and first entry."""
    lines = []
    for name, value in outputs.items():
        if isinstance(value, list):
            shown = f"{len(value)} files" + (f", e.g. {value[0]}" if value else "")
        else:
            shown = str(value)
        lines.append(f"{name}: {shown}")
    return "\n".join(lines)


def summary_table(steps: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("outputs", overflow="fold")
    for name, record in steps.items():
        status = record["status"]
        shown = f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"
        if status == "skipped":
            shown += f": {record.get('reason', '')}"
        seconds = f"{record['seconds']:.1f} s" if "seconds" in record else "-"
        table.add_row(name, shown, seconds, _outputs_cell(record.get("outputs", {})))
    return table


def training_phrase(training: dict) -> str:
    """How long the model that scored the held-out clips trained, in words."""
    epochs = training["epochs"]
    return (f"{epochs} epoch{'s' if epochs != 1 else ''} ({training['steps']} steps on {training['train_clips']} clips; "
            f"the best validation MAE of {training['epochs_run']} epochs run in {training['seconds']:.0f} s)")


def predictions_table(entries: list[dict], training: dict) -> Table:
    table = Table(title=f"predict: held-out clips, scored by the model fine-tuned on the demo clips for {training_phrase(training)}")
    for col in ("video", "transcript", "score", "sentiment", "polarity", "written as"):
        table.add_column(col, justify="right" if col in ("score", "written as") else "left", overflow="fold")
    for e in entries:
        if e["score"] is None:
            table.add_row(e["video"], e["text"], "-", f"[red]{e['error']}[/]", "-", f"{e['expected_label']:+.1f}")
        else:
            table.add_row(e["video"], e["text"], f"{e['score']:+.2f}", e["label"], e["polarity"], f"{e['expected_label']:+.1f}")
    return table


def _run(out: Path, threads: Optional[int], **options) -> tuple:
    """run_demo under a Reporter (one bar for the steps, one per stage of the current step; epoch lines
    only with --verbose, all of them in out/log.txt) → (DemoResult, the distinct warnings raised on the way)."""
    from kebr_core.recipes.demo import STEPS, run_demo

    with user_errors(), warnings.catch_warnings(record=True) as caught, Reporter(out, epoch_lines=Verbosity.VERBOSE) as report, \
            using_threads(report, threads):
        warnings.simplefilter("always")
        finished = []

        def on_step(step: str, status: str, info: dict) -> None:
            if status == "start":
                report.scope = step
                return
            report.scope = ""
            report.drop_bars(keep=("kebr demo",))  # the step's bars are done
            finished.append(step)
            report("kebr demo", len(finished), len(STEPS), {})
            seconds = f" in {info['seconds']:.1f} s" if "seconds" in info else ""
            report.line(f"{step}: {status}{seconds}" + (f" ({info['reason']})" if status == "skipped" else ""))

        result = run_demo(out, progress=report, on_step=on_step, **options)
    return result, sorted({str(w.message) for w in caught})


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for everything the demo makes (summary.json lists it all)."),
    quick: bool = typer.Option(False, "--quick", help="A reduced size (8 clips, 120 synthetic samples, 1-2 epochs, one seed): a smoke test of the pipeline whose models learn next to nothing."),
    text_model: str = typer.Option(DEFAULT_TEXT_MODEL, "--text-model", help="Text encoder (default: the embedded all-MiniLM-L6-v2; e.g. random-bert:hidden=32,layers=2,heads=2)."),
    device: str = typer.Option("auto", "--device", metavar=DEVICE_METAVAR, help="auto, cpu or cuda (cuda:N for GPU N)."),
    force: bool = typer.Option(False, "--force", help="Replace a demo already in --out (only the demo's own files are removed)."),
    threads: Optional[int] = Threads,
) -> None:
    """Run KEBR end to end with no data of yours, no downloads and no system package: make talking-face
    clips (espeak-ng speech from its pip wheel), extract them, make a synthetic store, pretrain,
    evaluate, ablate MCC, plot, fine-tune on the clips and predict held-out clips. Everything goes into
    --out; summary.json says where. About 3 to 5 minutes on 2 CPU cores (measured: 315 s with the
    cores shared by other jobs)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the encoder is loaded once per stage: no per-load bars in the demo's
    result, messages = _run(out, threads, quick=quick, text_model=text_model, device=device, force=force)
    steps = result.steps
    if steps.get("eval", {}).get("status") == "done":
        from kebr_cli.tables import results_table

        test = steps["eval"]["test"]
        std = steps["eval"].get("test_std", {})
        console.print(results_table("eval on synth: test split", {"KEBR": {k: (v, std.get(k, float("nan"))) for k, v in test.items()}},
                                    steps["eval"]["seeds"], width=console.width))
    if steps.get("predict", {}).get("status") == "done":
        record = steps["predict"]
        console.print(predictions_table(record["predictions"], record["training"]))
        if record["training"]["smoke_test"]:
            console.print(f"[yellow]quick demo:[/] the model behind these scores trained for {training_phrase(record['training'])}: "
                          "a smoke test of the pipeline, not a sentiment model, so its scores mean nothing. "
                          "`kebr demo` without --quick trains one that reads sentiment.", highlight=False, soft_wrap=True)
        console.print(f"{record['right_sign']} of {record['clear_clips']} clearly positive or negative held-out clips "
                      "got the right sign.", highlight=False)
    console.print(summary_table(steps, f"kebr demo → {out} ({result.elapsed:.0f} s)"))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for message in messages[:5]:
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    console.print(f"summary: [bold]{result.summary_path}[/]", highlight=False)
