"""`kebr import`, `kebr merge`, `kebr inspect`, `kebr synth`: make and look at feature stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.table import Table

from kebr_cli.app import app, choices, console, number, one_store, user_errors
from kebr_cli.reporter import Reporter
from kebr_core.data.importers import IMPORT_FORMATS, IMPORTERS
from kebr_core.data.labels import outside_range_warning
from kebr_core.errors import KebrError, or_list
from kebr_core.strict import decimal_integer


def _progress_callback(report: Reporter, stage: str) -> Callable[[int, int], None]:
    """The data functions' progress(done, total) as the Reporter's events."""
    return lambda done, total: report(stage, done, total, {})


ImportFormat = choices("ImportFormat", *IMPORT_FORMATS)


@app.command("import")
def import_(
    src: Path = typer.Argument(..., help="MMSA pickle (unaligned_50.pkl / aligned_50.pkl) or MMSA label.csv."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store to create (.h5)."),
    fmt: ImportFormat = typer.Option("auto", "--format", "-f", help=f"auto (by extension), {or_list(IMPORTERS)}."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    clip_labels: bool = typer.Option(False, "--clip-labels", help="Clip labels outside [-3, 3] onto it (default: keep them, with a warning)."),
) -> None:
    """Import MMSA data into a feature store (written to OUT.tmp, renamed when complete).

    A pickle is read as data only: one that names anything but numpy arrays, dicts, lists, strings and
    numbers is refused unread (a pickle can run code)."""
    from kebr_core.data.importers import import_file

    with user_errors(), Reporter() as report:
        result = import_file(src, out, fmt=fmt.value, progress=_progress_callback(report, "import"), overwrite=force,
                             clip_labels=clip_labels)
    splits = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
    console.print(f"[green]wrote[/] {out}: {result['samples']} samples ({splits})", soft_wrap=True)
    if result.get("nonfinite_replaced"):
        console.print(f"[yellow]{result['nonfinite_replaced']} non-finite feature values were set to 0 (as MMSA does).[/]")
    if result.get("labels_outside_range"):
        console.print(f"[yellow]warning:[/] {outside_range_warning(result['labels_outside_range'], result['labels_clipped'])}")
    if result.get("lengths") == "nonzero frames":
        console.print("[yellow]no *_lengths in the pickle: all-zero padding frames were dropped.[/]")


@app.command()
def merge(
    inputs: list[Path] = typer.Argument(..., help="Stores to merge (e.g. the shards of `kebr extract --shard`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged store to create (.h5)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Merge stores with the same features; refuses duplicate ids."""
    from kebr_core.data.importers import merge_stores

    with user_errors(), Reporter() as report:
        result = merge_stores(inputs, out, progress=_progress_callback(report, "merge"), overwrite=force)
    console.print(f"[green]wrote[/] {out}: {result['samples']} samples, {result['errors']} errors from {len(inputs)} stores",
                  soft_wrap=True)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _render(summary: dict[str, Any]) -> None:
    console.print(f"[bold]{summary['path']}[/]  {summary['samples']} samples, {summary['file_bytes'] / 1e6:.1f} MB, "
                  f"format {summary['format_version']}, kebr {summary['kebr_version']}, created {summary['created']}")
    if summary["source"]:
        console.print(f"source: {summary['source']}")
    if summary.get("dataset"):
        console.print(f"made for dataset: {summary['dataset']} (its label range and metrics)")
    if summary["extractor"]:
        console.print("extractor: " + ", ".join(f"{k}={v}" for k, v in summary["extractor"].items()))

    splits = Table(title="samples per split")
    for name in summary["splits"]:
        splits.add_column(name, justify="right")
    splits.add_row(*(str(v) for v in summary["splits"].values()))
    console.print(splits)

    labels = summary["labels"]
    if labels["outside_range"]:
        console.print(f"[yellow]warning:[/] {outside_range_warning(labels['outside_range'], clipped=False)}")
    if labels["infinite"]:
        console.print(f"[yellow]warning:[/] {labels['infinite']} label(s) are infinite; they are left out of these "
                      "statistics and of training (re-import the data with finite labels).")
    if not labels["labeled"]:  # nothing to summarise: no histogram, no "mean -"
        console.print(f"labels: unlabeled ({labels['unlabeled']} samples without a label): usable for pretraining, not for "
                      "fine-tuning or evaluation", highlight=False)
    else:
        hist = Table(title=f"labels: {labels['labeled']} labeled (mean {_fmt(labels['mean'])}, std {_fmt(labels['std'])}, "
                           f"range {_fmt(labels['min'])}…{_fmt(labels['max'])}), {labels['unlabeled']} unlabeled")
        hist.add_column("class round(y)", justify="right")
        hist.add_column("samples", justify="right")
        hist.add_column("")
        top = max(labels["histogram"].values(), default=0) or 1
        for cls, count in labels["histogram"].items():
            hist.add_row(cls, str(count), "█" * round(30 * count / top))
        console.print(hist)

    feats = Table(title="features and sequence lengths (frames)")
    for col in ("stream", "dim", "rate", "min", "mean", "median", "p95", "max", "empty"):
        feats.add_column(col, justify="left" if col == "stream" else "right")
    for stream, rate_key in (("audio", "rate_hz"), ("vision", "fps")):
        s = summary[stream]
        lengths = s["lengths"]
        rate = f"{s[rate_key]:g} {'Hz' if stream == 'audio' else 'fps'}" if s[rate_key] else "-"
        feats.add_row(stream, str(s["dim"]), rate, str(lengths["min"]), _fmt(lengths["mean"], 1),
                      _fmt(lengths["median"], 1), _fmt(lengths["p95"], 1), str(lengths["max"]), str(lengths["zero"]))
    console.print(feats)
    for stream in ("audio", "vision"):
        names = summary[stream]["features"]
        if names:
            console.print(f"{stream} columns: " + ", ".join(names[:6]) + (f", … ({len(names)})" if len(names) > 6 else ""),
                          highlight=False)

    text = summary["text"]
    sources = ", ".join(f"{k} {v}" for k, v in text["sources"].items()) or "-"
    console.print(f"text sources: {sources}; words per text: mean {_fmt(text['words']['mean'], 1)}, "
                  f"max {text['words']['max']}; empty texts: {text['empty']}")

    errors = summary["errors"]
    if errors["count"]:
        table = Table(title=f"errors: {errors['count']} ids failed")
        table.add_column("samples", justify="right")
        table.add_column("message")
        for message, count in errors["by_message"].items():
            table.add_row(str(count), message)
        console.print(table)
    else:
        console.print("errors: none")


@app.command()
def inspect(
    store: Optional[Path] = typer.Argument(None, help="Feature store (.h5), or give it as -d."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Feature store (.h5) to summarise."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Summarise a store: splits, labels, features, sequence lengths, text sources, errors."""
    from kebr_core.data.summary import summarize

    with user_errors():
        summary = summarize(one_store(store, dataset, "inspect"))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _render(summary)


def _length_range(text: str, option: str) -> tuple[int, int]:
    bounds = [decimal_integer(x) for x in text.split("-")]
    if len(bounds) != 2 or None in bounds:
        raise KebrError(f"{option} takes a frame range MIN-MAX, e.g. 30-300, not '{text}'.")
    return bounds[0], bounds[1]


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Synthetic store to create (.h5)."),
    n: int = typer.Option(2199, "--n", min=0, help="Labeled samples, split train/valid/test as CMU-MOSI (2199 = MOSI's size)."),
    unlabeled: int = typer.Option(0, "--unlabeled", min=0, help="Extra unlabeled samples (the pretraining split)."),
    audio_dim: int = typer.Option(33, "--audio-dim", min=1, help="Audio feature columns."),
    vision_dim: int = typer.Option(35, "--vision-dim", min=1, help="Vision feature columns."),
    text_strength: float = typer.Option(1.0, "--text-strength", parser=number(0), help="Text's weight in the label."),
    audio_strength: float = typer.Option(1.0, "--audio-strength", parser=number(0), help="Audio's weight in the label."),
    vision_strength: float = typer.Option(0.25, "--vision-strength", parser=number(0), help="Vision's weight in the label (the imbalance)."),
    label_noise: float = typer.Option(0.2, "--label-noise", parser=number(0), help="Std of the noise added to the label."),
    signal: float = typer.Option(0.5, "--signal", parser=number(0), help="β: how strongly a stream's frames show its latent (both streams)."),
    noise: float = typer.Option(1.0, "--noise", parser=number(0), help="σ: the std of the frames' noise (both streams)."),
    audio_signal: Optional[float] = typer.Option(None, "--audio-signal", parser=number(0), help="β of audio alone (default --signal): with --audio-noise, how easy audio is to read."),
    audio_noise: Optional[float] = typer.Option(None, "--audio-noise", parser=number(0), help="σ of audio alone (default --noise)."),
    vision_signal: Optional[float] = typer.Option(None, "--vision-signal", parser=number(0), help="β of vision alone (default --signal)."),
    vision_noise: Optional[float] = typer.Option(None, "--vision-noise", parser=number(0), help="σ of vision alone (default --noise)."),
    latent_correlation: float = typer.Option(0.0, "--latent-correlation", parser=number(0, 1), help="ρ in [0, 1] between the audio and vision latents: 0 = independent (complementary), 1 = the same (redundant)."),
    audio_len: str = typer.Option("30-300", "--audio-len", help="Audio frames per sample, MIN-MAX."),
    vision_len: str = typer.Option("10-55", "--vision-len", help="Vision frames per sample, MIN-MAX."),
    missing_vision: float = typer.Option(0.0, "--missing-vision", parser=number(0, 1), help="Fraction of samples with no vision frames."),
    seed: int = typer.Option(0, "--seed", min=0),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Generate a seeded synthetic store with a known text/audio/vision share of the label, each stream as easy
    to read as asked (the generative formula: docs/design.md §9)."""
    from kebr_core.data.synth import SynthConfig, generate_synth

    with user_errors():
        cfg = SynthConfig(n=n, unlabeled=unlabeled, audio_dim=audio_dim, vision_dim=vision_dim, text_strength=text_strength,
                          audio_strength=audio_strength, vision_strength=vision_strength, label_noise=label_noise,
                          signal=signal, noise=noise, audio_signal=audio_signal, audio_noise=audio_noise,
                          vision_signal=vision_signal, vision_noise=vision_noise, latent_correlation=latent_correlation,
                          audio_len=_length_range(audio_len, "--audio-len"),
                          vision_len=_length_range(vision_len, "--vision-len"), missing_vision=missing_vision, seed=seed)
    with user_errors(), Reporter() as report:
        result = generate_synth(out, cfg, progress=_progress_callback(report, "synth"), overwrite=force)
    splits = ", ".join(f"{k} {v}" for k, v in result["splits"].items())
    (beta_a, sigma_a), (beta_v, sigma_v) = cfg.stream("audio"), cfg.stream("vision")
    console.print(f"[green]wrote[/] {out}: {result['samples']} samples ({splits}); label = clip(({text_strength}·t + "
                  f"{audio_strength}·a + {vision_strength}·v) / {text_strength + audio_strength + vision_strength:g} + noise); "
                  f"signal/noise audio {beta_a:g}/{sigma_a:g}, vision {beta_v:g}/{sigma_v:g}",
                  soft_wrap=True)
