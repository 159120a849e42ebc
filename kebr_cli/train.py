"""`kebr pretrain` and `kebr eval`: parse options into a RunConfig, call the recipe, render results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from kebr_cli.app import (
    DEVICE_METAVAR, Reporter, Verbosity, app, console, is_main_process, number, one_store, relaunch_distributed, renamed,
    user_errors,
)
from kebr_cli.tables import results_table
from kebr_core.config import DEFAULT_TEXT_MODEL, RunConfig, paper_preset
from kebr_core.errors import KebrError



def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise KebrError(f"{option} must be one of {', '.join(allowed)}, not '{value}'.")
    return value


def build_config(
    preset: Optional[str], stage: str, *, text_model: str, g: float, s: float, lambda_mcc: float, mcc_form: str,
    mcc_align: str, layers: int, shared_layers: bool, heads: int, ffn: str, epochs: Optional[int], batch_size: int,
    lr: Optional[float], lr_encoder: Optional[float], lr_fusion: Optional[float], max_text_len: int, seed: int,
    device: str, workers: Optional[int], checkpoint_every: int, unfreeze: bool, bf16: Optional[bool], dropout: float = 0.1,
) -> RunConfig:
    """Options → RunConfig. `--preset paper` starts from the paper's settings; explicit options win."""
    from kebr_core.modules.mcc import ALIGNS, FORMS  # here, not at import: `kebr --help` stays free of torch

    if preset not in (None, "paper"):
        raise KebrError(f"--preset must be 'paper', not '{preset}'.")
    cfg = paper_preset(stage) if preset == "paper" else RunConfig()  # type: ignore[arg-type]
    m, c, t = cfg.model, cfg.mcc, cfg.train
    m.text_model, m.layers, m.shared_layers, m.heads, m.max_text_len = text_model, layers, shared_layers, heads, max_text_len
    m.dropout = dropout
    m.ffn = _choice(ffn, ("mlp", "linear"), "--ffn")  # type: ignore[assignment]
    c.g, c.s, c.weight = g, s, lambda_mcc
    c.form = _choice(mcc_form, FORMS, "--mcc-form")
    c.align = _choice(mcc_align, ALIGNS, "--mcc-align")
    if epochs is not None:
        t.epochs = epochs
    elif preset is None:
        t.epochs = 20 if stage == "pretrain" else 10
    t.batch_size, t.seed, t.device, t.workers, t.checkpoint_every = batch_size, seed, device, workers, checkpoint_every
    t.unfreeze, t.bf16 = unfreeze, bf16
    if stage == "finetune" and preset is None:
        t.lr_fusion = 5e-6
    for name, value in (("lr", lr), ("lr_encoder", lr_encoder), ("lr_fusion", lr_fusion)):
        if value is not None:
            setattr(t, name, value)
    if not -0.5 < g < 0.5:
        raise KebrError(f"--g must lie in (-0.5, 0.5) so MCC's balanced zero cos θ = 0.5 − g is a cosine, not {g}.")
    return cfg


def check_run_dir(out: Path, *inputs: Path) -> None:
    """A run directory must not be an input file (or any other file): one sentence instead of FileExistsError."""
    for path in inputs:
        if path.exists() and out.resolve() == path.resolve():
            raise KebrError(f"--out {out} is the input {path}; give a new folder for the run (e.g. runs/NAME).")
    if out.exists() and not out.is_dir():
        raise KebrError(f"--out {out} is a file; give a folder for the run (e.g. runs/NAME).")


# Options shared by both commands (Typer needs them spelled out per command).
TextModel = typer.Option(DEFAULT_TEXT_MODEL, "--text-model", help="Hugging Face name or local folder of the text encoder (default: the embedded all-MiniLM-L6-v2; e.g. bert-large-uncased).")
G = typer.Option(0.2, "--g", help="MCC angle penalty g in (-0.5, 0.5) (Eq. 11–13): the balanced zero of the loss is cos θ_a = cos θ_v = 0.5 − g, one of several (others lie off the diagonal; docs/design.md §5.5).")
S = typer.Option(1.0, "--s", parser=number(0, low_open=True), help="MCC scaling factor s.")
LambdaMCC = typer.Option(1.0, "--lambda-mcc", parser=number(0), help="Weight λ of the MCC loss (0 turns MCC off, ablation C4).")
# The choices as help shows them (kebr_core.modules.mcc.FORMS / ALIGNS, not imported here: `kebr --help`
# stays free of torch; build_config checks the values against them, tests/test_cli_basics.py the spelling).
FORM_CHOICES, ALIGN_CHOICES = "paper|reference|mean-cosine", "tile|authors|projected"
MCCForm = typer.Option("paper", "--mcc-form", metavar=FORM_CHOICES, help="MCC formula: paper (Eq. 11–12), reference (the authors' fine-tuning code) or mean-cosine (their pretraining code; they used --g 0.25 --lambda-mcc 0.5).")
MCCAlign = typer.Option("tile", "--mcc-align", metavar=ALIGN_CHOICES, help="How X_K and X0m are compared: tile (kebr's pairwise tile of each sample's valid part), authors (the authors' code: all three streams tiled to the longest, padding included) or projected (pooled means in d_t).")
Layers = typer.Option(4, "--layers", min=1, help="Number of TCMF layers K (Eq. 2).")
Shared = typer.Option(True, "--shared-layers/--no-shared-layers", help="One TCMF layer applied K times (the authors') or K independent layers.")
Heads = typer.Option(1, "--heads", min=1, help="Attention heads in cross-modal attention (paper: 1).")
FFN = typer.Option("mlp", "--ffn", metavar="mlp|linear", help="TCMF feed-forward: mlp (Linear-GELU-Linear) or linear (the authors').")
BatchSize = typer.Option(32, "--batch-size", min=1, help="Batch size.")
MaxTextLen = typer.Option(50, "--max-text-len", min=3, help="Maximum text length in wordpieces (the masked word is kept inside).")
Seed = typer.Option(0, "--seed", min=0, help="Random seed (a CPU run is repeatable bit for bit).")
Device = typer.Option("auto", "--device", metavar=DEVICE_METAVAR, help="auto, cpu or cuda (cuda:N for GPU N).")
LoaderWorkers = typer.Option(None, "--loader-workers", min=0, help="DataLoader worker processes (default: up to 4 per process on CUDA, 0 on CPU).")
OldWorkers = typer.Option(None, "--workers", min=0, hidden=True, help="Old name of --loader-workers.")
BF16 = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on for CUDA, off for CPU).")
Dropout = typer.Option(0.1, "--dropout", parser=number(0, 1, high_open=True), help="Dropout in TCMF and the heads.")
NProc = typer.Option(1, "--nproc-per-node", min=1, help="Processes for data-parallel training (DDP via torchrun; one per GPU, or gloo on CPU).")
Preset = typer.Option(None, "--preset", metavar="paper", help="'paper': the paper's settings (200 pretraining epochs, batch 32, lr as §4.2).")


@app.command()
def pretrain(
    store: Optional[Path] = typer.Argument(None, help="Feature store (.h5) to pretrain on, or give it as -d."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Feature store (.h5) to pretrain on; labels are not needed."),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run directory (config, metrics.csv, checkpoints)."),
    g: float = G, s: float = S, lambda_mcc: float = LambdaMCC, mcc_form: str = MCCForm, mcc_align: str = MCCAlign,
    layers: int = Layers, shared_layers: bool = Shared, heads: int = Heads, ffn: str = FFN, text_model: str = TextModel,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs (default 20; the paper used 200: --preset paper)."),
    batch_size: int = BatchSize,
    lr: Optional[float] = typer.Option(None, "--lr", parser=number(0, low_open=True), help="Learning rate of TCMF and the head (default 1e-4)."),
    lr_encoder: Optional[float] = typer.Option(None, "--lr-encoder", parser=number(0, low_open=True), help="Learning rate of the encoder with --unfreeze (default 5e-6)."),
    max_text_len: int = MaxTextLen, seed: int = Seed, device: str = Device, loader_workers: Optional[int] = LoaderWorkers,
    workers: Optional[int] = OldWorkers, bf16: Optional[bool] = BF16,
    unfreeze: bool = typer.Option(False, "--unfreeze", help="Train the text encoder too (default: frozen, as the authors)."),
    checkpoint_every: int = typer.Option(5, "--checkpoint-every", min=1, help="Save a checkpoint every N epochs (and at the end)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    dropout: float = Dropout, nproc_per_node: int = NProc, preset: Optional[str] = Preset,
) -> None:
    """Knowledge-enhanced pretraining: predict the masked sentiment word's intensity (L1) + λ·MCC."""
    from kebr_core.recipes.pretrain import pretrain as run_pretrain

    if nproc_per_node > 1:
        raise relaunch_distributed(nproc_per_node)
    with user_errors(resume_flag="--resume"), Reporter(out) as report:
        store = one_store(store, dataset, "pretrain")
        workers = renamed(loader_workers, workers, "--loader-workers", "--workers")
        check_run_dir(out, store)
        if resume and (out / "config.json").exists():
            cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
            if epochs is not None:
                cfg.train.epochs = epochs
        else:
            cfg = build_config(
                preset, "pretrain", text_model=text_model, g=g, s=s, lambda_mcc=lambda_mcc, mcc_form=mcc_form,
                mcc_align=mcc_align, layers=layers, shared_layers=shared_layers, heads=heads, ffn=ffn, epochs=epochs,
                batch_size=batch_size, lr=lr, lr_encoder=lr_encoder, lr_fusion=None, max_text_len=max_text_len,
                seed=seed, device=device, workers=workers, checkpoint_every=checkpoint_every, unfreeze=unfreeze, bf16=bf16,
                dropout=dropout,
            )
        report.line(f"settings: {json.dumps(cfg.to_dict())}", level=Verbosity.VERBOSE)
        result = run_pretrain(store, out, cfg, resume=resume, progress=report)
        if not is_main_process():
            return
        row = result.last_row
        columns = ("loss", "task_l1", "mcc", "cos_a", "cos_v", "abs_dtheta")
        table = Table(title=f"pretraining: {result.epochs_done} epochs (last epoch's means)")
        for k in columns:
            table.add_column(k, justify="right")
        table.add_row(*[f"{row.get(k, float('nan')):.4f}" for k in columns])
        report.result(table)
        report.result(f"pretrained on {result.samples} sample(s)"
                      + (f"; {result.samples_without_words} without words in their transcript left out (nothing to mask)"
                         if result.samples_without_words else ""))
        report.result(f"checkpoint: [bold]{result.checkpoint}[/]   metrics: {result.run_dir / 'metrics.csv'}   log: {report.log_path}")


@app.command("eval")
def eval_(
    dataset: str = typer.Option(..., "--dataset", "-d", help="mosi, mosei, synth, or the path of a labeled store."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="The pretraining checkpoint (RUN/final, or a pretraining run directory); none = fine-tune the plain encoder (ablation C2)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", hidden=True, help="Old name of --pretrained."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Run directory (results.json, results.csv, per-seed files)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where mosi/mosei data lives (default: $KEBR_DATA or ./data)."),
    seeds: int = typer.Option(5, "--seeds", min=1, help="Number of runs with seeds 0..N-1 (paper: 5) → mean ± std."),
    std: str = typer.Option("sample", "--std", metavar="sample|population", help="Spread over seeds: sample (ddof=1, default) or population (ddof=0, MMSA's np.std)."),
    probe: bool = typer.Option(False, "--probe", help="Also test with audio or vision removed (zeroed, absent): how much each is used."),
    g: float = G, s: float = S, lambda_mcc: float = LambdaMCC, mcc_form: str = MCCForm, mcc_align: str = MCCAlign,
    layers: int = Layers, shared_layers: bool = Shared, heads: int = Heads, ffn: str = FFN, text_model: str = TextModel,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Fine-tuning epochs (default 10; paper preset 20)."),
    batch_size: int = BatchSize,
    lr: Optional[float] = typer.Option(None, "--lr", parser=number(0, low_open=True), help="Learning rate of the head (default 1e-4)."),
    lr_encoder: Optional[float] = typer.Option(None, "--lr-encoder", parser=number(0, low_open=True), help="Learning rate of the encoder (default 5e-6)."),
    lr_fusion: Optional[float] = typer.Option(None, "--lr-fusion", parser=number(0, low_open=True), help="Learning rate of TCMF (default 5e-6)."),
    max_text_len: int = MaxTextLen, device: str = Device, loader_workers: Optional[int] = LoaderWorkers,
    workers: Optional[int] = OldWorkers, bf16: Optional[bool] = BF16,
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Keep the text encoder frozen (faster; default: fine-tune it, as the authors)."),
    dropout: float = Dropout, nproc_per_node: int = NProc, preset: Optional[str] = Preset,
    as_json: bool = typer.Option(False, "--json", help="Print the results (results.json: mean, std, each seed) as one JSON document on stdout instead of the table."),
) -> None:
    """Fine-tune on a labeled dataset, pick the epoch by validation MAE, test once per seed; mean ± std."""
    from kebr_core.data.registry import resolve_dataset
    from kebr_core.recipes.finetune import finetune

    if nproc_per_node > 1:
        raise relaunch_distributed(nproc_per_node)
    with user_errors(), Reporter(out) as report:
        checkpoint = renamed(pretrained, checkpoint, "--pretrained", "--checkpoint")
        workers = renamed(loader_workers, workers, "--loader-workers", "--workers")
        cfg = build_config(
            preset, "finetune", text_model=text_model, g=g, s=s, lambda_mcc=lambda_mcc, mcc_form=mcc_form,
            mcc_align=mcc_align, layers=layers, shared_layers=shared_layers, heads=heads, ffn=ffn, epochs=epochs,
            batch_size=batch_size, lr=lr, lr_encoder=lr_encoder, lr_fusion=lr_fusion, max_text_len=max_text_len,
            seed=0, device=device, workers=workers, checkpoint_every=1, unfreeze=not freeze_encoder, bf16=bf16,
            dropout=dropout,
        )
        report.line(f"settings: {json.dumps(cfg.to_dict())}", level=Verbosity.VERBOSE)
        _choice(std, ("sample", "population"), "--std")
        check_run_dir(out, Path(dataset), *([checkpoint] if checkpoint else []))
        data_dir = data_dir or Path(os.environ.get("KEBR_DATA", "data"))
        resolved = resolve_dataset(dataset, data_dir, warn=report.warning)
        result = finetune(resolved, out, cfg, checkpoint=checkpoint, seeds=list(range(seeds)), probe=probe, std=std,
                          progress=report)
        if not is_main_process():
            return
        rows = {"KEBR": result.summary} | {f"KEBR, {name}": summary for name, summary in result.probe.items()}
        report.result(results_table(f"{Path(dataset).name}: test split", rows, list(range(seeds)), width=console.width,
                                    std=std), to_stdout=not as_json)
        left_out = {s: n for s, n in result.unlabeled.items() if n}
        if left_out:
            report.result("unlabeled samples (NaN label) left out of fine-tuning and evaluation: "
                          + ", ".join(f"{s} {n}" for s, n in left_out.items()), to_stdout=not as_json)
        report.result(f"results: [bold]{out / 'results.json'}[/], {out / 'results.csv'}   log: {report.log_path}",
                      to_stdout=not as_json)
    if as_json:
        typer.echo(json.dumps({"run_dir": str(out)} | json.loads((out / "results.json").read_text()), indent=2))
