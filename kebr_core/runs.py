"""The run-directory contract: file names, identity, checkpoints (docs/design.md §6).

Every writer (`pretrain`, `finetune`, `ablate`) and reader (`run_readers`, `predict`) goes through this
module; no other module spells a run file's name. It stays one module, though over 400 lines, because
it is one cohesive thing: the layout of a run folder and the rules for writing it safely.

A pretraining run:

    config.json                 the resolved RunConfig + "stage", "store", "data" (the store's fingerprint)
    metrics.csv                 one row per epoch (columns: `PRETRAIN_COLUMNS`)
    checkpoints/epoch-NNNN/     model.safetensors + config.json + trainer.pt (optimizer state, epoch)
    checkpoints/latest          the name of the newest complete epoch-NNNN folder (what --resume loads)
    final/                      model.safetensors + config.json (what `kebr eval -c` loads)

An evaluation run: config.json, results.json, results.csv, seed-S/ (metrics.csv, test.json,
predictions.csv, test_features.npz) and best-model/ (the seed with the lowest validation MAE).
An ablation: ablation.json, results.csv, pretrain/<key>/ and runs/<name>/ (runs of the layouts above).
A search (`kebr tune`): config.json, tune.db (the Optuna study), trials/trial-NNNN/metrics.csv,
trials.csv, best.toml, tune.json, best-eval/ and base-eval/ (evaluation runs).

What kebr writes (README "Trust and safety"). kebr writes only the names above, only into a folder it
created or that holds a kebr run (a config.json of its own), never through a symbolic link below the
folder, and never onto an input of the command (`kebr_core.io.check_output`). A folder without a kebr
config.json that holds any of these names is someone else's: refused, naming them, even with `force`.
One job at a time works on a run (`claim_run`): a second one into the same folder is refused at once,
while seed and ablation shards claim only their own items (`kebr_core.shards`).

Pretraining seeds (`pretrain_seed_runs`). With one pretraining seed, the layouts above (today's). With
P >= 2 a pretraining "run" is a folder of P runs, pseed-S/ each (S: the pretraining seed, the run's
`train.seed`), and so is the evaluation of a multi-seed pretraining: `kebr pretrain --seeds P` writes
OUT/pseed-S/, `kebr eval --pretrained` of it writes OUT/pseed-S/ (each an evaluation run with seed-F/),
an ablation pretrain/<key>/pseed-S/ and runs/<name>/pseed-S/ (P x F fine-tuning runs per configuration;
a configuration without pretraining does not depend on the pretraining seed and keeps one runs/<name>/).

Identity. A run directory belongs to one resolved configuration and one input store (its path, sample
count, a hash of ids/splits/labels, frame counts and feature description). Writing into a directory
that holds another run stops with one sentence naming the differing keys; `force=True` removes the
files the run wrote (the names above, nothing else) and starts afresh.

Crash safety. A checkpoint is written as `<name>.tmp/`, its files fsynced, and renamed into place; the
`latest` pointer is replaced atomically (write, fsync, `os.replace`) only after that, and older epoch
folders are removed only after the pointer moved. A kill -9 at any point leaves `latest` naming a
complete checkpoint (the new or the previous one). Trainer state holds only tensors, numbers and plain
containers and is loaded with `torch.load(weights_only=True, map_location="cpu")`: a crafted file
cannot run code.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from kebr_core import checkpoint_files, results_files
from kebr_core.config import RunConfig, operational_keys
from kebr_core.errors import KebrError
from kebr_core.io import foreign_files, open_for_writing, refuse_foreign, refuse_links
from kebr_core.own_files import refuse_link_on_the_way, remove_written, remove_written_or_refuse, write_record
from kebr_core.shards import claimed, locked
from kebr_core.strict import read_settings_data

# ── file and folder names ──
CONFIG = "config.json"
METRICS = "metrics.csv"
FINAL = "final"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS = "model.safetensors"
TEXT_ENCODER = "text-encoder"  # in a model folder: the tokenizer, and the encoder when not resolvable by name (pretrained.py)
MODEL_CARD = "README.md"  # in a model folder: its model card (model_card.py)
TRAINER_STATE = "trainer.pt"
BEST_MODEL = "best-model"
SELECTION = "selection.json"
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
TEST_JSON = "test.json"
PREDICTIONS_CSV = "predictions.csv"
TEST_FEATURES = "test_features.npz"
ABLATION_JSON = "ablation.json"
ABLATION_PRETRAIN = "pretrain"
ABLATION_RUNS = "runs"
PLOTS = "plots"
COMPARE_JSON = "compare.json"  # `kebr compare`'s output folder: everything, and one row per run and metric
COMPARE_CSV = "compare.csv"
LOG = "log.txt"  # what the CLI printed, appended on resume
RESULTS_TABLE = "results-table.csv"  # beside the run directories: one row per (run, dataset), across runs
LOCK = ".kebr.lock"  # taken by jobs that change a file they share (kebr_core.shards.locked)
RESULTS_TABLE_LOCK = ".kebr-results-table.lock"  # beside a results table, held while one job changes it
TEXT_CACHE = "text-cache"  # disk caches of the frozen encoder's states (kebr_core.text_cache), <key>/ each
RUN_LOCK = ".kebr-run.lock"  # claimed by the job working on a run, or on some of its items (`claim_run`)
# a search (`kebr tune`)
TUNE_DB = "tune.db"  # the embedded SQLite Optuna study (unless --storage names another)
TUNE_JSON = "tune.json"  # the finished search: best trial, its parameters, the final evaluation
TRIALS_CSV = "trials.csv"  # one row per trial
BEST_TOML = "best.toml"  # the best trial's full configuration (`kebr eval --config best.toml`)
TRIALS_DIR = "trials"  # trials/trial-NNNN/metrics.csv (and pretrain/ with --stage both)
BEST_EVAL = "best-eval"  # evaluation runs of the finalisation: the best configuration …
BASE_EVAL = "base-eval"  # … and the base configuration, over the same seeds
TENSORBOARD = "tensorboard"  # TensorBoard events beside a metrics.csv, and a run's hparams (`kebr_core.metric_logger`)

# ── metrics.csv columns (`training.epoch_row` writes them) ──
PRETRAIN_COLUMNS = ("epoch", "loss", "task_l1", "mcc", "cos_a", "cos_v", "abs_dtheta")
EVAL_COLUMNS = (
    "epoch", "train_loss", "train_task_l1", "train_mcc", "train_cos_a", "train_cos_v", "train_abs_dtheta",
    "valid_mae", "valid_corr", "valid_acc2_non0",
)

# What a run directory's own files are: `force` removes these and nothing else.
_OWN_FILES = (CONFIG, METRICS, RESULTS_JSON, RESULTS_CSV, ABLATION_JSON, LOG, LOCK, TUNE_DB, TUNE_JSON, TRIALS_CSV,
              BEST_TOML)
_OWN_DIRS = (FINAL, CHECKPOINTS, BEST_MODEL, "last", TRIALS_DIR, BEST_EVAL, BASE_EVAL, TENSORBOARD,
             TEXT_CACHE)  # last/: the layout before checkpoints/latest
# Left by a kill inside `save_checkpoint`; also kebr's.
_OWN_LEFTOVERS = tuple(f"{d}{suffix}" for d in (FINAL, BEST_MODEL) for suffix in (".tmp", ".old"))
# The files a model folder holds (final/, best-model/, checkpoints/epoch-NNNN/). A folder kebr writes now
# carries its own record of them (`own_files.write_record`), and a removal takes only what that lists;
# these names are the rule for a folder written before records existed (no record: by name, nothing else).
# text-encoder/ holds what Hugging Face's save_pretrained writes for a tokenizer and an encoder (pretrained.py;
# transformers 4 and 5 name them differently): a file of another name there keeps the folder.
TEXT_ENCODER_FILES = tuple(f"{TEXT_ENCODER}/{name}" for name in (
    "config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja"))
MODEL_FOLDER_FILES = (WEIGHTS, CONFIG, TRAINER_STATE, SELECTION, MODEL_CARD, *TEXT_ENCODER_FILES)
_SEED_DIR = re.compile(r"seed-(-?\d+)")
_PRETRAIN_SEED_DIR = re.compile(r"pseed-(-?\d+)")
# epoch-NNNN: the end of epoch N; epoch-NNNN-step-SSSSSSSS: S steps into epoch N (a mid-epoch checkpoint)
_EPOCH_DIR = re.compile(r"epoch-(\d{4,})(?:-step-(\d{8,}))?")
_EPOCH_TMP = re.compile(r"epoch-\d{4,}(?:-step-\d{8,})?\.tmp")  # a checkpoint being written (`save_resume_checkpoint`), left by a kill
_LATEST_TMP = re.compile(rf"{LATEST}\.\d+-[0-9a-f]{{8}}\.tmp")  # `atomic_write_text`'s, left by a kill


def seed_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed-{seed}"


def study_url(run_dir: Path, storage: str | None) -> str:
    """The database URL of a search's Optuna study: `storage`, or sqlite in run_dir/tune.db. A plain
    postgresql:// URL gets the driver that is installed (SQLAlchemy 2.1 assumes psycopg 3; kebr's postgres
    extra installs psycopg2)."""
    if storage is None:
        return f"sqlite:///{(Path(run_dir) / TUNE_DB).resolve()}"
    if storage.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + storage.removeprefix("postgresql://")
    return storage


def masked_url(url: str) -> str:
    """A database URL with its password replaced by *** (for config.json, logs and messages)."""
    head, sep, tail = url.partition("://")
    credentials, at, host = tail.rpartition("@")
    if at and ":" in credentials:
        return f"{head}{sep}{credentials.split(':', 1)[0]}:***@{host}"
    return url


def trial_dir(run_dir: Path, number: int) -> Path:
    return Path(run_dir) / TRIALS_DIR / f"trial-{number:04d}"


def run_seeds(run_dir: Path) -> list[int]:
    """The seeds of an evaluation run that have a seed-S folder, numerically."""
    found = [int(m.group(1)) for p in Path(run_dir).glob("seed-*") if (m := _SEED_DIR.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def pretrain_seed_runs(root: str | Path, pretrain_seeds: Iterable[int]) -> list[tuple[int, Path]]:
    """(pretraining seed, run folder) of each pretraining seed under `root`: `root` itself for one seed (the
    single-run layout), `root`/pseed-S for each of several (module docstring)."""
    pretrain_seeds = [int(s) for s in pretrain_seeds]
    if len(pretrain_seeds) == 1:
        return [(pretrain_seeds[0], Path(root))]
    return [(s, pretrain_seed_dir(root, s)) for s in pretrain_seeds]


def pretrain_seed_dir(root: str | Path, pretrain_seed: int) -> Path:
    """The run folder of one pretraining seed in a folder of several (`pretrain_seed_runs`)."""
    return Path(root) / f"pseed-{pretrain_seed}"


def run_pretrain_seeds(root: str | Path) -> list[int]:
    """The pretraining seeds that have a pseed-S run folder under `root`, numerically (empty: a single run)."""
    found = [int(m.group(1)) for p in Path(root).glob("pseed-*") if (m := _PRETRAIN_SEED_DIR.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def epoch_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"epoch-{epoch:04d}"


# ───────────────────────── identity ─────────────────────────


def data_fingerprint(store_path: str | Path) -> dict[str, Any]:
    """What identifies a store's content cheaply: path, count, a hash of ids/splits/texts/labels, frame
    counts, feature names and extraction settings."""
    from kebr_core.data.store import FeatureStore

    store = FeatureStore(store_path)
    digest = hashlib.sha256()
    for values in (store.ids, store.splits, store.texts):
        digest.update("\n".join(values).encode())
        digest.update(b"\0")
    digest.update(np.ascontiguousarray(store.labels, dtype=np.float32).tobytes())
    a, v = store.lengths()
    return {
        "store": str(Path(store_path).resolve()),
        "samples": len(store),
        "content_sha256": digest.hexdigest()[:16],
        "audio_frames": int(np.sum(a)), "vision_frames": int(np.sum(v)),
        "audio_features": len(store.audio_features), "vision_features": len(store.vision_features),
        "features_sha256": hashlib.sha256(json.dumps([store.audio_features, store.vision_features]).encode()).hexdigest()[:16],
        "extractor": store.attrs.get("extractor") or {},
    }


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"mcc": {"g": 0.2}} → {"mcc.g": 0.2}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_differences(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The dotted keys whose values differ, as 'key (old → new)', operational keys left out."""
    a, b = flatten(old), flatten(new)
    skip = operational_keys() | set(ignore)  # declared per field in kebr_core.config
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in skip or a.get(key) == b.get(key):
            continue
        diffs.append(f"{key} ({_short(a.get(key, 'unset'))} → {_short(b.get(key, 'unset'))})")
    return diffs


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else "…" + text[-57:]


def run_identity(cfg: RunConfig, stage: str, data: Mapping[str, Any], **inputs: Any) -> dict[str, Any]:
    """What a run directory is tied to: the stage, the configuration, the data and other inputs."""
    return {"stage": stage, **cfg.to_dict(), "data": dict(data), **inputs}


def run_file_names(run_dir: Path) -> list[str]:
    """The names in `run_dir` that a run writes (the contract's files and folders, seed-S/, leftovers of a
    kill), present or not; the lock files excepted (they are made before the run's identity is checked)."""
    seeds = [p.name for p in Path(run_dir).glob("seed-*") if _SEED_DIR.fullmatch(p.name)]
    return [n for n in _OWN_FILES if n != LOCK] + list(_OWN_DIRS) + list(_OWN_LEFTOVERS) + seeds


def is_kebr_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run kebr wrote: a config.json (a plain file) naming a kebr stage."""
    cfg_path = Path(run_dir) / CONFIG
    if cfg_path.is_symlink() or not cfg_path.is_file():
        return False
    try:
        payload = read_settings_data(cfg_path, "Run configuration", kind="JSON")  # bounded: a crafted file is no kebr run
    except KebrError:
        return False
    return isinstance(payload, dict) and payload.get("stage") in ("pretrain", "finetune", "tune")


def check_run_files(run_dir: Path) -> None:
    """The rule, before a run writes into `run_dir`: no symbolic link among (or below) the names it writes,
    and, where no kebr run is recorded (config.json), none of those names present (someone else's files)."""
    run_dir = Path(run_dir)
    names = run_file_names(run_dir)
    refuse_links(run_dir, names + [LOCK, RUN_LOCK])
    if not is_kebr_run(run_dir):
        refuse_foreign(run_dir, foreign_files(run_dir, names))


def check_ablation_files(out: Path) -> None:
    """`check_run_files` for an ablation folder: no link among its names (or below pretrain/ and runs/),
    and no results.csv where no ablation.json says an ablation wrote it."""
    out = Path(out)
    refuse_links(out, [ABLATION_JSON, RESULTS_CSV, LOG, LOCK, RUN_LOCK, ABLATION_PRETRAIN, ABLATION_RUNS, TEXT_CACHE])
    if not (out / ABLATION_JSON).is_file():
        refuse_foreign(out, foreign_files(out, [RESULTS_CSV]))


def remove_run_files(run_dir: Path) -> None:
    """Remove what a kebr run wrote into `run_dir` (the contract's names), nothing else; `check_run_files`
    first, so nothing is removed through a link or from a folder that holds no kebr run. Model folders and
    checkpoints/ lose only kebr's files (`own_files`): a file someone put there keeps its folder."""
    check_run_files(run_dir)
    for name in _OWN_FILES:
        if name != LOCK:  # another job may hold it (a shared pretraining of `kebr ablate`)
            (run_dir / name).unlink(missing_ok=True)
    for name in (FINAL, BEST_MODEL) + _OWN_LEFTOVERS:
        remove_written(run_dir / name, MODEL_FOLDER_FILES, inside=run_dir)
    _remove_checkpoints(run_dir)
    for name in set(_OWN_DIRS) - {FINAL, BEST_MODEL, CHECKPOINTS}:  # whole runs of their own (no link below: checked)
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for seed in run_seeds(run_dir):
        shutil.rmtree(seed_dir(run_dir, seed), ignore_errors=True)


def _remove_checkpoints(run_dir: Path) -> None:
    """checkpoints/: its epoch folders (kebr's files in them), a checkpoint left half-written, the `latest`
    pointer, and the folder when nothing else is left in it."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return
    refuse_link_on_the_way(root, run_dir)
    for path in root.iterdir():
        if _EPOCH_DIR.fullmatch(path.name) or _EPOCH_TMP.fullmatch(path.name):
            remove_written(path, MODEL_FOLDER_FILES, inside=run_dir)
        elif (path.name == LATEST or _LATEST_TMP.fullmatch(path.name)) and stat.S_ISREG(path.lstat().st_mode):
            path.unlink()
    if not any(root.iterdir()):
        root.rmdir()


@contextmanager
def claim_run(run_dir: Path, items: Iterable[int] | None = None, enabled: bool = True,
              check: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Hold `run_dir` for this job while the block runs: a second job into it is refused at once, in one
    sentence. items: the positions (from 0) of the seeds or configurations a shard job works on; jobs
    with disjoint items (`--seed-shard 0/2` and `1/2`) run together, a plain job (None: every item) with
    no other. Only rank 0 of a DDP job claims (enabled). `check` (default `check_run_files`) runs first,
    so a folder that is refused is left without even a lock file."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        (check or check_run_files)(run_dir)
    if not enabled:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    refuse_links(run_dir, [RUN_LOCK])
    with claimed(run_dir / RUN_LOCK, items, what=f"Run directory {run_dir}"):
        yield


def prepare_run_dir(run_dir: Path, identity: Mapping[str, Any], *, resume: bool, force: bool = False,
                    may_differ: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> None:
    """Create `run_dir` and write config.json (`identity` + `extra`), or check that the run already there
    is this one.

    - symbolic links among the run's names, or a folder without a kebr config.json holding any of them
      (someone else's files): refused, naming them, also with `force` (`check_run_files`);
    - empty or new folder, or one holding only other files (left alone): start;
    - `force`: remove the run's own files, start afresh;
    - another run there (a differing key outside `config.operational_keys()` and `may_differ`): refused, naming the keys;
    - the same run, `resume`: continue; the same run without `resume` after it trained: refused (--resume).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG
    if force:
        remove_run_files(run_dir)  # checks the folder first (check_run_files)
    else:
        check_run_files(run_dir)
        if cfg_path.exists():
            check_identity(run_dir, identity, may_differ)
            if not resume and (run_dir / METRICS).exists():
                raise KebrError(
                    f"Run directory {run_dir} already holds this run: pass --resume to continue it, --force to start "
                    "it afresh, or choose another --out."
                )
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(identity) | dict(extra or {})
    atomic_write_text(cfg_path, json.dumps(payload, indent=2, default=str))


def check_identity(run_dir: Path, identity: Mapping[str, Any], may_differ: Iterable[str] = ()) -> None:
    """Refuse (one sentence naming the differing keys) when `run_dir` holds a run other than `identity`."""
    cfg_path = Path(run_dir) / CONFIG
    try:
        old = read_settings_data(cfg_path, "Run configuration", kind="JSON")
    except KebrError:
        old = None
    if not isinstance(old, dict):
        raise KebrError(f"{cfg_path} is not a kebr run configuration; choose another --out.")
    # A field added since the run was written is missing from its config.json; the run computed with the
    # field's default (new fields default to the old behaviour), so it is compared as that default.
    defaults = RunConfig().to_dict()
    old = {k: {**defaults[k], **v} if k in defaults and isinstance(v, dict) else v for k, v in old.items()}
    diffs = identity_differences({k: old.get(k) for k in identity}, identity, ignore=may_differ)
    if diffs:
        raise KebrError(
            f"Run directory {run_dir} holds a run with other settings or data: {'; '.join(diffs)}; pass --force "
            "to start it afresh (removes only that run's files) or choose another --out."
        )


# ───────────────────────── files written crash-safely ─────────────────────────


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write, fsync, rename: a reader sees the old or the new file, never half of one. The temporary name
    is the writer's own, so jobs writing the same file at once (seed shards' config.json) do not mix."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        tmp.write_text(text)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_checkpoint_files(folder: Path, weights: Mapping[str, Tensor], payload: Mapping[str, Any],
                            trainer_state: Mapping[str, Any] | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(weights), str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(payload, indent=2, default=str))
    if trainer_state is not None:
        torch.save(dict(trainer_state), folder / TRAINER_STATE)
    for f in folder.iterdir():
        _fsync_file(f)
    _fsync_dir(folder)


def model_weights(model: torch.nn.Module, include_encoder: bool) -> dict[str, Tensor]:
    """The model's weights on the CPU, without the encoder when it was frozen (it is reloaded by name)."""
    state = model.state_dict()
    if not include_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def checkpoint_payload(cfg: RunConfig, include_encoder: bool, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's config.json: the configuration, whether the encoder is inside, and `extra`."""
    return cfg.to_dict() | {"includes_encoder": include_encoder} | dict(extra or {})


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: RunConfig, include_encoder: bool,
                    extra: dict[str, Any] | None = None, write_more: Callable[[Path], None] | None = None) -> None:
    """A model folder (final/, best-model/): model.safetensors + config.json, replaced crash-safely:
    written as `<path>.tmp`, the old folder moved to `<path>.old` and back by `recover_folder` if a kill
    comes between the two renames. write_more(tmp): the other files of the folder (tokenizer, encoder,
    model card: `pretrained.save_pretrained`), written into it before it is fsynced and renamed."""
    path = Path(path)
    recover_folder(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    for leftover in (tmp, old):  # kebr's own, from a kill; anything else in them is refused, not removed
        remove_written_or_refuse(leftover, MODEL_FOLDER_FILES, path.parent, f"to save {path}")
    _write_checkpoint_files(tmp, model_weights(model, include_encoder), checkpoint_payload(cfg, include_encoder, extra), None)
    if write_more is not None:
        write_more(tmp)
        for written in sorted(tmp.rglob("*"), reverse=True):  # files before the folders holding them
            _fsync_dir(written) if written.is_dir() else _fsync_file(written)
        _fsync_dir(tmp)
    write_record(tmp)  # last: what a later removal of this folder may take (`own_files`)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    remove_written(old, MODEL_FOLDER_FILES, path.parent)  # a file someone put into the old folder stays, in <path>.old


def recover_folder(path: Path) -> None:
    """After a kill inside `save_checkpoint`: put `<path>.old` back when `<path>` is missing."""
    old = path.with_name(path.name + ".old")
    if old.exists() and not path.exists():
        os.replace(old, path)
    elif old.exists():
        remove_written(old, MODEL_FOLDER_FILES, path.parent)


def save_resume_checkpoint(run_dir: Path, epoch: int, weights: Mapping[str, Tensor], payload: Mapping[str, Any],
                           trainer_state: Mapping[str, Any], keep: int = 0, step: int = 0) -> Path:
    """checkpoints/epoch-NNNN/ with trainer state, then the `latest` pointer, then retention (`keep` newest
    epoch folders; 0 keeps all). Every step leaves `latest` naming a complete checkpoint.

    step > 0: a mid-epoch checkpoint, `step` steps into epoch `epoch` (checkpoints/epoch-NNNN-step-SSSSSSSS/,
    its trainer state with "step" and the epoch's position: `kebr_core.resume`); it is kept only while it
    is the latest (a later checkpoint supersedes it)."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    refuse_link_on_the_way(root, run_dir)  # checked at the start too; a link made since is not written through
    target = epoch_dir(run_dir, epoch) if not step else epoch_dir(run_dir, epoch).with_name(
        f"{epoch_dir(run_dir, epoch).name}-step-{step:08d}")
    tmp = target.with_name(target.name + ".tmp")
    purpose = f"to save checkpoint {target.name}"
    remove_written_or_refuse(tmp, MODEL_FOLDER_FILES, run_dir, purpose)
    _write_checkpoint_files(tmp, weights, payload, dict(trainer_state) | {"epoch": epoch} | ({"step": step} if step else {}))
    write_record(tmp)  # last: what retention and --force may later remove (`own_files`)
    current = latest_checkpoint(run_dir)
    if target.exists() and target != current:  # left by a run killed before its pointer moved: stale
        remove_written_or_refuse(target, MODEL_FOLDER_FILES, run_dir, purpose)
    if target.exists():  # the same epoch saved again (its content is the same state): keep the one there
        remove_written(tmp, MODEL_FOLDER_FILES, run_dir)
    else:
        os.replace(tmp, target)
        _fsync_dir(root)
    atomic_write_text(root / LATEST, target.name + "\n")
    _apply_retention(root, target, keep)
    return target


def _apply_retention(root: Path, latest: Path, keep: int) -> None:
    """Remove checkpoints left half-written by a kill, mid-epoch checkpoints a later one superseded, and all
    but the `keep` newest epoch folders (0: none), by kebr's own names only (`own_files`: a foreign file
    keeps its folder, `important.tmp` is no checkpoint)."""
    run_dir = root.parent
    for stray in root.iterdir():  # left by a kill before a rename
        if _EPOCH_TMP.fullmatch(stray.name):
            remove_written(stray, MODEL_FOLDER_FILES, inside=run_dir)
    folders = sorted((p for p in root.iterdir() if _EPOCH_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink()),
                     key=lambda p: p.name)
    for old in folders:  # a mid-epoch checkpoint is superseded by any later one
        if old != latest and _EPOCH_DIR.fullmatch(old.name).group(2) is not None:
            remove_written(old, MODEL_FOLDER_FILES, inside=run_dir)
    folders = [p for p in folders if p.exists()]
    for old in (folders[:-keep] if keep > 0 else []):
        if old != latest:
            remove_written(old, MODEL_FOLDER_FILES, inside=run_dir)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names (complete by construction), or None when there is none. The pointer
    must name an epoch-NNNN folder of checkpoints/ (not a path: `../../..` or /elsewhere is refused)."""
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        name = "(not text)"
    if not _EPOCH_DIR.fullmatch(name):
        raise KebrError(f"{pointer} names {name[:80]!r}, not an epoch-NNNN folder of {pointer.parent}; the run cannot be "
                        "resumed (start it afresh with --force).")
    folder = pointer.parent / name
    if folder.is_symlink() or (folder / TRAINER_STATE).is_symlink():
        raise KebrError(f"{folder} is a symbolic link; a checkpoint is a folder of the run itself, so the run cannot be resumed.")
    if not (folder / TRAINER_STATE).is_file():
        raise KebrError(f"{pointer} names {folder.name}, which holds no {TRAINER_STATE}; the run cannot be resumed.")
    return folder


def load_trainer_state(folder: Path, max_epoch: int | None = None) -> dict[str, Any]:
    """A checkpoint's trainer state, loaded to the CPU with weights_only=True: only tensors, numbers and
    plain containers are accepted, so a crafted file is refused instead of running its code. Its fields
    are checked: epoch an int in [1, max_epoch] equal to the folder's epoch-NNNN (when it is one), the
    optimizer state a dict with `state` and `param_groups`."""
    path = Path(folder) / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for a crafted file; RuntimeError for a damaged one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KebrError(f"{path} is not a safe kebr trainer state and was not loaded ({first[:160]}).") from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int) or "optimizer" not in state:
        raise KebrError(f"{path} is not a kebr trainer state (expected the keys epoch and optimizer).")
    epoch, named = state["epoch"], _EPOCH_DIR.fullmatch(Path(folder).name)
    if isinstance(epoch, bool) or epoch < 1 or (max_epoch is not None and epoch > max_epoch):
        wanted = f"1 .. {max_epoch} (train.epochs)" if max_epoch is not None else "at least 1"
        raise KebrError(f"{path} holds epoch {str(epoch)[:24]}, outside {wanted}; the run cannot be resumed from it "
                        "(raise --epochs, or start afresh with --force).")
    if named and int(named.group(1)) != epoch:
        raise KebrError(f"{path} holds epoch {epoch} but lies in {Path(folder).name}; the checkpoint is not "
                        "consistent, so the run cannot be resumed from it.")
    step = state.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or (named and int(named.group(2) or 0) != step):
        raise KebrError(f"{path} holds step {str(step)[:24]}, which does not match its folder {Path(folder).name}; "
                        "the run cannot be resumed from it.")
    optimizer = state["optimizer"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        raise KebrError(f"{path} holds no optimizer state (a dict with state and param_groups); the run cannot be resumed from it.")
    return state


def resolve_checkpoint(path: str | Path, *, fine_tuned: bool = False) -> Path:
    """A checkpoint folder, or a run directory whose final/ (else its latest checkpoint) is meant.

    fine_tuned: a fine-tuned model is wanted (`kebr predict`): a folder with weights and config, or the
    best-model/ of a `kebr eval` run directory; anything else is refused, saying what to give."""
    path = Path(path)
    if fine_tuned:
        found = resolve_model_dir(path)
        if found is not None:
            return found
        if not path.exists():
            raise KebrError(f"The checkpoint {path} does not exist.")
        raise KebrError(
            f"{path} is not a fine-tuned checkpoint (no {WEIGHTS} and {CONFIG} in it or in {BEST_MODEL}/); "
            "give the best-model/ folder of a `kebr eval` run."
        )
    recover_folder(path / FINAL)
    for candidate in (path, path / FINAL):
        if (candidate / WEIGHTS).exists():
            return candidate
    latest = latest_checkpoint(path) if (path / CHECKPOINTS / LATEST).is_file() else None
    if latest is not None:
        return latest
    raise KebrError(f"{path} is not a kebr checkpoint or run directory (no {WEIGHTS} in it, {FINAL}/ or {CHECKPOINTS}/).")


def resolve_model_dir(path: str | Path) -> Path | None:
    """A fine-tuned model folder: `path` itself or its best-model/ (for `kebr predict`); None if neither."""
    path = Path(path)
    recover_folder(path / BEST_MODEL)
    for candidate in (path, path / BEST_MODEL):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    return None


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """A checkpoint's config.json, after both its files are checked (`checkpoint_files`: a crafted or
    damaged file is one sentence naming it, before anything is built from it)."""
    cfg_file = Path(path) / CONFIG
    if not (Path(path) / WEIGHTS).exists() or not cfg_file.exists():
        raise KebrError(f"{path} is not a kebr checkpoint (expected {WEIGHTS} and {CONFIG} inside).")
    checkpoint_files.check_weights_file(Path(path) / WEIGHTS)
    return checkpoint_files.read_config(cfg_file)


def load_checkpoint_weights(model: torch.nn.Module, path: Path, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a checkpoint's weights into `model`; shape mismatches and non-float weights for float parameters
    are one clear sentence."""
    state = checkpoint_files.load_weights(Path(path) / WEIGHTS)
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise KebrError(
                f"Checkpoint {path} does not fit this data: weight {k} has shape {tuple(v.shape)}, "
                f"the model needs {tuple(own[k].shape)} (different feature dimensions or text model?)."
            )
        # load_state_dict would cast an int8 or bool tensor into a float parameter without a word.
        if k in own and own[k].is_floating_point() and not v.is_floating_point():
            raise KebrError(f"Checkpoint {path} is not usable: weight {k} is stored as {str(v.dtype).replace('torch.', '')}, "
                            f"not as floating point numbers, so it is not a trained weight.")
    unknown = [k for k in state if k not in own]
    if unknown:
        raise KebrError(f"Checkpoint {path} has weights this model does not know, e.g. {unknown[0]}.")
    model.load_state_dict(state, strict=False)


# ───────────────────────── metrics.csv ─────────────────────────


class MetricsLog:
    """Per-epoch metrics appended to a CSV (header from the first row); survives resume."""

    def __init__(self, path: Path, truncate_after_epoch: int | None = None):
        self.path = path
        if truncate_after_epoch is not None and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= truncate_after_epoch]
            self.path.unlink()
            for r in rows:
                self.append(r)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open_for_writing(self.path, append=True, newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


def weights_sha256(path: str | Path) -> str:
    """A hash of a checkpoint's weights (a retrained checkpoint is another input of the runs made from it)."""
    digest = hashlib.sha256()
    with open(Path(path) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# ───────────────────────── the results table across runs ─────────────────────────

# MMSA's result columns (its results/<dataset>.csv), then where the row comes from (kebr_core.results_files).
RESULTS_TABLE_METRICS = results_files.MMSA_COLUMNS
RESULTS_TABLE_COLUMNS = results_files.TABLE_COLUMNS


@dataclass
class ResultsRow:
    """One configuration's result on one dataset: `summary` maps metric → (mean, std) over `seeds`; `model`
    names the row (`row_names.row_name`), `inputs` the store's streams (`row_names.store_inputs`)."""

    model: str
    dataset: str
    run_dir: Path
    seeds: list[int]
    summary: Mapping[str, tuple[float, float]]
    inputs: str = ""

    def cells(self) -> dict[str, str]:
        """The row's cells (`results_files.table_cells`: numeric mean and std columns, percent named)."""
        return results_files.table_cells(self.model, self.dataset, self.inputs, self.seeds, self.run_dir, self.summary)


def update_results_table(path: Path, rows: Iterable[ResultsRow]) -> None:
    """Add or replace rows (keyed by run directory and dataset) in the CSV at `path`, keeping the others.
    Jobs finishing at once (shards, other runs beside it) each read, change and replace the table under a
    lock (`RESULTS_TABLE_LOCK` beside it), through their own temporary name (`atomic_write_text`): no row
    is lost and no writer renames another's half-written file."""
    path, cells = Path(path), [row.cells() for row in rows]
    if path.is_file():
        results_files.read_results_table(path)  # not ours: refused before anything (the lock file) is created beside it
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent / RESULTS_TABLE_LOCK):
        atomic_write_text(path, results_files.updated_table_text(path, cells))
