"""`kebr extract`: videos (a folder, one file, or an MMSA manifest) -> an HDF5 feature store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer

from kebr_cli.app import app, choices, console, fail, number, renamed, user_errors
from kebr_cli.reporter import Reporter
from kebr_cli.tables import counts_table
from kebr_core.data.labels import outside_range_warning
from kebr_core.errors import KebrError, or_list
from kebr_core.extract.audio import FEATURE_SETS
from kebr_core.extract.limits import DEFAULT_MAX_DURATION_S, MAX_FPS
from kebr_core.extract.vision import VISION_BACKENDS
from kebr_core.shards import check_part
from kebr_core.strict import decimal_integer
from kebr_core.io import atomic_output, check_output, check_replaceable, json_with_keys

if TYPE_CHECKING:
    from kebr_core.extract.video import Decoded


AudioFeatures = choices("AudioFeatures", *FEATURE_SETS)
Vision = choices("Vision", *VISION_BACKENDS)
ASR = choices("ASR", "pocketsphinx", "whisper", "none")


def described(table: dict[str, str]) -> str:
    """'a (what a is), b (what b is) or c': an option's choices with their descriptions, for its help."""
    return or_list(f"{name} ({what})" if what else name for name, what in table.items())


def parse_shard(value: Optional[str], option: str = "--shard") -> tuple[int, int] | None:
    """'i/n' -> the job's part (i, n), 0 <= i < n (`kebr_core.shards.check_part`; `option`: the option's
    name for the error)."""
    if value is None:
        return None
    parts = [decimal_integer(part) for part in value.split("/")]
    if len(parts) != 2 or None in parts:
        raise KebrError(f"{option} must look like i/n (e.g. 0/4), not {value!r}")
    part = (parts[0], parts[1])
    check_part(part, option)
    return part


def decoding_progress(reporter: Reporter, keep: tuple[str, ...]) -> Callable[["Decoded"], None]:
    """Progress within the video being extracted (`kebr_core.extract.video.Decoded`): a bar per stream,
    "clip01: seconds of pictures", seconds decoded of about the header's duration (off a terminal, a line
    every 10 s, so only a long video prints one). A stream's bar goes when it is decoded; the bars of
    `keep` (the run's own) stay."""

    shown = ""  # the stream whose bar shows now

    def on_decoded(event: "Decoded") -> None:
        nonlocal shown
        stage = f"  {event.id}: seconds of {event.what}"
        if stage != shown:  # a stream begins: from workers, the last event of the one before may not have come
            reporter.drop_bars(keep=keep)
        reporter(stage, round(event.seconds), round(event.expected), {})
        shown = stage
        if event.finished:
            reporter.drop_bars(keep=keep)

    return on_decoded


@app.command()
def extract(
    inputs: Optional[Path] = typer.Argument(
        None, help="Folder of videos (recursive: mp4, mkv, avi, mov, webm) or one video; with --manifest, the clips' root."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store to create or resume (.h5)."),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", "-m",
        help="MMSA label.csv: clips at <root>/<video_id>/<clip_id>.mp4; text, labels and splits go into the store.",
    ),
    root: Optional[Path] = typer.Option(
        None, "--root", help="With --manifest: the clips' root (default: INPUTS, else Raw/ beside the manifest, else its folder).",
    ),
    audio_features: AudioFeatures = typer.Option("kebr33", "--audio-features", help=described({n: fs.summary for n, fs in FEATURE_SETS.items()}) + "."),
    vision: Vision = typer.Option("mediapipe", "--vision", help=described(VISION_BACKENDS) + "."),
    openface_dir: Optional[Path] = typer.Option(None, "--openface-dir", help="With --vision openface-csv: folder holding <stem>.csv per video."),
    fps: float = typer.Option(10.0, "--fps", parser=number(0, MAX_FPS, low_open=True), help=f"Vision frames per second (at most {MAX_FPS:g})."),
    max_duration: float = typer.Option(DEFAULT_MAX_DURATION_S, "--max-duration", parser=number(0, low_open=True), metavar="SECONDS", help="Decode at most this many seconds of each video (of its decoded pictures and audio, whatever its header says); a longer one fails with its reason."),
    transcripts: Optional[Path] = typer.Option(
        None, "--transcripts",
        help="A table of transcripts, one row per video: a header with id and text columns, tab- or comma-separated (id = path below INPUTS without extension). Read before sidecars and ASR.",
    ),
    asr: ASR = typer.Option("pocketsphinx", "--asr", help="Transcript when there is no manifest text or sidecar: pocketsphinx (offline), whisper (needs --asr-model) or none."),
    asr_model: Optional[Path] = typer.Option(None, "--asr-model", help="With --asr whisper: a local Hugging Face Whisper folder."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=0, help="Extraction processes (default 1; the main process alone writes the store; 0 = extract in the main process)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, hidden=True, help="Old name of --jobs."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: extract only this job's share (0 <= i < n), then `kebr merge` the stores."),
    max_side: int = typer.Option(640, "--max-side", min=64, help="Shrink pictures to this longer side before face detection."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the summary (counts, failures, timings) as JSON here."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Extract again the ids that failed in an earlier run into this store (default: skip them)."),
    clip_labels: bool = typer.Option(False, "--clip-labels", help="Clip manifest labels outside [-3, 3] onto it (default: keep them, with a warning)."),
) -> None:
    """Extract audio, vision and transcripts from videos into a feature store (resumable: rerun the same command)."""
    from kebr_core.extract.extractor import ExtractOptions
    from kebr_core.extract.video import VIDEO_EXTENSIONS
    from kebr_core.extract.inputs import read_manifest
    from kebr_core.extract.pipeline import ProgressEvent, extract as run_extract

    with user_errors():
        jobs = renamed(jobs, workers, "--jobs", "--workers")
        options = ExtractOptions(
            audio_features=audio_features.value, vision=vision.value, openface_dir=openface_dir, fps=fps, asr=asr.value,
            asr_model=asr_model, workers=1 if jobs is None else jobs, shard=parse_shard(shard), max_side=max_side,
            max_duration=max_duration,
        )
        options.validate()
        if manifest is not None:
            if root is not None and inputs is not None and root != inputs:
                raise KebrError(f"give the clips' root once: INPUTS ({inputs}) or --root ({root}), not both")
            root = root or inputs or (manifest.parent / "Raw" if (manifest.parent / "Raw").is_dir() else manifest.parent)
            if not root.is_dir():
                raise KebrError(f"the clips' root {root} is not a folder (it should hold <video_id>/<clip_id>.mp4)")
            # Absolute paths in the label: the store tells a rerun from another input by it.
            source, label = read_manifest(manifest, root), f"{os.path.abspath(manifest)} (clips in {os.path.abspath(root)})"
        elif inputs is None:
            raise KebrError("give a folder of videos or a video file, or --manifest label.csv (with --root)")
        else:
            source, label = inputs, os.path.abspath(inputs)
        for output, option in ((out, "--out"), (report, "--report")):
            if output is not None:  # neither replaces a video, the manifest, a transcript or the other output
                check_output(output, [manifest, transcripts, asr_model, openface_dir] + ([out] if output == report else []), option)
                check_output(output, [root if manifest is not None else inputs], option, suffixes=VIDEO_EXTENSIONS)
        if report is not None:
            check_replaceable(report, lambda p: json_with_keys(p, {"total", "done", "failures"}), "an extraction report", "--report")
        # The Reporter starts its bar on the first event, i.e. after the worker processes are forked: no
        # Rich refresh thread exists while they are (a fork copies locks that thread may hold).
        with Reporter() as reporter:

            def on_progress(event: ProgressEvent) -> None:
                # Resumed videos are done already: the bar (and its ETA) covers this run's work only.
                reporter("extract", event.completed - event.skipped, event.total - event.skipped, {})
                reporter.drop_bars(keep=("extract",))  # a failed video's decoding bar, if it had one

            summary = run_extract(source, out, options, progress=on_progress, source=label, retry_failed=retry_failed,
                                  clip_labels=clip_labels, transcripts=transcripts,
                                  decoding=decoding_progress(reporter, keep=("extract",)))
        if report is not None:  # before the tables: a report that cannot be written is one sentence, not a traceback
            report.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(report, overwrite=True) as tmp:
                tmp.write_text(json.dumps(summary.to_dict(), indent=2, default=str))

    columns = ["videos", "done", "skipped", "no audio", "no speech", "no ASR", "no face", "failed", "time", "speed"]
    speed = summary.media_seconds / summary.elapsed if summary.elapsed > 0 else 0.0
    cells = [
        str(summary.total), str(summary.done), str(summary.skipped), str(summary.no_audio), str(summary.no_speech),
        str(summary.no_asr), str(summary.no_face), f"[red]{summary.failed}[/]" if summary.failed else "0",
        f"{summary.elapsed:.1f} s", f"{speed:.1f}× RT" if summary.done else "-",
    ]
    table = counts_table(f"kebr extract → {out}", dict(zip(columns, cells)), width=console.width)
    console.print(table)
    if summary.labels_outside_range:
        console.print(f"[yellow]warning:[/] {outside_range_warning(summary.labels_outside_range, summary.labels_clipped)}")
    if summary.skipped_failed:
        console.print(f"[yellow]{summary.skipped_failed} id(s) failed in an earlier run and were skipped[/]; "
                      "rerun with --retry-failed to try them again.", soft_wrap=True)
    for message in list(summary.clashes.values())[:10]:
        console.print(f"[yellow]clash:[/] {message}", highlight=False, soft_wrap=True)
    if len(summary.clashes) > 10:
        console.print(f"… and {len(summary.clashes) - 10} more clashing ids.")
    if summary.no_face_frames:
        console.print(f"{summary.no_face_frames} frames without a face were dropped.")
    if summary.unmatched_transcripts:
        shown = ", ".join(summary.unmatched_transcripts[:5]) + (" …" if len(summary.unmatched_transcripts) > 5 else "")
        console.print(f"[yellow]{len(summary.unmatched_transcripts)} id(s) of {transcripts} name no video here:[/] {shown}",
                      highlight=False)
    if summary.unsupported:
        shown = ", ".join(summary.unsupported[:5]) + (" …" if len(summary.unsupported) > 5 else "")
        console.print(f"[yellow]{len(summary.unsupported)} file(s) ignored (unsupported extension):[/] {shown}")
    for sample_id, message in list(summary.failures.items())[:10]:
        console.print(f"[red]failed[/] {sample_id}: {message}", highlight=False)
    if len(summary.failures) > 10:
        console.print(f"… and {len(summary.failures) - 10} more (FeatureStore(...).errors() lists them all).")
    if not summary.ok:
        raise fail(f"nothing could be extracted from {label}: all {summary.total} video(s) failed")
