"""The run-directory contract: file and folder names, the layout of a run, what is kebr's (docs/design.md §6).

Every writer (`pretrain`, `finetune`, `ablate`) and reader (`run_readers`, `predict`) goes through this
module; no other module spells a run file's name. Beside it: `run_identity` (which run a folder holds,
config.json), `checkpoints` (model folders and resume checkpoints, written crash-safely) and
`results_files` (results.csv and the results table across runs).

A pretraining run:

    config.json                 the resolved RunConfig + "stage", "store", "data" (the store's fingerprint)
    metrics.csv                 one row per epoch (columns: `epoch_metrics.PRETRAIN_COLUMNS`)
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
"""

from __future__ import annotations

import csv
import re
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from kebr_core.errors import KebrError
from kebr_core.io import foreign_files, open_for_writing, refuse_foreign, refuse_links
from kebr_core.own_files import refuse_link_on_the_way, remove_written
from kebr_core.shards import claimed
from kebr_core.strict import read_settings_data

# ── file and folder names ──
CONFIG = "config.json"
METRICS = "metrics.csv"
FINAL = "final"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS = "model.safetensors"
TEXT_ENCODER = "text-encoder"  # in a model folder: the tokenizer, and the encoder when not resolvable by name (model.py)
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
# text-encoder/ holds what Hugging Face's save_pretrained writes for a tokenizer and an encoder (model.py;
# transformers 4 and 5 name them differently): a file of another name there keeps the folder.
TEXT_ENCODER_FILES = tuple(f"{TEXT_ENCODER}/{name}" for name in (
    "config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja"))
MODEL_FOLDER_FILES = (WEIGHTS, CONFIG, TRAINER_STATE, SELECTION, MODEL_CARD, *TEXT_ENCODER_FILES)
_SEED_DIR = re.compile(r"seed-(-?\d+)")
_PRETRAIN_SEED_DIR = re.compile(r"pseed-(-?\d+)")
# epoch-NNNN: the end of epoch N; epoch-NNNN-step-SSSSSSSS: S steps into epoch N (a mid-epoch checkpoint)
EPOCH_DIR = re.compile(r"epoch-(\d{4,})(?:-step-(\d{8,}))?")
EPOCH_TMP = re.compile(r"epoch-\d{4,}(?:-step-\d{8,})?\.tmp")  # a checkpoint being written (`save_resume_checkpoint`), left by a kill
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
        if EPOCH_DIR.fullmatch(path.name) or EPOCH_TMP.fullmatch(path.name):
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
