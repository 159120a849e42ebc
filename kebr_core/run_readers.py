"""Reading run directories back: what `kebr analyze` (and any caller) reads from the files the recipes
wrote. The layout and the file names are `kebr_core.runs` (the run-directory contract); this module only
reads them.

Four kinds of directory (`detect_kind`):

- pretraining run: config.json ("stage": "pretrain") + metrics.csv (columns `epoch_metrics.PRETRAIN_COLUMNS`);
- evaluation run: config.json ("stage": "finetune") + results.json + seed-S/metrics.csv (columns
  `epoch_metrics.FINETUNE_COLUMNS`) + seed-S/test_features.npz (features (N, dt), labels (N,), predictions (N,));
- ablation: ablation.json, whose configurations point at evaluation (and pretraining) run dirs; with
  two or more pretraining seeds those dirs hold one pseed-S run per seed (`runs.pretrain_seed_runs`,
  `AblationConfig.runs_by_pretrain_seed`);
- comparison: compare.json, the output of `kebr compare` (`read_comparison`).

`seed_grids` reads the test metrics of finished seeds as (pretraining seed × fine-tuning seed) grids, the
input of the paired statistics (`kebr_core.stats`, `kebr compare`).

The module stays one, though over 400 lines, because it is one cohesive thing: the reading side of the
run-directory contract, for figures and comparisons alike.

What a directory lacks (a missing file or column, a seed that has not started) raises `RunDataMissing`
with a one-sentence reason, so a caller can skip what needs it and go on; a file that defines the run
kind and cannot be read is the user's problem (KebrError).
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kebr_core import runs
from kebr_core.epoch_metrics import BALANCE, EPOCH, FINETUNE_CURVES, PRETRAIN_CURVES, TRAIN_PREFIX
from kebr_core.errors import KebrError

RunKind = Literal["pretrain", "finetune", "ablation", "comparison", "tune"]

# balance.csv (`balance_table`): one row per configuration and stage, the mean and std of each `BALANCE` metric
BALANCE_COLUMNS = ("config", "mcc", "mcc_align", "stage", "epoch", "seeds",
                   *(column for name in BALANCE for column in (name, f"{name}_std")))


class RunDataMissing(Exception):
    """The run directory does not hold what is asked for; the message is the reason (one sentence)."""


def detect_kind(run_dir: Path) -> RunKind:
    """ablation.json → ablation; compare.json → comparison; else config.json's "stage" (pretrain /
    finetune / tune); else KebrError."""
    if not run_dir.exists():
        raise KebrError(f"Run directory {run_dir} does not exist.")
    if not run_dir.is_dir():
        raise KebrError(f"{run_dir} is a file, not a run directory.")
    if (run_dir / runs.ABLATION_JSON).is_file():
        return "ablation"
    if (run_dir / runs.COMPARE_JSON).is_file():
        return "comparison"
    if (run_dir / runs.CONFIG).is_file():
        stage = _read_json(run_dir / runs.CONFIG, "Run config").get("stage")
        if stage in ("pretrain", "finetune", "tune"):
            return stage
        raise KebrError(f"{run_dir / runs.CONFIG} names stage {stage!r}; expected 'pretrain', 'finetune' or 'tune'.")
    raise KebrError(
        f"{run_dir} is not a KEBR run directory: it has no ablation.json, no compare.json and no config.json from "
        "pretrain or eval."
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object; a damaged file is the user's problem (KebrError) when it defines the run kind."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KebrError(f"{what} {path} cannot be read as JSON ({e}).") from None
    if not isinstance(data, dict):
        raise KebrError(f"{what} {path} must hold a JSON object, not {type(data).__name__}.")
    return data


read_json_object = _read_json  # the same rule for other readers of kebr's JSON files (`paper_table`)


def load_tune_study(run_dir: Path):
    """The Optuna study of a `kebr tune` run (its tune.db, or the --storage URL config.json names; a
    PostgreSQL password comes from ~/.pgpass, never from config.json) and the searched keys, in order."""
    import warnings

    import optuna

    config = _read_json(run_dir / runs.CONFIG, "Run config")
    url = runs.study_url(run_dir, config.get("storage"))
    if url.startswith("sqlite") and not (run_dir / runs.TUNE_DB).is_file():
        raise RunDataMissing(f"{run_dir} has no {runs.TUNE_DB}: no trial has run there")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        study = optuna.load_study(study_name=config.get("study", "kebr"), storage=url)
    except Exception as e:  # an unreachable server, a missing study
        raise KebrError(f"The study of {run_dir} ({url}) cannot be opened: {str(e).strip().splitlines()[0][:200]}.") from None
    return study, list(config.get("space", {}))


# ───────────────────────── per-epoch metrics ─────────────────────────


def read_metrics_csv(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The given columns of a per-epoch metrics.csv as float64 arrays (E,), or RunDataMissing."""
    if not path.is_file():
        raise RunDataMissing(f"{path} does not exist.")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise RunDataMissing(f"{path} lacks the column(s) {', '.join(missing)}.")
        rows = list(reader)
    if not rows:
        raise RunDataMissing(f"{path} holds no epochs yet.")
    try:
        table = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)  # (E, C)
    except (TypeError, ValueError):
        raise RunDataMissing(f"{path} has a missing or non-numeric value in one of {', '.join(columns)}.") from None
    return {c: table[:, j] for j, c in enumerate(columns)}


def readable_tables(paths: list[Path], columns: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """`read_metrics_csv` of each path that can be read; the others (e.g. a seed that has not started
    yet) are left out, so the rest still make a plot or a table."""
    tables = []
    for path in paths:
        try:
            tables.append(read_metrics_csv(path, columns))
        except RunDataMissing:
            continue
    return tables


def mean_over_seeds(tables: list[dict[str, np.ndarray]], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Average per-epoch columns over seeds, aligned on `epoch` (a seed that stopped early just
    contributes fewer epochs). Returns {"epoch": (E,), column: (E,), column + "_std": (E,) ...} over the
    union of epochs; the std is the sample std (ddof=1) over the seeds with a value, NaN for fewer than two."""
    epochs = np.unique(np.concatenate([t["epoch"] for t in tables]))
    out = {"epoch": epochs}
    for column in columns:
        grid = np.full((len(tables), len(epochs)), np.nan)  # (seeds, E)
        for i, t in enumerate(tables):  # one row per seed (a handful), not per sample
            grid[i, np.searchsorted(epochs, t["epoch"])] = t[column]
        # Not np.nanmean: an epoch where no seed has a finite value stays NaN (a gap) without a warning.
        finite = np.isfinite(grid)
        counts = finite.sum(axis=0)
        sums = np.where(finite, grid, 0.0).sum(axis=0)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        squares = np.where(finite, (grid - mean) ** 2, 0.0).sum(axis=0)
        out[column] = mean
        out[f"{column}_std"] = np.where(counts > 1, np.sqrt(squares / np.maximum(counts - 1, 1)), np.nan)
    return out


def eval_seeds(run_dir: Path) -> list[int]:
    """The seeds of an evaluation run that have a seed-S directory, in the run's order
    (results.json, else config.json, else numeric)."""
    present = set(runs.run_seeds(run_dir))
    order: list[int] = []
    for name in (runs.RESULTS_JSON, runs.CONFIG):
        path = run_dir / name
        if path.is_file():
            try:
                seeds = json.loads(path.read_text()).get("seeds") or []
                order = [int(s) for s in seeds]
            except (OSError, ValueError, TypeError, AttributeError, json.JSONDecodeError):
                order = []
            if order:
                break
    ordered = [s for s in order if s in present]
    return ordered + sorted(s for s in present if s not in ordered)


def evaluation_runs(run_dir: Path) -> list[Path]:
    """The evaluation runs in `run_dir`: itself, or its pseed-S runs when it is a folder of evaluations over
    several pretraining seeds (`runs.pretrain_seed_runs`), in seed order."""
    if eval_seeds(run_dir) or not (nested := runs.run_pretrain_seeds(run_dir)):
        return [run_dir]
    return [runs.pretrain_seed_dir(run_dir, seed) for seed in nested]


def eval_curves(run_dir: Path) -> tuple[dict[str, np.ndarray], int]:
    """Seed-averaged per-epoch columns of an evaluation run (over several pretraining seeds: of every
    run of each, `evaluation_runs`), and the number of runs averaged."""
    paths = [runs.seed_dir(run, seed) / runs.METRICS for run in evaluation_runs(run_dir) for seed in eval_seeds(run)]
    if not paths:
        raise RunDataMissing(f"Evaluation run {run_dir} has no seed-S directories with metrics.")
    tables = readable_tables(paths, FINETUNE_CURVES)
    if not tables:
        raise RunDataMissing(f"No seed of evaluation run {run_dir} has a readable seed-S/metrics.csv.")
    return mean_over_seeds(tables, FINETUNE_CURVES[1:]), len(tables)


def pretrain_curves(run_dir: Path) -> dict[str, np.ndarray]:
    """The per-epoch columns of a pretraining run; of a folder of runs over several pretraining seeds
    (pseed-S), their mean with a "_std" column each (`mean_over_seeds`)."""
    nested = runs.run_pretrain_seeds(run_dir) if not (run_dir / runs.METRICS).is_file() else []
    if not nested:
        return read_metrics_csv(run_dir / runs.METRICS, PRETRAIN_CURVES)
    tables = readable_tables([runs.pretrain_seed_dir(run_dir, seed) / runs.METRICS for seed in nested], PRETRAIN_CURVES)
    if not tables:
        raise RunDataMissing(f"No pretraining seed of {run_dir} has a readable pseed-S/metrics.csv.")
    return mean_over_seeds(tables, PRETRAIN_CURVES[1:])


# ───────────────────────── test representations ─────────────────────────


@dataclass
class TestFeatures:
    seed: int
    features: np.ndarray  # (N, dt)
    labels: np.ndarray  # (N,)


def load_test_features(run_dir: Path) -> TestFeatures:
    """The first seed's (in the run's seed order; over several pretraining seeds, of the first one's run)
    seed-S/test_features.npz that exists."""
    for run, seed in [(run, seed) for run in evaluation_runs(run_dir) for seed in eval_seeds(run)]:
        path = runs.seed_dir(run, seed) / runs.TEST_FEATURES
        if not path.is_file():
            continue
        try:
            with np.load(path) as npz:
                features, labels = np.asarray(npz["features"], np.float64), np.asarray(npz["labels"], np.float64)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise RunDataMissing(f"{path} cannot be read as features/labels arrays ({e}).") from None
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise RunDataMissing(f"{path} holds features {features.shape} and labels {labels.shape}; expected (N, dt) and (N,).")
        if features.shape[0] < 2 or features.shape[1] < 2:
            raise RunDataMissing(f"{path} holds {features.shape[0]} samples of {features.shape[1]} dims; a 2-D PCA needs at least 2 of each.")
        if not np.isfinite(features).all():
            raise RunDataMissing(f"{path} holds NaN or infinite features.")
        return TestFeatures(seed, features, labels)
    raise RunDataMissing(f"Evaluation run {run_dir} has no seed-S/test_features.npz.")


# ───────────────────────── MCC's balanced zero ─────────────────────────


def mcc_balanced_zero(mcc_on: bool, g: float | None) -> float | None:
    """cos θ = 0.5 − g, MCC's balanced zero (c_a = c_v there; Eq. 11–13), or None when MCC is off or g
    unknown. The loss has other zeros off the diagonal (`kebr_core.modules.mcc`), so this is a
    reference, not the only place the loss is 0."""
    return 0.5 - g if mcc_on and g is not None else None


def mcc_zero_cosine(run_dir: Path) -> float | None:
    """`mcc_balanced_zero` of a pretraining or evaluation run, from its config.json (None when unreadable)."""
    try:
        mcc = json.loads((run_dir / runs.CONFIG).read_text()).get("mcc", {})
        return mcc_balanced_zero(float(mcc.get("weight", 1.0)) != 0.0, float(mcc["g"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
        return None


# ───────────────────────── ablations ─────────────────────────


@dataclass
class AblationConfig:
    """One entry of ablation.json, with its run directories resolved against the ablation dir."""

    name: str
    kind: str
    mcc: bool
    settings: tuple  # everything but mcc that defines the configuration (pairs differ only in mcc)
    done: bool
    mean: dict[str, float]
    std: dict[str, float]
    eval_dir: Path | None
    pretrain_dir: Path | None
    g: float | None
    pretrain_seeds: tuple[int, ...] = ()  # two or more: eval_dir and pretrain_dir hold pseed-S runs (`runs_by_pretrain_seed`)

    def runs_by_pretrain_seed(self) -> list[tuple[int, Path | None, Path]]:
        """(pretraining seed, pretraining run or None, evaluation run) of each pretraining seed
        (`runs.pretrain_seed_runs`); one entry with a single pretraining seed or none."""
        if self.eval_dir is None:
            return []
        seeds = list(self.pretrain_seeds) or [0]
        evals = runs.pretrain_seed_runs(self.eval_dir, seeds)
        pres = runs.pretrain_seed_runs(self.pretrain_dir, seeds) if self.pretrain_dir is not None else [(s, None) for s in seeds]
        return [(seed, pre, run) for (seed, pre), (_, run) in zip(pres, evals)]

    @property
    def label(self) -> str:
        return f"{self.name} ({'with' if self.mcc else 'without'} MCC)"

    @property
    def mcc_zero(self) -> float | None:
        return mcc_balanced_zero(self.mcc, self.g)

    def mean_of(self, metric: str) -> float:
        """The test metric's mean over seeds; NaN (a gap) when missing."""
        return _number(self.mean.get(metric))

    def std_of(self, metric: str) -> float:
        """The test metric's std over seeds; 0 (no error bar) when missing."""
        return _number(self.std.get(metric), 0.0)


def _number(x: Any, default: float = float("nan")) -> float:
    """A metric value from ablation.json; null or a non-number reads as `default` (a gap, or no error bar)."""
    try:
        return float(x) if x is not None else default
    except (TypeError, ValueError):
        return default


def _seed_tuple(x: Any) -> tuple[int, ...]:
    """A list of seeds from ablation.json; anything else (older files have none) reads as ()."""
    try:
        return tuple(int(s) for s in x) if isinstance(x, list) else ()
    except (TypeError, ValueError):
        return ()


def read_ablation(run_dir: Path) -> tuple[dict[str, Any], list[AblationConfig]]:
    path = run_dir / runs.ABLATION_JSON
    data = _read_json(path, "Ablation file")
    raw = data.get("configurations")
    if not isinstance(raw, list):
        raise KebrError(f"{path} has no 'configurations' list.")
    configs = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or "name" not in c:
            raise KebrError(f"{path}: configuration {i} is not an object with a 'name'.")

        def rel(key: str) -> Path | None:
            return run_dir / str(c[key]) if c.get(key) else None  # an absolute path stays absolute

        def metrics(key: str) -> dict[str, Any]:
            return c[key] if isinstance(c.get(key), dict) else {}

        g = _number(c.get("g"))
        configs.append(AblationConfig(
            name=str(c["name"]), kind=str(c.get("kind", "")), mcc=bool(c.get("mcc", True)),
            settings=tuple(c.get(k) for k in ("pretrain", "tcmf", "g", "mcc_form", "mcc_align")),
            done=c.get("status") == "done", mean=metrics("mean"), std=metrics("std"),
            eval_dir=rel("eval_dir"), pretrain_dir=rel("pretrain_dir"), g=None if np.isnan(g) else g,
            pretrain_seeds=_seed_tuple(c.get("pretrain_seeds")),
        ))
    return data, configs


def mcc_pair(configs: list[AblationConfig]) -> tuple[AblationConfig, AblationConfig]:
    """(with MCC, without MCC): C1 and C4 when both finished, else the first finished pair that differs only in mcc."""
    done = [c for c in configs if c.done and c.eval_dir is not None]
    by_name = {c.name: c for c in done}
    if "C1" in by_name and "C4" in by_name and by_name["C1"].mcc and not by_name["C4"].mcc:
        return by_name["C1"], by_name["C4"]
    for a in done:
        for b in done:
            if a.mcc and not b.mcc and a.settings == b.settings:
                return a, b
    raise RunDataMissing("The ablation has no finished pair of configurations that differ only in MCC (e.g. C1 and C4).")


def balance_table(run_dir: str | Path) -> list[dict[str, Any]]:
    """The modality balance at the end of training of each finished configuration of an ablation.

    One row per configuration and stage (its pretraining run, then its fine-tuning seeds; columns
    `BALANCE_COLUMNS`): the last epoch's c_a, c_v (Eq. 9) and |θ_a − θ_v| (Eq. 12), mean and sample
    std (ddof=1, 0 for one run) over seeds. Stages whose metrics.csv is missing or unreadable are left out."""
    _, configs = read_ablation(Path(run_dir))
    rows: list[dict[str, Any]] = []
    for c in configs:
        if not c.done or c.eval_dir is None:
            continue
        stages = []
        pairs = c.runs_by_pretrain_seed()  # every pretraining seed's runs count as more seeds of the stage
        if c.pretrain_dir is not None:
            stages.append(("pretraining", [pre / runs.METRICS for _, pre, _ in pairs if pre is not None], PRETRAIN_CURVES, ""))
        seeds = [runs.seed_dir(run, s) / runs.METRICS for _, _, run in pairs for s in eval_seeds(run)]
        stages.append(("fine-tuning", seeds, FINETUNE_CURVES, TRAIN_PREFIX))
        for stage, paths, columns, prefix in stages:
            names = (EPOCH, *(prefix + name for name in BALANCE))
            last = [{k: table[k][-1] for k in names} for table in readable_tables(paths, columns)]
            if not last:
                continue
            # c.settings ends with mcc_align (read_ablation)
            row: dict[str, Any] = {"config": c.name, "mcc": c.mcc, "mcc_align": c.settings[-1], "stage": stage,
                                   "epoch": int(max(r[EPOCH] for r in last)), "seeds": len(last)}
            for name in BALANCE:
                values = np.array([r[prefix + name] for r in last])
                row[name] = float(values.mean())
                row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


# ───────────────────────── seed grids (paired comparisons) ─────────────────────────

# config.json keys that say how a run was executed or where it lives, not which configuration it is
_NOT_IDENTITY = frozenset({"data", "store", "seeds", "world_size", "selection", "checkpoint", "checkpoint_sha256"})


@dataclass(frozen=True)
class SeedGrid:
    """One configuration's test metrics over its seeds, for paired statistics (`kebr_core.stats`).

    values[metric] is (P, F): row p is pretraining seed `pretrain_seeds[p]`, column f fine-tuning seed
    `finetune_seeds[f]`; only finished seeds (seed-S/test.json) are columns."""

    name: str  # configuration name ("C1", …) or the evaluation run folder's name
    pretrain_seeds: tuple[int, ...]  # P entries
    finetune_seeds: tuple[int, ...]  # F entries
    values: dict[str, np.ndarray]  # test metric name -> (P, F)
    data: dict  # the store fingerprint recorded in config.json (`run_identity.data_fingerprint`)
    identity: dict  # the resolved configuration, for naming what differs between grids


def _pretrain_seed(eval_config: dict[str, Any], pretrain_dir: Path | None) -> int:
    """The seed that pretrained an evaluation run's checkpoint: from the pretraining run's config.json,
    else the evaluation config's train.seed (no pretraining: one row all the same)."""
    for path in ([pretrain_dir / runs.CONFIG] if pretrain_dir is not None else []):
        try:
            return int(json.loads(path.read_text())["train"]["seed"])
        except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError):
            pass
    try:
        return int(eval_config["train"]["seed"])
    except (KeyError, TypeError, ValueError):
        return 0


def _finished_tests(eval_dir: Path) -> dict[int, dict[str, float]]:
    """seed -> the test metrics of seed-S/test.json, for the seeds that finished, in the run's seed order."""
    out: dict[int, dict[str, float]] = {}
    for seed in eval_seeds(eval_dir):
        path = runs.seed_dir(eval_dir, seed) / runs.TEST_JSON
        if not path.is_file():
            continue
        try:
            test = json.loads(path.read_text())["test"]
            out[seed] = {str(k): float(v) for k, v in test.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
            raise RunDataMissing(f"{path} cannot be read as a finished seed's test metrics.") from None
    return out


def grid_from_eval_runs(name: str, rows: list[tuple[int, Path]]) -> SeedGrid:
    """The SeedGrid of one configuration from its evaluation runs, one per pretraining seed:
    rows = [(pretraining seed, evaluation run dir), …] (P entries). Every row must have finished the same
    fine-tuning seeds; their data fingerprints must agree."""
    tests = [(seed, eval_dir, _finished_tests(eval_dir)) for seed, eval_dir in rows]
    finetune_seeds = tuple(tests[0][2])
    if not finetune_seeds:
        raise RunDataMissing(f"Evaluation run {tests[0][1]} has no finished seed (seed-S/test.json).")
    for _, eval_dir, t in tests[1:]:
        if tuple(t) != finetune_seeds:
            raise RunDataMissing(f"{eval_dir} finished fine-tuning seeds {_seed_list(t)}, {tests[0][1]} finished "
                                 f"{_seed_list(finetune_seeds)}; a grid needs the same seeds in every row.")
    metrics = [m for m in tests[0][2][finetune_seeds[0]] if all(m in t[s] for _, _, t in tests for s in finetune_seeds)]
    values = {m: np.array([[t[s][m] for s in finetune_seeds] for _, _, t in tests]) for m in metrics}  # (P, F) each
    config = _read_json(rows[0][1] / runs.CONFIG, "Run config")
    identity = {k: v for k, v in config.items() if k not in _NOT_IDENTITY}
    return SeedGrid(name=name, pretrain_seeds=tuple(seed for seed, _ in rows), finetune_seeds=finetune_seeds,
                    values=values, data=dict(config.get("data") or {}), identity=identity)


def _seed_list(seeds) -> str:
    return ", ".join(map(str, seeds)) or "none"


def seed_grids(path: str | Path) -> list[SeedGrid]:
    """The seed grids of a run directory: an evaluation run gives one (named after its folder), an
    ablation one per finished configuration (unfinished and skipped ones are left out). Over several
    pretraining seeds (`runs.pretrain_seed_runs`) a grid has a row per pretraining seed: an ablation's
    configuration, or the evaluation of a multi-seed pretraining (a folder of pseed-S evaluation runs); in
    an ablation with P ≥ 2, a configuration without pretraining repeats its one row P times (it pairs with
    every pretraining seed). A pretraining
    run has no test metrics: KebrError. A run with no finished seed: RunDataMissing."""
    run_dir = Path(path)
    nested = runs.run_pretrain_seeds(run_dir) if run_dir.is_dir() and not (run_dir / runs.CONFIG).is_file() else []
    if nested and not (run_dir / runs.ABLATION_JSON).is_file():  # `kebr eval` of a multi-seed pretraining
        rows = runs.pretrain_seed_runs(run_dir, nested)
        if detect_kind(rows[0][1]) != "finetune":
            raise KebrError(f"{run_dir} holds pretraining runs (pseed-S); they have no test metrics to compare (use "
                            "the evaluation run made from them).")
        return [grid_from_eval_runs(run_dir.resolve().name, rows)]
    kind = detect_kind(run_dir)
    if kind == "pretrain":
        raise KebrError(f"{run_dir} is a pretraining run; it has no test metrics to compare (use its evaluation run).")
    if kind == "comparison":
        raise KebrError(f"{run_dir} holds the output of kebr compare, not a run; name the runs it compared.")
    if kind == "finetune":
        config = _read_json(run_dir / runs.CONFIG, "Run config")
        return [grid_from_eval_runs(run_dir.resolve().name, [(_pretrain_seed(config, None), run_dir)])]
    data, configs = read_ablation(run_dir)
    ablation_seeds = _seed_tuple(data.get("pretrain_seeds"))
    grids = []
    for c in configs:
        if not c.done or c.eval_dir is None:
            continue
        if len(c.pretrain_seeds) > 1:  # P pretraining seeds: one evaluation run (a grid row) each
            grids.append(grid_from_eval_runs(c.name, [(seed, run) for seed, _, run in c.runs_by_pretrain_seed()]))
            continue
        if not (c.eval_dir / runs.CONFIG).is_file():
            continue
        if not c.pretrain_seeds and len(ablation_seeds) > 1:
            # Without pretraining nothing depends on the pretraining seed: its F runs pair with each of them.
            grids.append(grid_from_eval_runs(c.name, [(seed, c.eval_dir) for seed in ablation_seeds]))
            continue
        config = _read_json(c.eval_dir / runs.CONFIG, "Run config")
        grids.append(grid_from_eval_runs(c.name, [(_pretrain_seed(config, c.pretrain_dir), c.eval_dir)]))
    if not grids:
        raise RunDataMissing(f"Ablation {run_dir} has no finished configuration.")
    return grids


def read_comparison(run_dir: Path) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """compare.json of a `kebr compare` output folder: the reference's label and, per compared run, its
    label and {metric: {"mean", "low", "high", …}} (null bounds: no interval)."""
    path = Path(run_dir) / runs.COMPARE_JSON
    data = _read_json(path, "Comparison file")
    try:
        rows = [(str(c["run"]), dict(c["metrics"])) for c in data["comparisons"]]
        return str(data["reference"]), rows
    except (KeyError, TypeError, ValueError):
        raise KebrError(f"{path} is not a kebr compare output: it lacks 'reference' or the comparisons' metrics.") from None
