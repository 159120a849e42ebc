"""`kebr predict VIDEO... --model RUN/best-model`: the sentiment of new videos (kebr_core.recipes.predict)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from kebr_cli.app import DEVICE_METAVAR, app, console, fail, number, renamed, user_errors
from kebr_cli.reporter import Reporter
from kebr_cli.extract import ASR, decoding_progress
from kebr_cli.options import setting_option
from kebr_core.errors import KebrError
from kebr_core.extract.limits import DEFAULT_MAX_DURATION_S
from kebr_core.io import atomic_output, check_output, check_replaceable, json_with_keys

_POLARITY_STYLE = {"positive": "green", "negative": "red", "neutral": "yellow"}


def predictions_table(predictions: list, title: str) -> Table:
    """One row per video: score, 7-class label, polarity, transcript; a failed video shows its reason."""
    table = Table(title=title)
    table.add_column("video", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("class", justify="right")
    table.add_column("sentiment")
    table.add_column("polarity")
    table.add_column("transcript", overflow="fold")
    for p in predictions:
        if not p.ok:
            table.add_row(p.video, "-", "-", "[red]not scored[/]", "-", f"[red]{p.error}[/]")
            continue
        style = _POLARITY_STYLE[p.polarity]
        transcript = p.text or "[dim](empty)[/]"
        if p.notes:
            transcript += " [dim]· " + "; ".join(p.notes) + "[/]"
        table.add_row(p.video, f"{p.score:+.2f}", f"{p.sentiment_class:+d}", p.label, f"[{style}]{p.polarity}[/]", transcript)
    return table


@app.command()
def predict(
    videos: list[Path] = typer.Argument(..., help="Videos to score (files, or folders searched recursively)."),
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", help="The fine-tuned model: RUN/best-model, or a `kebr eval` run directory.  [required]"
    ),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", hidden=True, help="Old name of --model."),
    text: Optional[str] = typer.Option(None, "--text", help="The transcript of the (single) video, instead of a sidecar or ASR."),
    transcripts: Optional[Path] = typer.Option(
        None, "--transcripts",
        help="A table of transcripts for many videos: a header with id and text columns, tab- or comma-separated (id = file name without extension, or path below a folder given). Read before sidecars and ASR.",
    ),
    asr: ASR = typer.Option("pocketsphinx", "--asr", help="Transcript when there is no --text or sidecar (.txt/.srt/.vtt): pocketsphinx (offline), whisper (needs --asr-model) or none."),
    asr_model: Optional[Path] = typer.Option(None, "--asr-model", help="With --asr whisper: a local Hugging Face Whisper folder."),
    openface_dir: Optional[Path] = typer.Option(None, "--openface-dir", help="For a checkpoint trained on OpenFace CSVs: the folder with <stem>.csv per video."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON (a list, one entry per video) instead of a table."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the predictions as JSON to this file."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Videos scored together by the model."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=0, help="Extraction processes (default 0: extract in this process)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, hidden=True, help="Old name of --jobs."),
    device: str = typer.Option("auto", "--device", metavar=DEVICE_METAVAR, help="auto, cpu or cuda (cuda:N for GPU N)."),
    max_duration: float = typer.Option(DEFAULT_MAX_DURATION_S, "--max-duration", parser=number(0, low_open=True), metavar="SECONDS", help="Decode at most this many seconds of each video (of its decoded pictures and audio, whatever its header says); a longer one gets its reason."),
    max_parameters: int = setting_option("train.max_parameters", "predict"),
) -> None:
    """Score videos: sentiment in [-3, 3], its 7-class label and polarity (neutral = class 0, |score| ≤ 0.5).

    Videos are extracted with the settings of the checkpoint's training data. A video that cannot be
    read gets its reason and the others are still scored; the exit code is non-zero only when no
    video could be scored."""
    from kebr_core.extract.video import VIDEO_EXTENSIONS
    from kebr_core.recipes.predict import predict as run_predict

    # The Reporter starts its bar on the first event, after any worker processes are forked (as `kebr extract`).
    with user_errors(), Reporter() as report:
        model = renamed(model, checkpoint, "--model", "--checkpoint")
        if model is None:
            raise KebrError("kebr predict needs the fine-tuned model: --model RUN/best-model (or a `kebr eval` run directory).")
        jobs = renamed(jobs, workers, "--jobs", "--workers") or 0
        if out is not None:  # before the work: the predictions never replace a video, the model or a transcript
            check_output(out, [model, transcripts, asr_model, openface_dir])
            check_output(out, videos, suffixes=VIDEO_EXTENSIONS)
            check_replaceable(out, lambda p: json_with_keys(p, {"video", "score"}), "a file of predictions")
        stages = ("extract", "score")

        def on_progress(stage: str, done: int, total: int, info: dict) -> None:
            report(stage, done, total, info)
            if stage == "extract":
                report.drop_bars(keep=stages)  # a failed video's decoding bar, if it had one

        predictions = run_predict(
            videos, model, text=text, transcripts=transcripts, asr=asr.value, asr_model=asr_model, openface_dir=openface_dir, workers=jobs,
            batch_size=batch_size, device=device, max_parameters=max_parameters, progress=on_progress, max_duration=max_duration,
            decoding=decoding_progress(report, keep=stages),
        )
        payload = [p.to_dict() for p in predictions]
        if out is not None:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                with atomic_output(out, overwrite=True) as tmp:  # whole or not at all; a link at OUT is replaced, not followed
                    tmp.write_text(json.dumps(payload, indent=2) + "\n")
            except OSError as e:
                raise KebrError(f"The predictions cannot be written to {out} ({e.strerror}).") from None

    scored = sum(p.ok for p in predictions)
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        console.print(predictions_table(predictions, f"kebr predict: {scored} of {len(predictions)} video(s) scored"))
        if out is not None:
            console.print(f"predictions: [bold]{out}[/]", highlight=False)
    if scored == 0:
        raise fail(f"none of the {len(predictions)} video(s) could be scored; see the reasons above")
