"""`kebr pretrain` and `kebr eval`: parse options into a RunConfig, call the recipe, render results.

The settings' options are generated from their declaration in kebr_core.config (`kebr_cli.options`); the
helpers above the commands are shared with `kebr ablate` and `kebr tune`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from kebr_cli.app import (
    Verbosity, app, console, is_main_process, one_store, renamed, resume_command, user_errors,
)
from kebr_cli.launcher import MasterAddr, MasterPort, NNodes, NodeRank, RdzvEndpoint, launch_wanted, relaunch_distributed
from kebr_cli.reporter import Reporter
from kebr_cli.extract import parse_shard
from kebr_cli.options import (
    ConfigFile, DataDir, Force, NProc, Preset, PretrainOnTest, PrintConfig, ResultsTable, Set, Std, command_config,
    renamed_settings, seeds_option, typed_settings, was_typed, with_settings,
)
from kebr_cli.tables import results_table
from kebr_cli.threads import Threads, using_threads
from kebr_core.data.catalog import DATASET_HELP
from kebr_core import results_files, runs
from kebr_core.config import RunConfig, parse_seeds
from kebr_core.errors import KebrError
from kebr_core.io import check_output
from kebr_core.metric_logger import require as require_reporters
from kebr_core.epoch_metrics import TRAINING_NAMES
from kebr_core.row_names import inputs_caption, row_name, store_inputs

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


# Each command's parameters in help's order: hand-written ones and the settings' generated options
# (`kebr_cli.options.with_settings`); a setting added to kebr_core.config and not listed goes after the
# last setting listed.
PRETRAIN_ORDER = """ctx store dataset out g s lambda_mcc mcc_form mcc_align layers shared_layers heads ffn text_model
    attention_width head_hidden random_word epochs batch_size lr lr_encoder max_text_len max_parameters seed device
    loader_workers workers bf16 unfreeze checkpoint_every keep_checkpoints checkpoint_every_steps
    checkpoint_every_minutes text_cache text_cache_dtype text_cache_dir resume resume_if_possible splits
    pretrain_on_test seeds dropout nproc_per_node nnodes node_rank rdzv_endpoint master_addr master_port preset
    threads config set_ print_config_ force report_to"""
EVAL_ORDER = """ctx dataset pretrained checkpoint out data_dir seeds std probe g s lambda_mcc mcc_form mcc_align layers
    shared_layers heads ffn text_model attention_width head_hidden epochs batch_size lr lr_encoder lr_fusion
    max_text_len max_parameters device loader_workers workers bf16 freeze_encoder text_cache text_cache_dtype
    text_cache_dir modality_dropout dropped_modality dropout nproc_per_node nnodes node_rank rdzv_endpoint
    master_addr master_port preset threads config set_ print_config_ force results_table_path as_json name
    seed_shard collect report_to"""


@app.command()
@with_settings("pretrain", PRETRAIN_ORDER)
def pretrain(
    ctx: typer.Context,
    store: Optional[Path] = typer.Argument(None, help="Feature store (.h5) to pretrain on, or give it as -d."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Feature store (.h5) to pretrain on; labels are not needed."),
    out: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run directory (config, metrics.csv, checkpoints)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint (an error when there is none)."),
    resume_if_possible: bool = typer.Option(False, "--resume-if-possible", help="Continue the run in --out when it has a checkpoint, else start it."),
    splits: Optional[str] = typer.Option(None, "--splits", metavar="train,valid,unlabeled", help="Splits of the store to pretrain on (default: every split but test; a store without a test split: all samples)."),
    pretrain_on_test: bool = PretrainOnTest,
    seeds: Optional[str] = typer.Option(None, "--seeds", callback=seeds_option, help="Pretraining seeds: a count (3 = seeds 0..2) or a list; each is one run, in --out/pseed-S/ when there are several (default: the one --seed)."),
    nproc_per_node: int = NProc, nnodes: int = NNodes, node_rank: int = NodeRank,
    rdzv_endpoint: Optional[str] = RdzvEndpoint, master_addr: Optional[str] = MasterAddr, master_port: int = MasterPort,
    preset: Optional[str] = Preset, threads: Optional[int] = Threads,
    config: Optional[Path] = ConfigFile, set_: list[str] = Set, print_config_: bool = PrintConfig, force: bool = Force,
    **settings: Any,
) -> None:
    """Knowledge-enhanced pretraining: predict the masked sentiment word's intensity (L1) + λ·MCC. A store
    with a test split is pretrained on its other splits (--pretrain-on-test includes the test inputs)."""
    from kebr_core.recipes.pretrain import pretrain_each_seed, pretraining_data

    if launch_wanted(nproc_per_node, nnodes) and not print_config_:
        raise relaunch_distributed(nproc_per_node, nnodes, node_rank, rdzv_endpoint, master_addr, master_port)
    with user_errors(resume_flag="--resume"):
        store = one_store(store, dataset, "pretrain")
        renamed_settings(ctx)  # an old name: a note, or an error if both
        check_run_dir(out, store, config)
        resuming = (resume or resume_if_possible) and not force
        if resuming and seeds is None and runs.run_pretrain_seeds(out):  # a multi-seed run continues with its seeds
            seeds = ",".join(map(str, runs.run_pretrain_seeds(out)))
        if config is None and resuming:
            # A resumed run starts from its own settings; options typed now override them (and must match).
            first = runs.pretrain_seed_runs(out, parse_seeds(seeds))[0][1] if seeds is not None else out
            config = first / runs.CONFIG if (first / runs.CONFIG).is_file() else None
        cfg = command_config(ctx, "pretrain", preset=preset, config_file=config, sets=set_)
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
@with_settings("eval", EVAL_ORDER)
def eval_(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET_HELP),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="The pretraining checkpoint (RUN/final, or a pretraining run directory); none = fine-tune the plain encoder (ablation C2)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", hidden=True, help="Old name of --pretrained."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Run directory (results.json, results.csv, per-seed files)."),
    data_dir: Optional[Path] = DataDir, std: str = Std,
    probe: bool = typer.Option(False, "--probe", help="Also test with audio or vision removed (zeroed, absent): how much each is used."),
    nproc_per_node: int = NProc, nnodes: int = NNodes, node_rank: int = NodeRank,
    rdzv_endpoint: Optional[str] = RdzvEndpoint, master_addr: Optional[str] = MasterAddr, master_port: int = MasterPort,
    preset: Optional[str] = Preset, threads: Optional[int] = Threads,
    config: Optional[Path] = ConfigFile, set_: list[str] = Set, print_config_: bool = PrintConfig, force: bool = Force,
    results_table_path: Optional[Path] = ResultsTable,
    as_json: bool = typer.Option(False, "--json", help="Print the results (results.json: mean, std, each seed) as one JSON document on stdout instead of the table."),
    name: Optional[str] = typer.Option(None, "--name", help="The row's name in the table and results-table.csv (default: what ran, e.g. 'KEBR (mosi)' with --pretrained, 'KEBR w/o pretraining, text only (mosi)' without one on a text-only store)."),
    seed_shard: Optional[str] = typer.Option(None, "--seed-shard", metavar="i/n", help="Run only this job's share of the seeds: the k-th seed of --seeds (from 0) belongs to shard k mod n, 0 <= i < n. Jobs may run at once on machines sharing --out; then --collect."),
    collect: bool = typer.Option(False, "--collect", help="Only aggregate the seeds finished in --out (by --seed-shard jobs) into results.json; an error listing the seeds not finished yet."),
    **settings: Any,
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
        renamed_settings(ctx)
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
