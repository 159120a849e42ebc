"""Recipe: `kebr tune`, a hyperparameter search on Optuna that selects on validation only (README
"Hyperparameter search"; docs/design.md §8).

Each trial takes the base configuration, sets the trial's values of the search space
(`kebr_core.search_space`), fine-tunes one seed (from `pretrained`, or pretrains first on the train and
valid splits with stage="both") and scores the best epoch's validation metric (MAE by default). The
test split is never read during the search: its features are not in any dataset, its texts are blanked
before tokenising (`finetune.split_datasets`). Each epoch's validation value is reported to the trial;
Optuna's MedianPruner stops a trial whose value is worse than the median of earlier trials at the same
epoch (`prune=False` turns it off). The fine-tuning loop only sees a generic `on_epoch` callback.

The study lives in `storage` (default: sqlite in RUN_DIR/tune.db). A rerun continues it: finished trials
are kept; a trial whose process died (kill -9, a lost machine) stops sending its heartbeat, is marked
failed after `2 × heartbeat` seconds and is run again with the same values (Optuna's heartbeat and
RetryHeartbeatStaleTrialCallback). Several processes, on one machine or many (a PostgreSQL URL), work on one
study; each stops when the study has `trials` trials finished or running, so together they run exactly
`trials` (in the rare case two processes start their last trial in the same instant, one more).

The run's identity (config.json, and the study's own user attribute, which machines sharing a study
compare) is the base configuration, the search space, the data fingerprint, the pretrained checkpoint,
the stage and the metric: a mismatch is refused naming the keys.

Finalising (`finalize`, after the last trial): trials.csv (one row per trial: MMSA's result columns on
the validation split, every parameter, state, objective value, epochs run, seconds), best.toml (the best
trial's whole configuration, replayable with `kebr eval --config best.toml`), then the best and the base
configurations each evaluated once over `seeds` on test (`finetune`, into best-eval/ and base-eval/),
and tune.json with both summaries and the paired difference per test metric over the shared seeds
(`kebr_core.stats.paired_difference`).

Over 400 lines, it stays one module because it is one cohesive thing: the search's lifecycle (study,
objective, stopping rule, finalising) around one Optuna study.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kebr_core import checkpoints, results_files, run_identity, runs
from kebr_core.io import atomic_write_text
from kebr_core.config import RunConfig, config_toml
from kebr_core.data.store import FeatureStore
from kebr_core.distributed import DistInfo
from kebr_core.epoch_metrics import VALID_PREFIX, VALIDATION
from kebr_core.errors import KebrError
from kebr_core.metric_logger import require
from kebr_core.metrics import split_summary
from kebr_core.recipes.finetune import (
    apply_checkpoint_config,
    finetune,
    fit_on_validation,
    labeled_splits,
    split_datasets,
)
from kebr_core.recipes.setup import configure_from_store
from kebr_core.search_space import SearchSpace, parse_space, space_identity
from kebr_core.shards import locked
from kebr_core.stats import paired_difference
from kebr_core.training import NonFiniteLoss, ProgressFn, no_progress, resolve_device

SAMPLERS = ("tpe", "random", "grid")
TUNE_STAGES = ("finetune", "both")
# The validation metrics a search can select on (metrics.csv's valid_ columns) and their direction.
METRICS = {metric.name: metric.direction for metric in VALIDATION}
STUDY_NAME = "kebr"
IDENTITY_ATTR = "kebr_identity"
# What a fine-tuning checkpoint fixes: `apply_checkpoint_config` takes these model fields from it.
CHECKPOINT_KEEPS = {"model.dropout", "model.max_text_len", "model.max_audio_len", "model.max_vision_len"}


@dataclass
class TuneOptions:
    """How the search runs. trials: trials the study ends with; sampler: tpe (Optuna's default), random
    (MMSA's tune mode) or grid; prune: MedianPruner on the per-epoch validation value; metric: a key of
    METRICS; storage: an Optuna RDB URL (None: sqlite RUN_DIR/tune.db); heartbeat: seconds between a
    trial's heartbeats (a silent trial is failed after twice that); stage: "finetune" (from `pretrained`)
    or "both" (pretrain each trial first, `pretrain_epochs` epochs on train + valid); sampler_seed: the
    sampler's random seed (None: fresh each process). Each trial fine-tunes the base configuration's
    first seed (train.seeds[0]); the final evaluation runs all of train.seeds."""

    trials: int = 20
    sampler: str = "tpe"
    prune: bool = True
    metric: str = "mae"
    storage: str | None = None
    heartbeat: int = 30
    stage: str = "finetune"
    pretrain_epochs: int = 20
    sampler_seed: int | None = None


@dataclass
class TrialRecord:
    """One finished trial, as the per-trial line and trials.csv show it."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: dict[str, Any]
    value: float | None  # the objective: the best epoch's validation metric
    epochs_run: int | None
    seconds: float | None
    valid: dict[str, float]  # every validation metric at the best epoch (empty when pruned or failed)


@dataclass
class TuneResult:
    run_dir: Path
    trials: list[TrialRecord]
    best: TrialRecord | None
    finished: int  # trials COMPLETE or PRUNED
    pruned_epochs_saved: int  # epochs the pruner did not run (trials × epochs − epochs run)
    final: dict[str, Any] = field(default_factory=dict)  # tune.json's "final" after finalising


def check_options(space: SearchSpace, options: TuneOptions, pretrained: Path | None) -> None:
    """Option combinations that cannot work, refused in one sentence each."""
    if options.sampler not in SAMPLERS:
        raise KebrError(f"--sampler must be one of {', '.join(SAMPLERS)}, not '{options.sampler}'.")
    if options.metric not in METRICS:
        raise KebrError(f"--metric must be one of {', '.join(METRICS)}, not '{options.metric}'.")
    if options.stage not in TUNE_STAGES:
        raise KebrError(f"--stage must be one of {', '.join(TUNE_STAGES)}, not '{options.stage}'.")
    if options.trials < 1:
        raise KebrError(f"--trials must be ≥ 1, not {options.trials}.")
    if options.heartbeat < 1:
        raise KebrError(f"--heartbeat must be ≥ 1 second, not {options.heartbeat}.")
    if options.stage == "both" and pretrained is not None:
        raise KebrError("--stage both pretrains in every trial: drop --pretrained (or use --stage finetune).")
    if options.stage == "finetune" and pretrained is not None:
        fixed = [p.key for p in space if p.key.startswith("model.") and p.key not in CHECKPOINT_KEEPS]
        if fixed:
            raise KebrError(f"{', '.join(fixed)} {'is' if len(fixed) == 1 else 'are'} fixed by the pretrained checkpoint "
                            f"{pretrained}; search {'it' if len(fixed) == 1 else 'them'} with --stage both, or leave "
                            f"{'it' if len(fixed) == 1 else 'them'} out of the space.")
    if options.sampler == "grid":
        for p in space:
            p.grid()  # a range without a step cannot be a grid: refused naming it


def trial_config(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The base configuration with a trial's values set (each checked by the configuration's rules)."""
    cfg = copy.deepcopy(base)
    return cfg.set_values(params, labels={k: f"the search's {k}" for k in params})


def _open_study(run_dir: Path, options: TuneOptions, identity: dict[str, Any], create: bool):
    """The Optuna study of this run, created or loaded, with heartbeats and the retry of dead trials. A
    study holding another search (its recorded identity differs) is refused naming the keys."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # kebr prints its own line per trial (failed ones too)
    # heartbeats, fail_stale_trials and the retry callback are marked experimental; kebr relies on them knowingly
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = runs.study_url(run_dir, options.storage)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):
        try:
            # Processes starting at once may race to create the tables (a lock where they share the run
            # folder, a retry where they share only the database).
            with locked(run_dir / runs.LOCK):
                storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=options.heartbeat,
                                     grace_period=2 * options.heartbeat,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
            break
        except ImportError as e:
            raise KebrError(f"--storage {url.split('://')[0]}:// needs a database driver that is not installed ({e}); "
                            "for PostgreSQL, install psycopg2-binary (kebr's postgres extra).") from None
        except Exception as e:  # sqlalchemy's errors: an unreachable server, a bad URL, a lost race
            if attempt == 2:
                raise KebrError(f"The study storage {runs.masked_url(url)} cannot be opened: "
                                f"{str(e).strip().splitlines()[0][:200]}.") from None
            time.sleep(1.0 + attempt)
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=options.sampler_seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=options.sampler_seed),
               "grid": lambda: optuna.samplers.GridSampler({p.key: p.grid() for p in identity["_space"]},
                                                           seed=options.sampler_seed)}[options.sampler]()
    # Optuna's defaults: no pruning before 5 trials have finished; from then on, from the first epoch
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0) if options.prune else optuna.pruners.NopPruner()
    if not create:
        try:
            return optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise KebrError(f"No search has run in {run_dir} yet (no study in {runs.masked_url(url)}); run kebr tune without "
                            "--finalize first.") from None
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner,
                                direction=METRICS[options.metric], load_if_exists=True)
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    shared = {k: v for k, v in identity.items() if not k.startswith("_")}
    # paths differ between machines sharing a study: the data's and checkpoint's content identify them
    shared["data"] = {k: v for k, v in shared["data"].items() if k != "store"}
    shared.pop("checkpoint", None)
    if recorded is None:
        study.set_user_attr(IDENTITY_ATTR, json.loads(json.dumps(shared, default=str)))
    else:
        diffs = run_identity.identity_differences(recorded, json.loads(json.dumps(shared, default=str)))
        if diffs:
            raise KebrError(f"The study in {runs.masked_url(url)} holds another search: {'; '.join(diffs)}; give another "
                            "--storage (or --out for the default tune.db), or start afresh with --force.")
    return study


# A trial started while another process took the search's last slot at the same moment (the check before a
# trial starts and its start are not one step in a shared study): marked so, stopped before it trains, and
# counted nowhere (`_counted`).
SURPLUS = "surplus"


def _counted(study, before: int | None = None) -> list:
    """The trials that count towards --trials: finished (COMPLETE, PRUNED) or running, not surplus; with
    `before`, only those numbered lower."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
            if not t.user_attrs.get(SURPLUS) and (before is None or t.number < before)]


def _counts(study) -> tuple[int, int]:
    """(trials finished: COMPLETE or PRUNED, trials running now), surplus trials left out."""
    from optuna.trial import TrialState

    trials = _counted(study)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def records(study) -> list[TrialRecord]:
    """Every trial of the study but the surplus ones, in order, as TrialRecords."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(SURPLUS):
            continue
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        out.append(TrialRecord(t.number, t.state.name, dict(t.params), t.value, t.user_attrs.get("epochs_run"),
                               seconds, dict(t.user_attrs.get("valid", {}))))
    return out


def tune(
    store_path: str | Path,
    run_dir: str | Path,
    base: RunConfig,
    space: SearchSpace,
    options: TuneOptions,
    *,
    pretrained: str | Path | None = None,
    finalize_only: bool = False,
    finalize: bool = True,
    force: bool = False,
    on_trial=None,
    progress: ProgressFn = no_progress,
) -> TuneResult:
    """Run the search into `run_dir` until the study has `options.trials` trials (module docstring), then
    finalise unless `finalize` is False; `finalize_only`: run no trial, finalise the study as it is.
    on_trial(record, best, done, total): called after each trial this process ran (the CLI's line)."""
    run_dir = Path(run_dir)
    check_options(space, options, Path(pretrained) if pretrained else None)
    if force and options.storage:
        raise KebrError("--force cannot go with --storage: it would delete a study other processes may share; remove "
                        "the study with optuna's delete-study command, or give another study storage.")
    base = copy.deepcopy(base).validate()
    require(base.train.report_to)  # before any trial: the TensorBoard extra, when asked for
    if options.sampler == "grid":  # a grid has so many points; more trials would repeat them
        options = dataclasses.replace(options, trials=min(options.trials, math.prod(len(p.grid()) for p in space)))
    store = FeatureStore(store_path)
    split_index, _ = labeled_splits(store, store_path, ("train", "valid"))
    checkpoint = checkpoints.resolve_checkpoint(pretrained) if pretrained is not None else None
    if checkpoint is not None:
        apply_checkpoint_config(base, Path(checkpoint))
    configure_from_store(base, store)
    identity = run_identity.run_identity(base, "tune", run_identity.data_fingerprint(store_path),
                                         space=space_identity(space), tune_stage=options.stage, metric=options.metric,
                                         checkpoint=str(checkpoint) if checkpoint else None,
                                         checkpoint_sha256=checkpoints.weights_sha256(checkpoint) if checkpoint else None)
    if finalize_only:
        if not (run_dir / runs.CONFIG).is_file():
            raise KebrError(f"No search has run in {run_dir} yet; run kebr tune without --finalize first.")
        run_identity.check_identity(run_dir, identity)
    else:
        run_identity.prepare_run_dir(run_dir, identity, resume=True, force=force,
                                     extra={"store": str(store_path), "storage": runs.masked_url(options.storage) if options.storage
                                            else None, "study": STUDY_NAME})
    study = _open_study(run_dir, options, identity | {"_space": space}, create=not finalize_only)

    if not finalize_only:
        _search(study, store, store_path, split_index, base, space, options, run_dir, checkpoint, on_trial, progress)
    done, _ = _counts(study)
    result = _result(run_dir, study, options)
    if finalize_only or (finalize and done >= options.trials):
        if result.best is None:
            raise KebrError(f"No trial of the search in {run_dir} has completed yet; nothing to finalise.")
        # processes sharing this folder finish one after the other: the second reuses the seeds the first ran
        with locked(run_dir / runs.LOCK):
            result.final = _finalize(study, store_path, run_dir, base, result, options, checkpoint, progress)
    else:
        write_trials_csv(run_dir / runs.TRIALS_CSV, result.trials, space, str(store_path))
    return result


def _search(study, store, store_path, split_index, base, space, options, run_dir, checkpoint, on_trial, progress) -> None:
    import optuna
    from optuna.storages import fail_stale_trials

    device = resolve_device(base.train.device)
    datasets, collate, token_ids = split_datasets(store, split_index, base, checkpoint)
    seed = base.train.seeds[0]
    direction = METRICS[options.metric]

    def objective(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        if len(_counted(trial.study, before=trial.number)) >= options.trials:  # another process took the last slot
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("surplus: the search already has its trials")
        params = {p.key: p.suggest(trial) for p in space}
        cfg = trial_config(base, params)
        folder = runs.trial_dir(run_dir, trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoint
        if options.stage == "both":
            ckpt = _pretrain_trial(store_path, folder, cfg, options, progress)
            apply_checkpoint_config(cfg, Path(ckpt))
        values: list[float] = []

        def on_epoch(epoch: int, row: dict[str, float]) -> bool:
            value = float(row[VALID_PREFIX + options.metric])
            values.append(value)
            trial.set_user_attr("epochs_run", epoch)
            trial.report(value, epoch)
            if options.prune and trial.should_prune():
                trial.set_user_attr("seconds", time.perf_counter() - t0)
                raise optuna.TrialPruned(f"validation {options.metric} {value:.4g} at epoch {epoch}")
            return False

        fitted = fit_on_validation(cfg, seed, datasets, collate, token_ids, ckpt, device, DistInfo(), progress,
                                   text_cache={}, metrics_path=folder / runs.METRICS, on_epoch=on_epoch)
        trial.set_user_attr("valid", fitted.valid_metrics)
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return float("nan")
        return min(finite) if direction == "minimize" else max(finite)

    def report(study_, frozen) -> None:
        fail_stale_trials(study_)  # re-enqueues trials whose process died
        record = next((r for r in records(study_) if r.number == frozen.number), None)  # None: a surplus trial
        if on_trial is not None and record is not None:
            done, _ = _counts(study_)
            on_trial(record, _best(study_), done, options.trials)
        done, running = _counts(study_)
        failed = len(study_.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
        if done + running >= options.trials or failed >= 2 * options.trials:  # the loop below says why
            study_.stop()

    while True:
        fail_stale_trials(study)
        done, running = _counts(study)
        if done >= options.trials:
            return
        failed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
        if failed >= 2 * options.trials:  # e.g. every learning rate of the space makes the loss NaN
            raise KebrError(f"{failed} trials of the search in {run_dir} failed (the loss became NaN or infinite, or "
                            "their processes died); narrow the space (e.g. lower learning rates) and run again.")
        if done + running < options.trials:
            study.optimize(objective, callbacks=[report], catch=(NonFiniteLoss,))
        else:  # the last trials run in other processes: wait until they finish or their heartbeat stops
            time.sleep(min(options.heartbeat, 5))


def _pretrain_trial(store_path, folder: Path, cfg: RunConfig, options: TuneOptions, progress) -> Path:
    """--stage both: pretrain with the trial's model and MCC settings on train + valid (never test)."""
    from kebr_core.recipes.pretrain import pretrain

    pre = RunConfig.for_stage("pretrain")
    pre.model = copy.deepcopy(cfg.model)
    pre.mcc = copy.deepcopy(cfg.mcc)
    pre.train.epochs = options.pretrain_epochs
    pre.train.batch_size, pre.train.device, pre.train.seed = cfg.train.batch_size, cfg.train.device, cfg.train.seeds[0]
    result = pretrain(store_path, folder / "pretrain", pre.validate(), splits=["train", "valid"], resume_if_possible=True,
                      progress=progress)
    return result.checkpoint


def _best(study) -> TrialRecord | None:
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return None
    return next(r for r in records(study) if r.number == best.number)


def _result(run_dir: Path, study, options: TuneOptions) -> TuneResult:
    trials = records(study)
    base_epochs = {r.number: r.epochs_run for r in trials if r.state == "PRUNED" and r.epochs_run}
    cfg_epochs = json.loads((run_dir / runs.CONFIG).read_text())["train"]["epochs"] if (run_dir / runs.CONFIG).is_file() else 0
    saved = sum(cfg_epochs - n for n in base_epochs.values())
    finished = sum(r.state in ("COMPLETE", "PRUNED") for r in trials)
    return TuneResult(run_dir, trials, _best(study), finished, saved)


# ───────────────────────── finishing: trials.csv, best.toml, the evaluation on test ─────────────────────────


def write_trials_csv(path: Path, trials: Sequence[TrialRecord], space: SearchSpace, dataset: str) -> None:
    """trials.csv: MMSA's result columns (`results_files.MMSA_COLUMNS`, on the validation split at the best
    epoch, MMSA's scaling), then number, state, every parameter, the objective value, epochs run, seconds."""
    metric_cols = list(results_files.MMSA_COLUMNS)
    header = ["Model", "Dataset", *metric_cols, "number", "state", *[p.key for p in space], "value", "epochs_run", "seconds"]
    buffer = io.StringIO()
    w = csv.writer(buffer)
    w.writerow(header)
    for r in trials:
        cells = []
        for col in metric_cols:
            v = r.valid.get(results_files.MMSA_COLUMNS[col])
            scale, digits = (1.0, 4) if col in ("MAE", "Corr") else (100.0, 2)
            cells.append("" if v is None or not math.isfinite(v) else round(v * scale, digits))
        w.writerow(["KEBR", dataset, *cells, r.number, r.state, *[r.params.get(p.key, "") for p in space],
                    "" if r.value is None else r.value, r.epochs_run or "",
                    "" if r.seconds is None else round(r.seconds, 2)])
    atomic_write_text(path, buffer.getvalue())  # processes sharing the folder may write it at once


def _finalize(study, store_path, run_dir: Path, base: RunConfig, result: TuneResult, options: TuneOptions, checkpoint,
              progress) -> dict[str, Any]:
    write_trials_csv(run_dir / runs.TRIALS_CSV, result.trials, _space_of(run_dir), str(store_path))
    best = result.best
    best_cfg = trial_config(base, best.params)
    header = (f"The best trial (#{best.number}) of `kebr tune` in {run_dir}: validation {options.metric} "
              f"{best.value:.6g}.\nReplay: kebr eval --dataset {store_path} --config {run_dir / runs.BEST_TOML}"
              + (f" --pretrained {checkpoint}" if checkpoint else ""))
    atomic_write_text(run_dir / runs.BEST_TOML, config_toml(best_cfg, header))
    base_cfg = copy.deepcopy(base)
    final: dict[str, Any] = {"best_trial": best.number, "params": best.params, "valid": best.value,
                             "seeds": list(base.train.seeds)}
    if options.stage == "both":
        best_ckpt = runs.trial_dir(run_dir, best.number) / "pretrain"
        base_ckpt = _pretrain_trial(store_path, run_dir / runs.BASE_EVAL / "pretrain-base", base_cfg, options, progress)
        evaluated = {"best": finetune(store_path, run_dir / runs.BEST_EVAL, best_cfg, checkpoint=best_ckpt, progress=progress),
                     "base": finetune(store_path, run_dir / runs.BASE_EVAL, base_cfg, checkpoint=base_ckpt, progress=progress)}
    else:
        evaluated = {name: finetune(store_path, run_dir / folder, cfg, checkpoint=checkpoint, progress=progress)
                     for name, folder, cfg in (("best", runs.BEST_EVAL, best_cfg), ("base", runs.BASE_EVAL, base_cfg))}
    final |= {name: split_summary(r.summary) | {"per_seed": r.per_seed} for name, r in evaluated.items()}
    final["paired"] = paired_statistics(evaluated["base"].per_seed, evaluated["best"].per_seed)
    atomic_write_text(run_dir / runs.TUNE_JSON, json.dumps({"final": final, "trials": result.finished,
                                                            "pruned_epochs_saved": result.pruned_epochs_saved},
                                                                indent=2, default=str))
    return final


def _space_of(run_dir: Path) -> SearchSpace:
    """The run's space, read back from config.json (the CSV's parameter columns)."""
    recorded = json.loads((run_dir / runs.CONFIG).read_text()).get("space", {})
    return parse_space({k: v["choices"] if "choices" in v else v for k, v in recorded.items()}, "the run's space")


def paired_statistics(base: Sequence[dict[str, float]], best: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Per test metric, the paired difference best − base over the shared fine-tuning seeds
    (`stats.paired_difference` on (1, F) grids: one pretraining, so the interval covers fine-tuning seeds)."""
    out = {}
    for metric in base[0]:
        a = np.array([[r[metric] for r in base]], dtype=np.float64)
        b = np.array([[r[metric] for r in best]], dtype=np.float64)
        d = paired_difference(a, b, metric=metric)
        out[metric] = {"mean": d.mean, "low": d.low, "high": d.high, "p_value": d.p_value, "method": d.method}
    return out
