"""`kebr tune`: a hyperparameter search on validation (Optuna), resumable, on one machine or many."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer

from kebr_cli.app import Verbosity, app, choices, user_errors
from kebr_cli.options import (
    ConfigFile, DataDir, Force, Preset, PrintConfig, Set, command_config, with_settings,
)
from kebr_cli.reporter import Reporter
from kebr_cli.threads import Threads, using_threads
from kebr_cli.train import check_run_dir, print_config, store_if_present, trained_config
from kebr_core.data.catalog import DATASET_HELP
from kebr_core import runs
from kebr_core.metric_logger import require as require_reporters
from kebr_core.recipes.tune import METRICS, SAMPLERS, TUNE_STAGES

Sampler = choices("Sampler", *SAMPLERS)
Metric = choices("Metric", *METRICS)
TuneStage = choices("TuneStage", *TUNE_STAGES)


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trial_line(record, best, done: int, total: int, metric: str) -> str:
    """'trial 3/20 #2 · mcc.g=0.12 train.lr=0.00032 · valid mae 0.8123 · best 0.7990 (#1)' (or 'pruned at epoch 2')."""
    params = " ".join(f"{k}={_value(v)}" for k, v in record.params.items())
    if record.state == "COMPLETE":
        outcome = f"valid {metric} {record.value:.4f}"
    elif record.state == "PRUNED":
        outcome = f"pruned at epoch {record.epochs_run}"
    else:
        outcome = "failed (the loss became NaN or infinite)"
    best_text = f" · best {best.value:.4f} (#{best.number})" if best is not None else ""
    seconds = f" ({record.seconds:.1f} s)" if record.seconds is not None else ""
    return f"trial {done}/{total} #{record.number} · {params} · {outcome}{best_text}{seconds}"


TUNE_ORDER = """ctx dataset pretrained out data_dir space trials sampler prune metric storage heartbeat stage
    pretrain_epochs seeds finalize no_finalize text_model epochs batch_size device preset config set_ print_config_
    force threads as_json report_to"""  # help's order (kebr_cli.options.with_settings)


@app.command()
@with_settings("tune", TUNE_ORDER)
def tune(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET_HELP),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="The pretraining checkpoint every trial fine-tunes from (RUN/final or a pretraining run); none = the plain encoder."),
    out: Path = typer.Option(Path("runs/tune"), "--out", "-o", help="Run directory (config.json, tune.db, trials.csv, best.toml, tune.json)."),
    data_dir: Optional[Path] = DataDir,
    space: str = typer.Option("paper", "--space", help="The search space: a TOML or JSON file mapping dotted settings to ranges or lists, or 'paper' (g, λ, lr, dropout; K too with --stage both)."),
    trials: int = typer.Option(20, "--trials", min=1, help="Trials the study ends with (over every process working on it); then the best is evaluated on test."),
    sampler: Sampler = typer.Option("tpe", "--sampler", help="tpe (Optuna's default), random (MMSA's tune mode) or grid (every combination of lists and steps)."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Stop a trial whose per-epoch validation value is worse than the median of earlier trials' at that epoch (MedianPruner)."),
    metric: Metric = typer.Option("mae", "--metric", help="The validation metric to select on: mae (lower is better), corr or acc2_non0 (higher)."),
    storage: Optional[str] = typer.Option(None, "--storage", metavar="URL", help="An Optuna storage URL shared by several kebr tune processes, e.g. postgresql://user@host/db (put the password in ~/.pgpass); default: sqlite in OUT/tune.db."),
    heartbeat: int = typer.Option(30, "--heartbeat", min=1, help="Seconds between a running trial's heartbeats; a trial silent for twice as long (its process died) is marked failed and run again."),
    stage: TuneStage = typer.Option("finetune", "--stage", help="finetune: every trial fine-tunes --pretrained; both: every trial pretrains first (on train + valid), then fine-tunes."),
    pretrain_epochs: int = typer.Option(20, "--pretrain-epochs", min=1, help="Pretraining epochs of each trial with --stage both."),
    finalize: bool = typer.Option(False, "--finalize", help="Run no more trials: finalise the study as it is (trials.csv, best.toml, the best and base configurations on test)."),
    no_finalize: bool = typer.Option(False, "--no-finalize", help="Stop after the trials without the evaluation on test (finalise later with --finalize)."),
    preset: Optional[str] = Preset, config: Optional[Path] = ConfigFile, set_: list[str] = Set,
    print_config_: bool = PrintConfig, force: bool = Force, threads: Optional[int] = Threads,
    as_json: bool = typer.Option(False, "--json", help="Print the outcome (best trial, final evaluation) as one JSON document on stdout."),
    **settings: Any,
) -> None:
    """Search hyperparameters on the validation split (Optuna), resumably; evaluate the best on test once.
    Rerunning the command continues the study; several processes (--storage) share one."""
    from kebr_core.data.registry import resolve_dataset
    from kebr_core.errors import KebrError
    from kebr_core.recipes.tune import TuneOptions
    from kebr_core.recipes.tune import tune as run_tune
    from kebr_core.search_space import load_space

    with user_errors():
        cfg = command_config(ctx, "finetune", preset=preset, config_file=config, sets=set_)
        data_dir = data_dir or Path(os.environ.get("KEBR_DATA", "data"))
        if print_config_:
            present = store_if_present(dataset, data_dir)
            print_config(trained_config(cfg, present, pretrained, {}) if present else cfg.to_dict())
            return
        require_reporters(cfg.train.report_to)
        if finalize and no_finalize:
            raise KebrError("--finalize and --no-finalize contradict each other: give one of them.")
        # A pretrained checkpoint fixes K: the built-in space searches model.layers with --stage both only.
        the_space = load_space(space, leave_out=("model.layers",) if stage.value == "finetune" else ())
        check_run_dir(out, Path(dataset), *([pretrained] if pretrained else []))
        options = TuneOptions(trials=trials, sampler=sampler.value, prune=prune, metric=metric.value, storage=storage,
                              heartbeat=heartbeat, stage=stage.value, pretrain_epochs=pretrain_epochs)
        # a line per trial; each trial's epochs only with --verbose (50 trials × 10 epochs would bury them)
        with Reporter(out, epoch_lines=Verbosity.VERBOSE) as report, using_threads(report, threads):
            resolved = resolve_dataset(dataset, data_dir, warn=report.warning)
            report.line(f"settings: {json.dumps(trained_config(cfg, resolved, pretrained, {}))}", level=Verbosity.VERBOSE)

            def on_trial(record, best, done, total) -> None:
                report("trials", done, total, {})
                report.line(trial_line(record, best, done, total, metric.value))

            result = run_tune(resolved, out, cfg, the_space, options, pretrained=pretrained, finalize_only=finalize,
                              finalize=not no_finalize, force=force, on_trial=on_trial, progress=report)
            best = result.best
            if best is not None:
                report.result(f"best trial #{best.number}: validation {metric.value} {best.value:.4f} with "
                              + ", ".join(f"{k}={_value(v)}" for k, v in best.params.items())
                              + f"; {result.finished} trial(s) finished, {result.pruned_epochs_saved} epoch(s) saved by "
                              "pruning", to_stdout=not as_json)
            if result.final:
                mae = {k: result.final[k]["mean"]["mae"] for k in ("best", "base")}
                d = result.final["paired"]["mae"]
                interval = f" [{d['low']:+.4f}, {d['high']:+.4f}]" if d["low"] == d["low"] else ""  # NaN: one seed
                report.result(f"on test over {len(result.final['seeds'])} seed(s): MAE {mae['best']:.4f} (best) vs "
                              f"{mae['base']:.4f} (base), paired Δ {d['mean']:+.4f}{interval}; replay: kebr eval "
                              f"--dataset {dataset} --config "
                              f"{out / runs.BEST_TOML}" + (f" --pretrained {pretrained}" if pretrained else ""),
                              to_stdout=not as_json)
            report.result(f"trials: [bold]{out / runs.TRIALS_CSV}[/]   log: {report.log_path}", to_stdout=not as_json)
    if as_json:
        payload = {"run_dir": str(out), "finished": result.finished, "pruned_epochs_saved": result.pruned_epochs_saved,
                   "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
                   "final": result.final or None}
        typer.echo(json.dumps(payload, indent=2, default=str))
