"""Recipe: fine-tune on labeled data, select the epoch on validation, test once (paper §3.5, §4.2; docs/design.md §6–7).

For each seed: build the model (from a pretraining checkpoint, or from the plain encoder for ablation
C2), train on `train` with

    L = L1(pred, y)  +  λ · L_mcc          (Eq. 17 with the sentiment label as the task)

(Adam; lr 5e-6 for encoder and fusion and 1e-4 for the head, as the authors; cosine annealing), keep
the weights of the epoch with the lowest validation MAE, and evaluate them once on `test`. We select on
validation MAE, not on the validation loss including MCC as the authors' code does (docs/design.md §7).

Writes: config.json; seed-S/metrics.csv (per epoch: train loss terms, c_a, c_v, |Δθ|, valid MAE),
seed-S/test.json (the chosen epoch and test metrics), seed-S/predictions.csv,
seed-S/test_features.npz (pooled fused test representations, labels, predictions);
best-model/ (the fine-tuned checkpoint of the seed with the lowest validation MAE, for `kebr predict`); results.json and
results.csv (mean ± std over the seeds asked for; the sample std, ddof = 1, unless std="population", MMSA's
ddof = 0; both files say which). A seed whose test.json exists is skipped on rerun (resume), also when the
rerun asks for more seeds or fewer (the seeds are no part of the run's identity).

`seed_shard=(i, n)` runs only the seeds of part i of n (`kebr_core.shards`) and writes no summary; a later call
without it aggregates the finished seeds and runs the missing ones, and `collect=True` only aggregates
(an error naming the seeds not finished yet).

With `probe=True` the chosen weights are also tested with one modality removed (`PROBES`): its features
zeroed (frames kept, every value 0) or absent (no frames, as a video without audio or face). The metrics
go to test.json's "probe" and results.json's "probe" (mean and std over seeds): how much the model uses
each stream.

A multi-seed pretraining (`kebr pretrain --seeds P`: pseed-S/ runs, `runs.pretrain_seed_runs`) is
fine-tuned from each of its pretrainings by `finetune_each_pretraining`: run_dir/pseed-S/ is an
evaluation run as above, and run_dir/results.json the mean ± std over all P × F runs (`per_run` lists
them with their pretraining and fine-tuning seeds).
It stays one module, though over 400 lines, because it is one cohesive thing: fine-tuning with
selection on validation (`fit_on_validation`, the one loop `kebr tune` also runs) and the single
evaluation on test, for one pretraining or for each of several.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from kebr_core import checkpoints, run_identity, runs
from kebr_core.config import RunConfig
from kebr_core.data import catalog
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.data.store import FeatureStore
from kebr_core.distributed import (
    DistInfo, barrier, check_nodes_agree, data_parallel, gather_predictions, init_distributed, on_main, rank_slice,
    refuse_unsupported,
)
from kebr_core.epoch_metrics import validation_columns
from kebr_core.errors import KebrError
from kebr_core.model_size import check_model_size
from kebr_core.io import atomic_write_text, open_for_writing
from kebr_core.loaders import RunLoaders
from kebr_core.masking import tokenize_plain
from kebr_core.metrics import STD_DDOF, aggregate, msa_metrics, split_summary
from kebr_core.text_encoder import load_tokenizer
from kebr_core.model_card import write_card
from kebr_core.own_files import add_to_record
from kebr_core.model import encoder_source, load_folder_tokenizer, save_pretrained
from kebr_core.recipes.setup import configure_from_store, setup_model
from kebr_core.metric_logger import epoch_logger, report_final, require
from kebr_core.results_files import write_results_csv
from kebr_core.row_names import store_inputs
from kebr_core.shards import check_part_run, in_part, locked, part_positions
from kebr_core.training import (
    ProgressFn,
    autocast,
    loader_workers,
    move,
    no_progress,
    remove_modality,
    resolve_device,
    store_features,
    train_epoch,
)


PROBES = (("audio", "zeroed"), ("audio", "absent"), ("vision", "zeroed"), ("vision", "absent"))


@dataclass
class EvalResult:
    run_dir: Path
    per_seed: list[dict[str, float]]
    summary: dict[str, tuple[float, float]]  # metric → (mean, std)
    best_epochs: list[int] = field(default_factory=list)
    probe: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # "audio absent" → metric → (mean, std)
    unlabeled: dict[str, int] = field(default_factory=dict)  # split → samples left out for a NaN label
    pending: list[int] = field(default_factory=list)  # seeds not finished (other shards'); summary empty then
    per_seed_probe: list[dict[str, dict[str, float]]] = field(default_factory=list)  # with probe: per seed, "audio absent" → metrics
    seeds: list[int] = field(default_factory=list)  # the seeds of the run (per_seed is in their order once all finished)


def apply_checkpoint_config(cfg: RunConfig, checkpoint: Path, typed: Mapping[str, str] | None = None) -> list[str]:
    """Fine-tuning uses the architecture the checkpoint was pretrained with (its model settings, but for
    the length limits, dropout and the head's width, which are the fine-tuning's own: the heads are never
    loaded, `build_model`).

    typed: {dotted key: how the user gave it, e.g. "--layers"} for the settings typed explicitly (README
    "Configuration and runs"): a typed architecture setting whose value differs from the checkpoint's is
    refused, in one sentence naming each with its value and the checkpoint's. None: no check (recipes
    that build the configuration themselves). Returns the settings the checkpoint changed, "key=value"."""
    saved = RunConfig.from_dict(checkpoints.read_checkpoint_config(checkpoint), source=f"checkpoint {checkpoint}")
    keep = {"max_text_len", "max_audio_len", "max_vision_len", "dropout", "head_hidden"}
    taken = {f"model.{name}": value for name, value in vars(saved.model).items() if name not in keep}
    current = {f"model.{name}": value for name, value in vars(cfg.model).items()}
    # The input widths are the data's, checked against the store by the caller: not the user's to type.
    widths = ("model.d_audio", "model.d_vision")
    conflicts = [f"{typed[key]} {_plain(current[key])} (the checkpoint has {_plain(value)})"
                 for key, value in taken.items() if key in (typed or {}) and key not in widths and current[key] != value]
    if conflicts:
        raise KebrError(f"--pretrained {checkpoint} was trained with other settings than typed: {', '.join(conflicts)}; "
                        "leave them out to fine-tune the checkpoint's architecture, or pretrain one with them.")
    changed = [f"{key}={_plain(value)}" for key, value in taken.items() if key not in widths and current[key] != value]
    for key, value in taken.items():
        setattr(cfg.model, key.split(".", 1)[1], value)
    return changed


def recorded_seeds(run_dir: Path) -> list[int]:
    """The fine-tuning seeds config.json of `run_dir` records (every seed asked of the run so far; its
    seed-S/test.json files say which finished), [] where there is none or it cannot be read (the identity
    check that follows says why)."""
    try:
        seeds = json.loads((Path(run_dir) / runs.CONFIG).read_text())["train"]["seeds"]
        return [int(s) for s in seeds]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return []


def complete_config(cfg: RunConfig, store_path: str | Path, checkpoint: str | Path | None = None,
                    typed: Mapping[str, str] | None = None, note: Callable[[str], None] | None = None) -> Path | None:
    """Complete `cfg` (in place) into the configuration fine-tuning trains: the checkpoint's architecture
    (`apply_checkpoint_config`) and the store's audio and vision widths (`configure_from_store`; a text-only
    store's are 1). `kebr eval` prints (--print-config) and logs this, and config.json records it. Returns
    the resolved checkpoint (None without one); a checkpoint trained on other widths is refused."""
    store = FeatureStore(store_path)
    wanted = store.widths()
    if checkpoint is not None:
        checkpoint = checkpoints.resolve_checkpoint(checkpoint)
        changed = apply_checkpoint_config(cfg, Path(checkpoint), typed)
        if changed and note is not None:
            note(f"fine-tuning the architecture of {checkpoint}: {', '.join(changed)} (from the checkpoint)")
        if (cfg.model.d_audio, cfg.model.d_vision) != wanted:
            raise KebrError(
                f"Checkpoint {checkpoint} was trained on audio/vision features of {cfg.model.d_audio}/"
                f"{cfg.model.d_vision} dims, but {store_path} has {wanted[0]}/{wanted[1]}."
            )
    configure_from_store(cfg, store)
    return Path(checkpoint) if checkpoint is not None else None


def _plain(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def labeled_splits(store: FeatureStore, store_path, splits: Sequence[str] = ("train", "valid", "test"),
                   ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The labeled samples of each of `splits` ({split: store indices}) and how many were left out for a NaN
    label ({split: count}). A NaN label means unlabeled (README); an infinite one, or a split without
    labeled samples, is refused in one sentence naming the store."""
    labels = store.labels
    infinite = np.flatnonzero(np.isinf(labels))
    if len(infinite):
        shown = ", ".join(repr(store.ids[i]) for i in infinite[:5]) + (" …" if len(infinite) > 5 else "")
        raise KebrError(f"Store {store_path} has {len(infinite)} infinite label(s) (ids {shown}); re-import or "
                        "re-extract it with finite labels (kebr refuses them now).")
    split_index, unlabeled = {}, {}
    for s in splits:
        idx = store.indices(s)
        split_index[s] = idx[~np.isnan(labels[idx])]
        unlabeled[s] = len(idx) - len(split_index[s])
        if len(split_index[s]) == 0:
            raise KebrError(f"Store {store_path} has no labeled '{s}' samples; fine-tuning needs labeled "
                            f"{', '.join(splits)} samples.")
    return split_index, unlabeled


def split_datasets(store: FeatureStore, split_index: dict[str, np.ndarray], cfg: RunConfig, checkpoint: Path | None = None):
    """(datasets {split: StoreDataset}, the Collator, token ids of every store text in store order) for the
    splits of `split_index`. Texts are tokenised once for all splits; the texts of a split among
    train/valid/test left out of `split_index` (the test split during `kebr tune`) are replaced by the
    empty text, so they never reach the encoder. checkpoint: the pretrained model folder, whose tokenizer
    is used when it holds one (`model.load_folder_tokenizer`)."""
    name = cfg.model.text_model
    tokenizer = load_folder_tokenizer(checkpoint, name) if checkpoint is not None else load_tokenizer(name)
    left_out = store.indices([s for s in ("train", "valid", "test") if s not in split_index])
    hidden = np.zeros(len(store), bool)
    hidden[left_out] = True
    texts = [t if not hide else "" for t, hide in zip(store.texts, hidden)]
    token_ids = tokenize_plain(texts, tokenizer, cfg.model.max_text_len)
    encoded = [{"input_ids": t} for t in token_ids]
    datasets = {s: StoreDataset(store, split=s, labeled_only=True,
                                text_encoder=lambda texts, s=s: [encoded[i] for i in split_index[s]]) for s in split_index}
    return datasets, Collator.from_config(cfg.model, tokenizer.pad_token_id), token_ids


def finetune(
    store_path: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    *,
    checkpoint: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    probe: bool = False,
    std: str = "sample",
    force: bool = False,
    seed_shard: tuple[int, int] | None = None,
    collect: bool = False,
    progress: ProgressFn = no_progress,
    typed: Mapping[str, str] | None = None,
    note: Callable[[str], None] | None = None,
) -> EvalResult:
    """Fine-tune and test once per seed (`seeds`, default `cfg.train.seeds`; module docstring) into
    `run_dir`; std: the spread over seeds, "sample" (ddof = 1) or "population" (ddof = 0, MMSA's).
    Seeds finished by an earlier call with the same identity are reused; the seeds are no part of the
    identity, so a call with more seeds runs only the new ones, and one with fewer reports on those
    (config.json records every seed asked of the run, `recorded_seeds`). A directory holding another
    run (other settings, data or checkpoint) is refused naming the differing keys; `force` starts afresh. seed_shard, collect: the module docstring. typed, note: the settings the user typed
    (`apply_checkpoint_config`), and where to say which settings the checkpoint replaced."""
    run_dir = Path(run_dir)
    check_part_run(seed_shard, "--seed-shard", collect=collect, force=force, items="seeds")
    if std not in STD_DDOF:
        raise KebrError(f"The std convention must be one of {', '.join(STD_DDOF)}, not {std!r}.")
    if seeds is not None:
        cfg.train.seeds = [int(s) for s in seeds]
    cfg.validate()
    require(cfg.train.report_to)
    seeds = list(cfg.train.seeds)
    store = FeatureStore(store_path)
    catalog.dataset_of(store.attrs, store_path)  # made for a dataset this kebr does not know: refused before any work
    split_index, unlabeled = labeled_splits(store, store_path)
    checkpoint = complete_config(cfg, store_path, checkpoint, typed, note)
    check_model_size(cfg, encoder_from=encoder_source(checkpoint, cfg.model.text_model))  # before the run folder is touched
    refuse_unsupported(cfg)
    info, device = init_distributed(resolve_device(cfg.train.device))
    check_nodes_agree(info, run_dir, store_path, cfg.to_dict())
    mine = part_positions(len(seeds), seed_shard)
    # One job at a time in a run; seed shards claim their own seeds (--collect only reads them, and writes the summary).
    with runs.claim_run(run_dir, mine, enabled=info.is_main and not collect):
        if collect and not (run_dir / runs.CONFIG).is_file():
            raise KebrError(f"Nothing to collect in {run_dir}: no run has started there (run kebr eval with --seed-shard first).")

        def prepare() -> None:  # on rank 0; a refused folder stops every rank with its sentence (`on_main`)
            # The seeds are no part of the identity: a run grows by new seeds, and reports on the ones asked for;
            # config.json records every seed asked of the run so far.
            recorded = RunConfig.from_dict(cfg.to_dict())
            recorded.train.seeds = [] if force else recorded_seeds(run_dir)
            recorded.train.seeds += [s for s in seeds if s not in recorded.train.seeds]
            identity = run_identity.run_identity(recorded, "finetune", run_identity.data_fingerprint(store_path),
                                                 checkpoint=str(checkpoint) if checkpoint else None,
                                                 checkpoint_sha256=checkpoints.weights_sha256(checkpoint) if checkpoint else None)
            run_identity.prepare_run_dir(
                run_dir, identity, resume=True, force=force, may_differ=("train.seeds",),
                extra={"store": str(store_path), "seeds": recorded.train.seeds,
                       "selection": "epoch with the lowest validation MAE", "world_size": info.world},
            )
        on_main(info, prepare)

        datasets, collate, token_ids = split_datasets(store, split_index, cfg, checkpoint)

        per_seed, best_epochs, probes, pending = [], [], [], []
        # a frozen encoder is the same for every seed: its outputs are computed once per run (on disk: text-cache/)
        text_cache: dict = {"dir": run_dir / runs.TEXT_CACHE}
        # What best-model/ records of its data: the features it expects and the data's fingerprint and splits.
        model_record = store_features(store) | {"trained_on": {"data": run_identity.data_fingerprint(store_path),
                                                               "splits": {s: len(d) for s, d in datasets.items()}}}
        loaders = RunLoaders(loader_workers(cfg.train.workers, device), device)  # and the loaders' workers start once
        for n_done, seed in enumerate(seeds):
            seed_dir = runs.seed_dir(run_dir, seed)
            done_file = seed_dir / runs.TEST_JSON
            # finished earlier by this same run (prepare_run_dir checked): reused
            result = json.loads(done_file.read_text()) if done_file.exists() else None
            if result is None or (probe and "probe" not in result):
                if collect or not in_part(n_done, seed_shard):  # another job's seed
                    pending.append(seed)
                    continue
                result = _run_seed(cfg, seed, seed_dir, datasets, collate, token_ids, checkpoint, device, info, progress,
                                   best_model_dir=run_dir / runs.BEST_MODEL, features=model_record,
                                   text_cache=text_cache, probe=probe, loaders=loaders)
            per_seed.append(result["test"])
            if probe:
                probes.append(result["probe"])
            best_epochs.append(result["best_epoch"])
            progress("seeds", n_done + 1, len(seeds), {"seed": seed, **result["test"]})
        loaders.close()

        if collect and pending:
            raise KebrError(f"Not every seed of {run_dir} has finished: seed(s) {', '.join(map(str, pending))} still to run "
                            "(by their --seed-shard job, or by kebr eval without --collect).")
        if pending or seed_shard is not None:  # summaries come from the job that sees every seed finished
            return EvalResult(run_dir=run_dir, per_seed=per_seed, summary={}, best_epochs=best_epochs, unlabeled=unlabeled,
                              pending=pending)
        summary = aggregate(per_seed, std)
        probe_summary = {name: aggregate([p[name] for p in probes], std) for name in probes[0]} if probes else {}
        if info.is_main:
            _write_results(run_dir, seeds, per_seed, best_epochs, summary, probe_summary, std, unlabeled,
                           store_inputs(store_path))
            report_final(run_dir, cfg.to_dict(), summary)
            if (run_dir / runs.BEST_MODEL / runs.CONFIG).is_file():  # the card's test metrics, now that all seeds ran
                write_card(run_dir / runs.BEST_MODEL, run_dir)
        barrier(info)
        return EvalResult(run_dir=run_dir, per_seed=per_seed, summary=summary, best_epochs=best_epochs, probe=probe_summary,
                          unlabeled=unlabeled, per_seed_probe=probes, seeds=seeds)


@dataclass
class NestedEvalResult:
    """`finetune_each_pretraining`: one EvalResult per pretraining seed, and the summary over all P × F runs."""

    run_dir: Path
    pretrain_seeds: list[int]
    per_pretraining: list[EvalResult]
    summary: dict[str, tuple[float, float]]  # metric → (mean, std) over every run; empty while seeds are pending


def is_multi_seed_pretraining(path: str | Path) -> bool:
    """Whether `path` is a folder of pseed-S pretraining runs (`kebr pretrain --seeds P`), not one run."""
    path = Path(path)
    return bool(runs.run_pretrain_seeds(path)) and not (path / runs.FINAL).exists() and not (path / runs.WEIGHTS).exists()


def finetune_each_pretraining(store_path: str | Path, run_dir: str | Path, cfg: RunConfig, pretrained: str | Path, *,
                              std: str = "sample", **options) -> NestedEvalResult:
    """`finetune` from each pretraining of the multi-seed pretraining `pretrained` into run_dir/pseed-S/
    (module docstring; `options` as `finetune`'s), then results.json and results.csv over every run."""
    run_dir = Path(run_dir)
    pseeds = runs.run_pretrain_seeds(pretrained)
    results = []
    for (pseed, pre_run), (_, eval_run) in zip(runs.pretrain_seed_runs(pretrained, pseeds),
                                               runs.pretrain_seed_runs(run_dir, pseeds)):
        try:
            results.append(finetune(store_path, eval_run, RunConfig.from_dict(cfg.to_dict()), checkpoint=pre_run,
                                    std=std, **options))
        except KebrError as e:
            raise KebrError(f"Pretraining seed {pseed} ({pre_run}): {e}") from None
    if any(r.pending or not r.summary for r in results):
        return NestedEvalResult(run_dir, pseeds, results, summary={})
    per_run = [{"pretrain_seed": pseed, "seed": metrics_seed, **metrics}
               for pseed, r in zip(pseeds, results) for metrics_seed, metrics in zip(r.seeds, r.per_seed)]
    summary = aggregate([r for result in results for r in result.per_seed], std)
    if os.environ.get("RANK", "0") == "0":  # the main process of a DDP job writes the summary
        payload = {"pretrained": str(pretrained), "pretrain_seeds": pseeds, "seeds": results[0].seeds,
                   "inputs": store_inputs(store_path),
                   "runs": [str(r.run_dir.relative_to(run_dir)) for r in results],
                   **split_summary(summary), "std_ddof": STD_DDOF[std], "per_run": per_run}
        write_summary(run_dir, payload, summary, std, [f"pseed_{r['pretrain_seed']}_seed_{r['seed']}" for r in per_run],
                      per_run)
    return NestedEvalResult(run_dir, pseeds, results, summary)


EpochHook = Callable[[int, dict[str, float]], "bool | None"]
"""on_epoch(epoch, row) after each fine-tuning epoch's validation (row: the metrics.csv row, valid_mae …):
True stops the training there (the best epoch so far is kept); an exception it raises ends the run
(`kebr tune` raises Optuna's TrialPruned from it). Nothing here knows who is listening."""


@dataclass
class Fitted:
    """A fine-tuned model with the weights of its epoch with the lowest validation MAE loaded."""

    model: torch.nn.Module
    frozen: bool  # the text encoder was frozen (its outputs come from `cache`)
    cache: object  # the frozen encoder's TextCache, or None
    valid_mae: float
    best_epoch: int
    epochs_run: int
    valid_metrics: dict[str, float]  # every MMSA metric on the validation split at best_epoch


def fit_on_validation(cfg: RunConfig, seed: int, datasets, collate, token_ids, checkpoint, device, info: DistInfo,
                      progress: ProgressFn = no_progress, *, text_cache: dict, metrics_path: Path | None = None,
                      on_epoch: EpochHook | None = None, loaders: RunLoaders | None = None) -> Fitted:
    """Fine-tune on datasets["train"] for cfg.train.epochs epochs (Eq. 17), predict datasets["valid"] after
    each, and keep the weights of the epoch with the lowest validation MAE. Only these two splits are
    read. metrics_path: metrics.csv to write (rank 0); on_epoch: `EpochHook`. text_cache: a dict shared
    by the calls of one run (a frozen encoder's outputs are computed once; "dir": where a disk cache goes);
    loaders: the run's `RunLoaders` (None: this call's own)."""
    setup = setup_model(cfg, device, "finetune", token_ids=token_ids, checkpoint=checkpoint, seed=seed,
                        cache=text_cache.get("cache"), cache_dir=text_cache.get("dir"), progress=progress)
    text_cache["cache"] = setup.cache
    model, frozen, cache, opt, sched = setup.model, setup.frozen, setup.cache, setup.optimizer, setup.scheduler
    net = data_parallel(model, info)

    log = None
    if metrics_path is not None and info.is_main:
        metrics_path.unlink(missing_ok=True)
        log = epoch_logger(metrics_path, cfg.to_dict(), "finetune", seed)
    best = (math.inf, 0, None, {})  # (valid MAE, epoch, weights, valid metrics)
    scale = dataset_entry(datasets["valid"])  # the metric set and scale of the dataset the store was made for
    epoch = 0
    own = loaders is None
    loaders = loaders or RunLoaders(loader_workers(cfg.train.workers, device), device)
    for epoch in range(1, cfg.train.epochs + 1):
        row = train_epoch(net, datasets["train"], collate, cache, opt, cfg, device, epoch, task="finetune",
                          frozen=frozen, info=info, seed=seed, prefix="train_", progress=progress, loaders=loaders)
        sched.step()
        pred, label = predict_split(model, datasets["valid"], collate, cache, cfg, device, info, loaders=loaders)
        valid = msa_metrics(pred, label, scale)
        row |= validation_columns(valid)
        if log is not None:
            log.log_dict(row, epoch)
        progress(f"seed {seed}", epoch, cfg.train.epochs, row)
        if valid["mae"] < best[0]:
            best = (valid["mae"], epoch, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}), valid)
        if on_epoch is not None and on_epoch(epoch, row):
            break
    if log is not None:
        log.close()
    if own:
        loaders.close()
    model.load_state_dict(best[2])
    return Fitted(model, frozen, cache, best[0], best[1], epoch, best[3])


def dataset_entry(split: StoreDataset) -> catalog.Dataset:
    """The catalog entry the split's store was made for (`catalog.dataset_of`): its metrics' scale and set."""
    return catalog.dataset_of(split.store.attrs, split.store.path)


def _run_seed(cfg, seed, seed_dir: Path, datasets, collate, token_ids, checkpoint, device, info: DistInfo, progress,
              best_model_dir: Path, features: dict, text_cache: dict, probe: bool = False,
              loaders: RunLoaders | None = None) -> dict:
    if info.is_main:
        seed_dir.mkdir(parents=True, exist_ok=True)
    fitted = fit_on_validation(cfg, seed, datasets, collate, token_ids, checkpoint, device, info, progress,
                               text_cache=text_cache, metrics_path=seed_dir / runs.METRICS, loaders=loaders)
    model, frozen, cache = fitted.model, fitted.frozen, fitted.cache
    best = (fitted.valid_mae, fitted.best_epoch)
    pred, label, pooled = predict_split(model, datasets["test"], collate, cache, cfg, device, info, features=True,
                                        loaders=loaders)
    scale = dataset_entry(datasets["test"])
    test = msa_metrics(pred, label, scale)
    result = {"seed": seed, "best_epoch": best[1], "valid_mae": best[0], "test": test}
    if probe:
        result["probe"] = {
            f"{modality} {how}": msa_metrics(*predict_split(model, datasets["test"], collate, cache, cfg, device, info,
                                                            remove=(modality, how), loaders=loaders), scale)
            for modality, how in PROBES
        }
    if info.is_main:
        # Fused utterance representations of the test split, for `kebr analyze` (PCA coloured by label).
        np.savez_compressed(seed_dir / runs.TEST_FEATURES, features=pooled, labels=label, predictions=pred)
        ids = [datasets["test"].store.ids[i] for i in datasets["test"].indices]
        with open_for_writing(seed_dir / runs.PREDICTIONS_CSV, newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "prediction"])
            w.writerows(zip(ids, label.tolist(), pred.tolist()))
        # The fine-tuned model of the seed with the lowest validation MAE so far, for `kebr predict`.
        # Seed shards may finish at once: compare and replace under a lock, ties to the smaller seed, so the
        # choice does not depend on which finished first.
        selection = best_model_dir / runs.SELECTION
        with locked(best_model_dir.parent / runs.LOCK):
            chosen = json.loads(selection.read_text()) if selection.exists() else None
            if chosen is None or (chosen["valid_mae"], chosen["seed"]) > (best[0], seed):
                tokenizer = load_folder_tokenizer(checkpoint, cfg.model.text_model) if checkpoint is not None else None
                save_pretrained(model, best_model_dir, cfg, include_encoder=not frozen, tokenizer=tokenizer,
                                extra=features | {"stage": "finetune", "seed": seed}, run_dir=best_model_dir.parent)
                atomic_write_text(selection, json.dumps({"seed": seed, "valid_mae": best[0], "best_epoch": best[1]}))
                add_to_record(best_model_dir, runs.SELECTION)
        atomic_write_text(seed_dir / runs.TEST_JSON, json.dumps(result, indent=2))
    barrier(info)
    return result


@torch.no_grad()
def predict_split(model, dataset, collate, cache, cfg: RunConfig, device, info: DistInfo = DistInfo(), features: bool = False,
                  remove: tuple[str, str] | None = None, loaders: RunLoaders | None = None):
    """Predictions and labels of a whole split, in dataset order: (N,), (N,) float64; with `features`,
    also the pooled utterance representations (N, dt) float32. Under DDP each rank predicts a
    contiguous slice (`rank_slice`) and every rank gets the gathered whole. remove: (modality, how) for
    `remove_modality`, the probe of how much a stream is used. loaders: the run's `RunLoaders` (None: a
    loader, and its workers, for this pass)."""
    model.eval()
    loaders = loaders or RunLoaders(loader_workers(cfg.train.workers, device), device)
    loader = loaders.evaluation(dataset, collate, max(cfg.train.batch_size, 64), rank_slice(np.arange(len(dataset)), info).tolist())
    preds, labels, pooled = [], [], []
    for batch in loader:
        batch = move(batch, device)
        if remove is not None:
            batch = remove_modality(batch, *remove)
        hidden = cache.gather(batch["index"], batch["input_ids"].shape[1]) if cache is not None else None
        with autocast(device, cfg.train.bf16):
            out = model(batch, task="finetune", text_hidden=hidden)
        preds.append(out.pred.float().cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        pooled.append(out.pooled.float().cpu().numpy())
    d = model.d_text if not hasattr(model, "module") else model.module.d_text
    parts = [np.concatenate(preds) if preds else np.zeros(0, np.float32),
             np.concatenate(labels) if labels else np.zeros(0, np.float32),
             np.concatenate(pooled) if pooled else np.zeros((0, d), np.float32)]
    pred, label, feats = gather_predictions(parts, info)
    pred, label = pred.astype(np.float64), label.astype(np.float64)
    return (pred, label, feats) if features else (pred, label)


def _write_results(run_dir: Path, seeds, per_seed, best_epochs, summary, probe_summary, std: str,
                   unlabeled: dict[str, int], inputs: str) -> None:
    payload = {
        "seeds": list(seeds),
        "inputs": inputs,  # the store's streams (row_names.store_inputs), e.g. "text only"
        "best_epochs": best_epochs,
        "unlabeled_left_out": unlabeled,
        "selection": "epoch with the lowest validation MAE; test evaluated once per seed",
        **split_summary(summary),
        "std_ddof": STD_DDOF[std],  # 1: sample std (kebr's default); 0: population std (MMSA's np.std)
        "per_seed": per_seed,
    }
    if probe_summary:
        payload["probe"] = {name: split_summary(stats) for name, stats in probe_summary.items()}
    write_summary(run_dir, payload, summary, std, [f"seed_{s}" for s in seeds], per_seed)


def write_summary(run_dir: Path, payload: dict, summary: dict[str, tuple[float, float]], std: str, run_names: list[str],
                  per_run: list[dict]) -> None:
    """results.json (`payload`, fractions) and results.csv (`results_files.write_results_csv`: a row per metric
    with its unit, mean, std, std_ddof and the value of each run, columns `run_names` in the order of `per_run`)."""
    atomic_write_text(run_dir / runs.RESULTS_JSON, json.dumps(payload, indent=2))
    write_results_csv(run_dir / runs.RESULTS_CSV, summary, STD_DDOF[std], run_names, per_run)
