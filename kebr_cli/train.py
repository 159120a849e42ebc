"""`kebr pretrain` and `kebr eval`: parse options into a RunConfig, call the recipe, render results.

The options and helpers above the commands are shared with `kebr ablate` (kebr_cli/ablate.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from kebr_cli.app import (
    DEVICE_METAVAR, Verbosity, app, console, is_main_process, number, one_store, renamed, resume_command, user_errors,
)
from kebr_cli.launcher import MasterAddr, MasterPort, NNodes, NodeRank, RdzvEndpoint, launch_wanted, relaunch_distributed
from kebr_cli.reporter import Reporter
from kebr_cli.extract import parse_shard
from kebr_cli.tables import results_table
from kebr_cli.threads import Threads, using_threads
from kebr_core.data.catalog import DATASET_HELP
from kebr_core import results_files, runs
from kebr_core.config import DEFAULT_MAX_PARAMETERS, DEFAULT_TEXT_MODEL, RunConfig, parse_seeds, resolve_config
from kebr_core.errors import KebrError
from kebr_core.io import check_output
from kebr_core.metric_logger import require as require_reporters
from kebr_core.epoch_metrics import TRAINING_NAMES
from kebr_core.modules.mcc import ALIGNS, FORMS
from kebr_core.row_names import inputs_caption, row_name, store_inputs

# Which RunConfig field each command-line option sets (kebr_core.config holds defaults and checks).
OPTION_FIELDS = {
    "g": "mcc.g", "s": "mcc.s", "lambda_mcc": "mcc.weight", "mcc_form": "mcc.form", "mcc_align": "mcc.align",
    "align": "mcc.align", "layers": "model.layers", "shared_layers": "model.shared_layers", "heads": "model.heads",
    "ffn": "model.ffn", "text_model": "model.text_model", "max_text_len": "model.max_text_len",
    "dropout": "model.dropout", "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
    "lr_encoder": "train.lr_encoder", "lr_fusion": "train.lr_fusion", "seed": "train.seed", "device": "train.device",
    "loader_workers": "train.workers", "workers": "train.workers", "bf16": "train.bf16", "unfreeze": "train.unfreeze",
    "freeze_encoder": "train.unfreeze", "checkpoint_every": "train.checkpoint_every",
    "keep_checkpoints": "train.keep_checkpoints", "seeds": "train.seeds", "attention_width": "model.attention_width",
    "head_hidden": "model.head_hidden", "random_word": "train.random_word",
    "modality_dropout": "train.modality_dropout", "dropped_modality": "train.dropped_modality",
    "report_to": "train.report_to",
    "max_parameters": "train.max_parameters",
    "checkpoint_every_steps": "train.checkpoint_every_steps", "checkpoint_every_minutes": "train.checkpoint_every_minutes",
    "text_cache": "train.text_cache", "text_cache_dtype": "train.text_cache_dtype", "text_cache_dir": "train.text_cache_dir",
}
# Options whose value is not the field's value as typed.
CONVERT = {"freeze_encoder": lambda v: not v, "seeds": parse_seeds}


def was_typed(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given on the command line (or by the environment), not left at its default."""
    source = ctx.get_parameter_source(name)  # an enum of the click Typer bundles: compared by name
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def given_options(ctx: typer.Context, skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """The options typed on the command line (not left at their defaults), as {field: value}, and
    {field: option name} for error messages. Options at their default leave the field to the
    configuration's layers below (stage defaults < preset < --config file)."""
    values, labels = {}, {}
    for param in ctx.command.params:
        name = param.name or ""
        if name not in OPTION_FIELDS or name in skip:
            continue
        if not was_typed(ctx, name):
            continue
        key = OPTION_FIELDS[name]
        values[key] = CONVERT.get(name, lambda v: v)(ctx.params[name])
        labels[key] = param.opts[0]
    return values, labels


def typed_settings(ctx: typer.Context, sets: list[str], skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{dotted key: how it was given} for the settings typed on this command line: options not left at
    their default, and --set keys (what `--pretrained` may not silently replace)."""
    labels = given_options(ctx, skip)[1]
    for text in sets:
        key = text.partition("=")[0].strip()
        labels[key] = f"--set {key}"
    return labels


def seeds_option(param: typer.CallbackParam, text: Optional[str]) -> Optional[str]:
    """Typer callback of --seeds (--pretrain-seeds): a count or a list (`parse_seeds`), else a usage error
    (exit 2) naming the option; None stays."""
    if text is None:
        return None
    try:
        parse_seeds(text, param.opts[0] if param.opts else "--seeds")
    except KebrError as e:
        raise typer.BadParameter(str(e)) from None
    return text


def command_config(ctx: typer.Context, stage: str, *, preset: Optional[str], config_file: Optional[Path],
                   sets: list[str], skip: tuple[str, ...] = ()) -> RunConfig:
    """defaults of the stage < --preset < --config FILE < options typed < --set key=value."""
    values, labels = given_options(ctx, skip)
    return resolve_config(stage, preset=preset, file=config_file, options=values, labels=labels, sets=sets)


def print_config(payload: dict) -> None:
    console.print_json(json.dumps(payload, default=str))


def store_if_present(dataset: str, data_dir: Path) -> Optional[Path]:
    """The store --dataset names when it is there already (a file, or DATA_DIR/NAME.h5 for a named
    dataset), else None: --print-config completes the configuration from it, importing or generating nothing."""
    for path in (Path(dataset), data_dir / f"{dataset.lower()}.h5"):
        if path.suffix in (".h5", ".hdf5") and path.is_file():
            return path
    return None


def trained_config(cfg: RunConfig, store: Path, checkpoint: Optional[Path], typed: dict[str, str]) -> dict:
    """The configuration fine-tuning trains (`recipes.finetune.complete_config`: the checkpoint's
    architecture, the store's widths), what --print-config prints and log.txt logs; `cfg` is left as it is.
    A multi-seed pretraining's architecture is its first run's (every run of it has the same)."""
    from kebr_core.recipes.finetune import complete_config, is_multi_seed_pretraining

    completed = RunConfig.from_dict(cfg.to_dict())
    if checkpoint is not None and is_multi_seed_pretraining(checkpoint):
        checkpoint = runs.pretrain_seed_runs(checkpoint, runs.run_pretrain_seeds(checkpoint))[0][1]
    complete_config(completed, store, checkpoint, typed)
    return completed.to_dict()


def check_choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    """A check of an option that is not a RunConfig field (those are checked by kebr_core.config)."""
    if value not in allowed:
        raise KebrError(f"{option} must be one of {', '.join(allowed)}, not '{value}'.")
    return value


def check_run_dir(out: Path, *inputs: Optional[Path]) -> None:
    """A run directory is not an input, holds none (`--force` there removes run files) and is not a file:
    one sentence instead of FileExistsError (`kebr_core.io.check_output`, the one check of every output)."""
    check_output(out, inputs, folder=True)
    if out.exists() and not out.is_dir():
        raise KebrError(f"--out {out} is a file; give a folder for the run (e.g. runs/NAME).")


# Options shared by both commands (Typer needs them spelled out per command).
TextModel = typer.Option(DEFAULT_TEXT_MODEL, "--text-model", help="Hugging Face name or local folder of the text encoder (default: the embedded all-MiniLM-L6-v2; e.g. bert-large-uncased).")
G = typer.Option(0.2, "--g", help="MCC angle penalty g in (-0.5, 0.5) (Eq. 11–13): the balanced zero of the loss is cos θ_a = cos θ_v = 0.5 − g: under the paper's form one of whole curves of zeros (docs/design.md §5.5), under --mcc-form balanced the only one.")
S = typer.Option(1.0, "--s", parser=number(0, low_open=True), help="MCC scaling factor s.")
LambdaMCC = typer.Option(1.0, "--lambda-mcc", parser=number(0), help="Weight λ of the MCC loss (0 turns MCC off, ablation C4).")
# The choices as help shows them; kebr_core.config checks the values against the same tuples.
FORM_CHOICES, ALIGN_CHOICES = "|".join(FORMS), "|".join(ALIGNS)
MCCForm = typer.Option("paper", "--mcc-form", metavar=FORM_CHOICES, help="MCC formula: paper (Eq. 11–12), reference (the authors' fine-tuning code), mean-cosine (their pretraining code; they used --g 0.25 --lambda-mcc 0.5) or balanced (kebr's, not the paper's: (c_a − c*)² + (c_v − c*)², one zero at c_a = c_v = c* = 0.5 − g).")
MCCAlign = typer.Option("tile", "--mcc-align", metavar=ALIGN_CHOICES, help="How X_K and X0m are compared: tile (kebr's pairwise tile of each sample's valid part), authors (the authors' code: all three streams tiled to the longest, padding included) or projected (pooled means in d_t).")
Layers = typer.Option(4, "--layers", min=1, help="Number of TCMF layers K (Eq. 2).")
Shared = typer.Option(True, "--shared-layers/--no-shared-layers", help="One TCMF layer applied K times (the authors') or K independent layers.")
Heads = typer.Option(1, "--heads", min=1, help="Attention heads in cross-modal attention (paper: 1).")
FFN = typer.Option("mlp", "--ffn", metavar="mlp|linear", help="TCMF feed-forward: mlp (Linear-GELU-Linear) or linear (the authors').")
AttentionWidth = typer.Option(None, "--attention-width", min=1, help="Cross-modal attention width w with an output projection back to the text's width (the authors': 256); default: the text's width, no projection (the paper's Eq. 3–6).")
ModalityDropout = typer.Option(0.0, "--modality-dropout", parser=number(0, 1, high_open=True), help="Probability that a training sample's --dropped-modality stream is removed for the step (fine-tuning only, never at validation or test; seeded): modality dropout of a dominant stream. 0 = off.")
DroppedModality = typer.Option("audio", "--dropped-modality", metavar="audio|vision", help="The stream --modality-dropout removes.")
RandomWord = typer.Option("fixed", "--random-word", metavar="fixed|per-epoch", help="A text without a lexicon word gets a random word masked: drawn once per run (fixed) or redrawn every epoch (per-epoch, the authors').")
HeadHidden = typer.Option(128, "--head-hidden", min=1, help="Hidden units of the prediction heads (the authors': 256).")
BatchSize = typer.Option(32, "--batch-size", min=1, help="Batch size.")
MaxParameters = typer.Option(DEFAULT_MAX_PARAMETERS, "--max-parameters", min=1, help="The largest model built, in parameters counted from its settings before any memory is taken (a larger one is refused).")
MaxTextLen = typer.Option(50, "--max-text-len", min=3, help="Maximum text length in wordpieces (the masked word is kept inside).")
Seed = typer.Option(0, "--seed", min=0, help="Random seed (a CPU run is repeatable bit for bit).")
Device = typer.Option("auto", "--device", metavar=DEVICE_METAVAR, help="auto, cpu or cuda (cuda:N for GPU N).")
LoaderWorkers = typer.Option(None, "--loader-workers", min=0, help="DataLoader worker processes (default: up to 4 per process on CUDA, 0 on CPU).")
OldWorkers = typer.Option(None, "--workers", min=0, hidden=True, help="Old name of --loader-workers.")
BF16 = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: on for CUDA, off for CPU).")
Dropout = typer.Option(0.1, "--dropout", parser=number(0, 1, high_open=True), help="Dropout in TCMF and the heads (the authors': 0.5).")
NProc = typer.Option(1, "--nproc-per-node", min=1, help="Processes for data-parallel training (DDP via torchrun; one per GPU, or gloo on CPU).")
Preset = typer.Option(None, "--preset", metavar="paper|authors", help="'paper': what §4.2 states (200 epochs per stage, batch 32, lr 5e-6 encoder / 1e-4 the rest, g 0.2); 'authors': their released code's recipe per stage (docs/design.md §10).")
ConfigFile = typer.Option(None, "--config", help="Settings from a file: JSON (any run's config.json replays that run) or TOML with \\[model], \\[mcc], \\[train]. Options typed here override it.")
Set = typer.Option([], "--set", help="Override one setting, dotted and type-checked, e.g. --set mcc.g=0.3 --set train.lr=2e-5 (repeatable; wins over everything).")
PrintConfig = typer.Option(False, "--print-config", help="Print the resolved configuration (defaults < preset < --config < options < --set) and exit.")
PretrainOnTest = typer.Option(False, "--pretrain-on-test", help="Pretrain on the test split's inputs too (transductive; labels still unused). By default a store's test split is left out of pretraining.")
ReportTo = typer.Option([], "--report-to", metavar="tensorboard", help="Also log each epoch's metrics.csv columns, the configuration with the final metrics, and kebr analyze's figures to TensorBoard (events beside each metrics.csv; needs pip install kebr\\[tensorboard]). Repeatable; not part of the run's identity.")
CheckpointEverySteps = typer.Option(0, "--checkpoint-every-steps", min=0, help="Also save a pretraining checkpoint every N steps inside an epoch, for an exact --resume (0 = off).")
CheckpointEveryMinutes = typer.Option(0.0, "--checkpoint-every-minutes", parser=number(0), help="Also save a pretraining checkpoint inside an epoch every M minutes (e.g. 30 under a batch scheduler; 0 = off).")
TextCacheMode = typer.Option("auto", "--text-cache", metavar="auto|memory|disk", help="Where a frozen encoder's outputs are kept: memory, disk (a file read per batch: RAM independent of the corpus) or auto (disk above 256 MiB).")
TextCacheDtype = typer.Option("float32", "--text-cache-dtype", metavar="float32|float16|bfloat16", help="Storage precision of the text cache (float32: exact; the halves: half the size, rounded).")
TextCacheDir = typer.Option(None, "--text-cache-dir", help="Folder of disk text caches, shared by runs with the same encoder and texts (default: text-cache/ in --out, shared by all of an ablation's runs).")
Force = typer.Option(False, "--force", help="Start the run in --out afresh when it holds another one (removes only files a kebr run wrote there).")


@app.command()
def pretrain(
    ctx: typer.Context,
    store: Optional[Path] = typer.Argument(None, help="Feature store (.h5) to pretrain on, or give it as -d."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Feature store (.h5) to pretrain on; labels are not needed."),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run directory (config, metrics.csv, checkpoints)."),
    g: float = G, s: float = S, lambda_mcc: float = LambdaMCC, mcc_form: str = MCCForm, mcc_align: str = MCCAlign,
    layers: int = Layers, shared_layers: bool = Shared, heads: int = Heads, ffn: str = FFN, text_model: str = TextModel,
    attention_width: Optional[int] = AttentionWidth, head_hidden: int = HeadHidden,
    random_word: str = RandomWord,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs (default 20; the paper used 200: --preset paper)."),
    batch_size: int = BatchSize,
    lr: Optional[float] = typer.Option(None, "--lr", parser=number(0, low_open=True), help="Learning rate of TCMF and the head (default 1e-4)."),
    lr_encoder: Optional[float] = typer.Option(None, "--lr-encoder", parser=number(0, low_open=True), help="Learning rate of the encoder with --unfreeze (default 5e-6)."),
    max_text_len: int = MaxTextLen, max_parameters: int = MaxParameters, seed: int = Seed, device: str = Device,
    loader_workers: Optional[int] = LoaderWorkers,
    workers: Optional[int] = OldWorkers, bf16: Optional[bool] = BF16,
    unfreeze: bool = typer.Option(False, "--unfreeze", help="Train the text encoder too (default: frozen, as the authors)."),
    checkpoint_every: int = typer.Option(5, "--checkpoint-every", min=1, help="Save a checkpoint every N epochs (and at the end)."),
    keep_checkpoints: int = typer.Option(0, "--keep-checkpoints", min=0, help="Keep only the newest N checkpoints/epoch-NNNN folders (0 = all)."),
    checkpoint_every_steps: int = CheckpointEverySteps, checkpoint_every_minutes: float = CheckpointEveryMinutes,
    text_cache: str = TextCacheMode, text_cache_dtype: str = TextCacheDtype, text_cache_dir: Optional[str] = TextCacheDir,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint (an error when there is none)."),
    resume_if_possible: bool = typer.Option(False, "--resume-if-possible", help="Continue the run in --out when it has a checkpoint, else start it."),
    splits: Optional[str] = typer.Option(None, "--splits", metavar="train,valid,unlabeled", help="Splits of the store to pretrain on (default: every split but test; a store without a test split: all samples)."),
    pretrain_on_test: bool = PretrainOnTest,
    seeds: Optional[str] = typer.Option(None, "--seeds", callback=seeds_option, help="Pretraining seeds: a count (3 = seeds 0..2) or a list; each is one run, in --out/pseed-S/ when there are several (default: the one --seed)."),
    dropout: float = Dropout, nproc_per_node: int = NProc, nnodes: int = NNodes, node_rank: int = NodeRank,
    rdzv_endpoint: Optional[str] = RdzvEndpoint, master_addr: Optional[str] = MasterAddr, master_port: int = MasterPort,
    preset: Optional[str] = Preset, threads: Optional[int] = Threads,
    config: Optional[Path] = ConfigFile, set_: list[str] = Set, print_config_: bool = PrintConfig, force: bool = Force,
    report_to: list[str] = ReportTo,
) -> None:
    """Knowledge-enhanced pretraining: predict the masked sentiment word's intensity (L1) + λ·MCC. A store
    with a test split is pretrained on its other splits (--pretrain-on-test includes the test inputs)."""
    from kebr_core.recipes.pretrain import pretrain_each_seed, pretraining_data

    if launch_wanted(nproc_per_node, nnodes) and not print_config_:
        raise relaunch_distributed(nproc_per_node, nnodes, node_rank, rdzv_endpoint, master_addr, master_port)
    with user_errors(resume_flag="--resume"):
        store = one_store(store, dataset, "pretrain")
        renamed(loader_workers, workers, "--loader-workers", "--workers")  # the old name: a note, or an error if both
        check_run_dir(out, store, config)
        resuming = (resume or resume_if_possible) and not force
        if resuming and seeds is None and runs.run_pretrain_seeds(out):  # a multi-seed run continues with its seeds
            seeds = ",".join(map(str, runs.run_pretrain_seeds(out)))
        if config is None and resuming:
            # A resumed run starts from its own settings; options typed now override them (and must match).
            first = runs.pretrain_seed_runs(out, parse_seeds(seeds))[0][1] if seeds is not None else out
            config = first / runs.CONFIG if (first / runs.CONFIG).is_file() else None
        cfg = command_config(ctx, "pretrain", preset=preset, config_file=config, sets=set_, skip=("seeds",))
        if print_config_:
            print_config(trained_config(cfg, store, None, {}) if store.is_file() else cfg.to_dict())
            return
        require_reporters(cfg.train.report_to)
        if seeds is not None and was_typed(ctx, "seed"):
            raise KebrError("--seed sets one pretraining seed and --seeds several: give one of them.")
        data = pretraining_data(store, splits.split(",") if splits is not None else None, on_test=pretrain_on_test)
        with Reporter(out) as report, using_threads(report, threads):
            report.line(f"settings: {json.dumps(trained_config(cfg, store, None, {}))}", level=Verbosity.VERBOSE)
            if data.note:
                report.note(data.note)
            results = pretrain_each_seed(store, out, cfg, parse_seeds(seeds) if seeds is not None else None,
                                         splits=data.splits, resume=resume, resume_if_possible=resume_if_possible,
                                         force=force, progress=report)
            if not is_main_process():
                return
            several = len(results) > 1
            columns = TRAINING_NAMES  # the per-epoch schema's training metrics
            table = Table(title=f"pretraining: {results[0].epochs_done} epochs (last epoch's means)")
            if several:
                table.add_column("seed", justify="right")
            for k in columns:
                table.add_column(k, justify="right")
            for result in results:
                seed = [str(result.seed)] if several else []
                table.add_row(*seed, *[f"{result.last_row.get(k, float('nan')):.4f}" for k in columns])
            report.result(table)
            result = results[0]  # every seed reads the same samples
            report.result(f"pretrained on {result.samples} sample(s)"
                          + (f" of split(s) {', '.join(data.splits)}" if data.splits is not None else "")
                          + (f"; {result.samples_without_words} without words in their transcript left out (nothing to mask)"
                             if result.samples_without_words else ""))
            where = (f"{len(results)} runs {out}/pseed-S/final (give --pretrained {out} to kebr eval)" if several
                     else str(result.checkpoint))
            report.result(f"checkpoint: [bold]{where}[/]   metrics: {result.run_dir / runs.METRICS}   "
                          f"log: {report.log_path}")


@app.command("eval")
def eval_(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET_HELP),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="The pretraining checkpoint (RUN/final, or a pretraining run directory); none = fine-tune the plain encoder (ablation C2)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", hidden=True, help="Old name of --pretrained."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Run directory (results.json, results.csv, per-seed files)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where mosi/mosei data lives (default: $KEBR_DATA or ./data)."),
    seeds: str = typer.Option("5", "--seeds", callback=seeds_option, help="A count (5 = seeds 0..4, the paper's 5 runs) or a list (1111,1112,1113, MMSA's) → mean ± std. Seeds finished in --out are reused: more seeds than a finished run has run only the new ones, fewer report on those asked for."),
    std: str = typer.Option("sample", "--std", metavar="sample|population", help="Spread over seeds: sample (ddof=1, default) or population (ddof=0, MMSA's np.std)."),
    probe: bool = typer.Option(False, "--probe", help="Also test with audio or vision removed (zeroed, absent): how much each is used."),
    g: float = G, s: float = S, lambda_mcc: float = LambdaMCC, mcc_form: str = MCCForm, mcc_align: str = MCCAlign,
    layers: int = Layers, shared_layers: bool = Shared, heads: int = Heads, ffn: str = FFN, text_model: str = TextModel,
    attention_width: Optional[int] = AttentionWidth, head_hidden: int = HeadHidden,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Fine-tuning epochs (default 10; 200 with --preset paper or authors)."),
    batch_size: int = BatchSize,
    lr: Optional[float] = typer.Option(None, "--lr", parser=number(0, low_open=True), help="Learning rate of the head (default 1e-4)."),
    lr_encoder: Optional[float] = typer.Option(None, "--lr-encoder", parser=number(0, low_open=True), help="Learning rate of the encoder (default 5e-6)."),
    lr_fusion: Optional[float] = typer.Option(None, "--lr-fusion", parser=number(0, low_open=True), help="Learning rate of TCMF (default 5e-6)."),
    max_text_len: int = MaxTextLen, max_parameters: int = MaxParameters, device: str = Device,
    loader_workers: Optional[int] = LoaderWorkers,
    workers: Optional[int] = OldWorkers, bf16: Optional[bool] = BF16,
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Keep the text encoder frozen (faster; default: fine-tune it, as the authors)."),
    text_cache: str = TextCacheMode, text_cache_dtype: str = TextCacheDtype, text_cache_dir: Optional[str] = TextCacheDir,
    modality_dropout: float = ModalityDropout, dropped_modality: str = DroppedModality,
    dropout: float = Dropout, nproc_per_node: int = NProc, nnodes: int = NNodes, node_rank: int = NodeRank,
    rdzv_endpoint: Optional[str] = RdzvEndpoint, master_addr: Optional[str] = MasterAddr, master_port: int = MasterPort,
    preset: Optional[str] = Preset, threads: Optional[int] = Threads,
    config: Optional[Path] = ConfigFile, set_: list[str] = Set, print_config_: bool = PrintConfig, force: bool = Force,
    results_table_path: Optional[Path] = typer.Option(None, "--results-table", help="CSV collecting one row per (run, dataset) across runs, MMSA's columns (default: results-table.csv beside --out)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results (results.json: mean, std, each seed) as one JSON document on stdout instead of the table."),
    name: Optional[str] = typer.Option(None, "--name", help="The row's name in the table and results-table.csv (default: what ran, e.g. 'KEBR (mosi)' with --pretrained, 'KEBR w/o pretraining, text only (mosi)' without one on a text-only store)."),
    seed_shard: Optional[str] = typer.Option(None, "--seed-shard", metavar="i/n", help="Run only this job's share of the seeds: the k-th seed of --seeds (from 0) belongs to shard k mod n, 0 <= i < n. Jobs may run at once on machines sharing --out; then --collect."),
    collect: bool = typer.Option(False, "--collect", help="Only aggregate the seeds finished in --out (by --seed-shard jobs) into results.json; an error listing the seeds not finished yet."),
    report_to: list[str] = ReportTo,
) -> None:
    """Fine-tune on a labeled dataset, pick the epoch by validation MAE, test once per seed; mean ± std.
    Seeds finished in --out earlier (by an earlier run with the same settings and data, or by --seed-shard
    jobs) are reused, not run again: --seeds 4 over a finished 3-seed run runs seed 3 only."""
    from kebr_core.data.registry import resolve_dataset
    from kebr_core.recipes.finetune import finetune, finetune_each_pretraining, is_multi_seed_pretraining

    if launch_wanted(nproc_per_node, nnodes) and not print_config_:
        raise relaunch_distributed(nproc_per_node, nnodes, node_rank, rdzv_endpoint, master_addr, master_port)
    with user_errors():
        checkpoint = renamed(pretrained, checkpoint, "--pretrained", "--checkpoint")
        renamed(loader_workers, workers, "--loader-workers", "--workers")
        cfg = command_config(ctx, "finetune", preset=preset, config_file=config, sets=set_)
        data_dir = data_dir or Path(os.environ.get("KEBR_DATA", "data"))
        if print_config_:
            present = store_if_present(dataset, data_dir)
            print_config(trained_config(cfg, present, checkpoint, typed_settings(ctx, set_)) if present else cfg.to_dict())
            return
        check_choice(std, ("sample", "population"), "--std")
        require_reporters(cfg.train.report_to)
        check_run_dir(out, Path(dataset), checkpoint, config)
        with Reporter(out) as report, using_threads(report, threads):
            resolved = resolve_dataset(dataset, data_dir, warn=report.warning)
            report.line(f"settings: {json.dumps(trained_config(cfg, resolved, checkpoint, typed_settings(ctx, set_)))}",
                        level=Verbosity.VERBOSE)
            inputs = store_inputs(resolved)
            name = name or row_name(checkpoint is not None, inputs, dataset)
            caption = ", ".join(filter(None, (f"{Path(dataset).name}: test split", inputs_caption(inputs))))
            check_run_dir(out, resolved)  # --dataset mosi names a store only now
            table_path = results_table_path or out.parent / runs.RESULTS_TABLE
            check_output(table_path, [resolved, checkpoint, config], option="--results-table")
            shard = parse_shard(seed_shard, "--seed-shard")
            if shard is not None and collect:
                raise KebrError("--seed-shard runs seeds and --collect runs none: give one of them.")
            options = dict(probe=probe, std=std, force=force, seed_shard=shard, collect=collect, progress=report,
                           typed=typed_settings(ctx, set_), note=report.note)
            if checkpoint is not None and is_multi_seed_pretraining(checkpoint):
                nested = finetune_each_pretraining(resolved, out, cfg, checkpoint, **options)
                if is_main_process():
                    _report_nested(report, nested, dataset, seed_shard, results_table_path, std, as_json, name, caption,
                                   inputs)
                return
            result = finetune(resolved, out, cfg, checkpoint=checkpoint, **options)
            if not is_main_process():
                return
            if shard is not None:
                waiting = f"; seed(s) {', '.join(map(str, result.pending))} are other shards'" if result.pending else ""
                report.result(f"shard {seed_shard}: {len(result.per_seed)} of {len(cfg.train.seeds)} seed(s) finished in "
                              f"{out}{waiting}. When every shard has finished: "
                              f"{resume_command('--collect', drop=('--seed-shard',))}", to_stdout=not as_json)
                return
            results_files.update_results_table(table_path, [results_files.ResultsRow(name, dataset, out, cfg.train.seeds, result.summary,
                                                                                     inputs=inputs)])
            rows = {name: result.summary} | {f"{name}, {removed}": summary for removed, summary in result.probe.items()}
            report.result(results_table(caption, rows, list(cfg.train.seeds), width=console.width, std=std),
                          to_stdout=not as_json)
            left_out = {s: n for s, n in result.unlabeled.items() if n}
            if left_out:
                report.result("unlabeled samples (NaN label) left out of fine-tuning and evaluation: "
                              + ", ".join(f"{s} {n}" for s, n in left_out.items()), to_stdout=not as_json)
            report.result(f"results: [bold]{out / runs.RESULTS_JSON}[/], {out / runs.RESULTS_CSV}; across runs: "
                          f"{table_path}   log: {report.log_path}", to_stdout=not as_json)
    if as_json and (out / runs.RESULTS_JSON).is_file():
        typer.echo(json.dumps({"run_dir": str(out)} | json.loads((out / runs.RESULTS_JSON).read_text()), indent=2))


def _report_nested(report: Reporter, nested, dataset: str, seed_shard: Optional[str], results_table_path: Optional[Path],
                   std: str, as_json: bool, name: str, caption: str, inputs: str) -> None:
    """What `kebr eval` prints for a multi-seed pretraining: the summary over P × F runs, and where each run is."""
    out = nested.run_dir
    if not nested.summary:
        report.result(f"shard {seed_shard}: the seeds of this shard finished in each {out}/pseed-S. When every shard has "
                      f"finished: {resume_command('--collect', drop=('--seed-shard',))}", to_stdout=not as_json)
        return
    seeds = nested.per_pretraining[0].seeds
    table_path = results_table_path or out.parent / runs.RESULTS_TABLE
    results_files.update_results_table(table_path, [results_files.ResultsRow(name, dataset, out, seeds, nested.summary, inputs=inputs)])
    report.result(results_table(caption, {name: nested.summary}, seeds,
                                width=console.width, std=std, pretrain_seeds=nested.pretrain_seeds), to_stdout=not as_json)
    report.result(f"results: [bold]{out / runs.RESULTS_JSON}[/] (every run), {out}/pseed-S/ (each pretraining's); "
                  f"across runs: {table_path}   log: {report.log_path}", to_stdout=not as_json)
