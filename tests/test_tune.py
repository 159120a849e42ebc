"""`kebr tune`: the search space, the validation-only rule, pruning, resume after kill -9, several processes
on one study (SQLite and a real PostgreSQL 15 cluster), best.toml replay, analyze, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core import runs
from kebr_core.config import RunConfig, resolve_config
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.recipes.tune import TuneOptions, tune
from kebr_core.search_space import load_space, parse_space
from tests.conftest import TINY_BERT

optuna = pytest.importorskip("optuna")

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
FAST = ["--text-model", TINY_BERT, "--batch-size", "8", "--set", "train.unfreeze=false"]
SPACE = '"mcc.g" = {low = -0.4, high = 0.4}\n"train.lr" = {low = 1e-4, high = 1e-2, log = true}\n'


def base_config(epochs: int = 2, seeds: list[int] | None = None) -> RunConfig:
    cfg = RunConfig.for_stage("finetune")
    cfg.model.text_model, cfg.train.batch_size, cfg.train.unfreeze, cfg.train.epochs = TINY_BERT, 8, False, epochs
    cfg.train.seeds = seeds or [0]
    return cfg


def load_study(run_dir: Path):
    return optuna.load_study(study_name="kebr", storage=f"sqlite:///{run_dir / 'tune.db'}")


def kebr(*args: str) -> list[str]:
    return [sys.executable, "-m", "kebr_cli", *args]


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ───────────────────────── the search space ─────────────────────────

GOOD = [
    ({"mcc.g": {"low": -0.4, "high": 0.4}}, ("mcc.g", "float", -0.4, 0.4, False)),
    ({"train.lr": {"low": 1e-5, "high": 1e-3, "log": True}}, ("train.lr", "float", 1e-5, 1e-3, True)),
    ({"model.layers": {"low": 1, "high": 4}}, ("model.layers", "int", 1, 4, False)),
    ({"train.lr_fusion": {"low": 1e-6, "high": 1e-4}}, ("train.lr_fusion", "float", 1e-6, 1e-4, False)),
    ({"mcc": {"weight": {"low": 0, "high": 1}}}, ("mcc.weight", "float", 0.0, 1.0, False)),  # TOML's unquoted dotted key
]


@pytest.mark.parametrize("entries, want", GOOD)
def test_space_ranges_parse_to_the_field_type(entries, want) -> None:
    (p,) = parse_space(entries, "space.toml")
    assert (p.key, p.kind, p.low, p.high, p.log) == want
    assert type(p.low) is (int if want[1] == "int" else float)


def test_space_choices_and_grid() -> None:
    form, weight, layers = parse_space({"mcc.form": ["paper", "reference"], "mcc.weight": {"low": 0, "high": 1, "step": 0.25},
                                        "model.layers": {"low": 2, "high": 6, "step": 2}}, "s")
    assert form.kind == "choice" and form.grid() == ["paper", "reference"]
    assert weight.grid() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert layers.grid() == [2, 4, 6]
    with pytest.raises(KebrError, match=r"--sampler grid needs a list of values or a step for mcc.g"):
        parse_space({"mcc.g": {"low": 0, "high": 0.2}}, "s")[0].grid()


BAD = [
    ({"mcc.gg": {"low": 0, "high": 1}}, r"space.toml: unknown setting 'mcc.gg'"),
    ({"mcc.g": {"low": -0.6, "high": 0.4}}, r"space.toml: mcc.g \(low\) must lie in \(-0.5, 0.5\)"),
    ({"mcc.g": {"low": -0.4, "high": 0.5}}, r"space.toml: mcc.g \(high\) must lie in \(-0.5, 0.5\)"),
    ({"model.dropout": {"low": 0.1, "high": 1.0}}, r"model.dropout \(high\) must lie in \[0, 1\)"),
    ({"mcc.form": ["paper", "made-up"]}, r"space.toml: mcc.form must be one of paper"),
    ({"mcc.g": {"low": 0.3, "high": 0.1}}, r"low \(0.3\) must be below high \(0.1\)"),
    ({"train.lr": {"low": 0, "high": 1e-3, "log": True}}, r"train.lr \(low\) must be a positive number"),
    ({"mcc.weight": {"low": 0, "high": 1, "log": True}}, r"a log range needs low > 0"),
    ({"model.layers": {"low": 1.5, "high": 4}}, r"model.layers is an integer setting, so low must be an integer"),
    ({"model.layers": {"low": 0, "high": 4}}, r"model.layers \(low\) must be an integer ≥ 1"),
    ({"mcc.g": {"low": -0.1}}, r"mcc.g needs both low and high"),
    ({"mcc.g": {"low": -0.1, "high": 0.1, "scale": 2}}, r"unknown entry scale"),
    ({"mcc.form": {"low": 0, "high": 1}}, r"mcc.form is not a number, so it takes a list"),
    ({"mcc.form": []}, r"lists no value"),
    ({"mcc.g": 0.2}, r"must be a range \{low = …, high = …\} or a list of values"),
    ({"train.unfreeze": ["yes"]}, r"train.unfreeze must be true or false"),
    ({}, r"names no setting to search"),
]


@pytest.mark.parametrize("entries, message", BAD)
def test_space_errors_name_the_file_and_key(entries, message) -> None:
    with pytest.raises(KebrError, match=message):
        parse_space(entries, "space.toml")


def test_space_files_toml_json_and_builtin(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(SPACE + '"mcc.form" = ["paper", "reference"]\n')
    (tmp_path / "s.json").write_text(json.dumps({"mcc.g": {"low": -0.1, "high": 0.1}}))
    (tmp_path / "bad.toml").write_text("mcc.g = {low = ")
    assert [p.key for p in load_space(tmp_path / "s.toml")] == ["mcc.g", "train.lr", "mcc.form"]
    assert [p.key for p in load_space(tmp_path / "s.json")] == ["mcc.g"]
    assert {p.key for p in load_space("paper")} == {"mcc.g", "mcc.weight", "train.lr", "model.dropout", "model.layers"}
    assert "model.layers" not in {p.key for p in load_space("paper", leave_out=("model.layers",))}
    with pytest.raises(KebrError, match=r"--space .*bad.toml is not valid TOML"):
        load_space(tmp_path / "bad.toml")
    with pytest.raises(KebrError, match=r"--space .*missing.toml is neither a file nor a built-in space \(paper\)"):
        load_space(tmp_path / "missing.toml")


# ───────────────────────── the search ─────────────────────────


def test_the_test_split_is_never_read_during_the_search(tiny_store: Path, tmp_path: Path, monkeypatch) -> None:
    """Every audio/vision read of a test sample raises; the texts of test samples never reach the tokeniser."""
    store = FeatureStore(tiny_store)
    test_ids = set(store.indices("test").tolist())
    test_texts = {store.texts[i] + f"#{i}" for i in test_ids}
    reads = {"train": 0, "valid": 0}
    split_of = store.splits

    def guarded(original):
        def read(self, i):
            if int(i) in test_ids:
                raise AssertionError(f"test sample {i} was read during the search")
            reads[str(split_of[int(i)])] += 1
            return original(self, i)
        return read

    monkeypatch.setattr(FeatureStore, "audio", guarded(FeatureStore.audio))
    monkeypatch.setattr(FeatureStore, "vision", guarded(FeatureStore.vision))
    monkeypatch.setattr(FeatureStore, "read_block", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read_block")))
    import kebr_core.recipes.finetune as finetune_module

    tokenized: list[str] = []
    tokenize = finetune_module.tokenize_plain
    monkeypatch.setattr(finetune_module, "tokenize_plain", lambda texts, *a, **k: tokenized.extend(texts) or tokenize(texts, *a, **k))
    space = parse_space({"mcc.g": {"low": -0.3, "high": 0.3}}, "s")
    result = tune(tiny_store, tmp_path / "run", base_config(), space, TuneOptions(trials=2, sampler_seed=0), finalize=False)
    assert result.finished == 2 and reads["train"] > 0 and reads["valid"] > 0
    texts = store.texts
    assert all(tokenized[i] == "" for i in test_ids) and all(tokenized[i] == texts[i] for i in range(len(texts)) if i not in test_ids)
    assert not test_texts & set(tokenized)
    assert not (tmp_path / "run" / "best-eval").exists()
    # --stage both: each trial pretrains first, on train + valid only
    both = tune(tiny_store, tmp_path / "both", base_config(epochs=1), space,
                TuneOptions(trials=1, stage="both", pretrain_epochs=1, sampler_seed=0), finalize=False)
    assert both.finished == 1
    pretrain_run = json.loads((tmp_path / "both" / "trials" / "trial-0000" / "pretrain" / "config.json").read_text())
    assert pretrain_run["splits"] == ["train", "valid"] and pretrain_run["mcc"]["g"] == both.trials[0].params["mcc.g"]


def test_pruning_stops_a_bad_trial_early(tiny_store: Path, tmp_path: Path) -> None:
    """Five good trials (the MedianPruner's start-up), then one with a learning rate too small to learn: the
    pruner stops it after its first epoch (its validation MAE is above the median of the others' at epoch 1)."""
    run = tmp_path / "run"
    storage = f"sqlite:///{tmp_path / 'study.db'}"  # made before kebr's run folder exists: another storage
    study = optuna.create_study(study_name="kebr", storage=storage, direction="minimize")
    lrs = (1e-2,) * 5 + (1e-9,)
    for lr in lrs:
        study.enqueue_trial({"train.lr": lr})
    space = parse_space({"train.lr": {"low": 1e-9, "high": 1e-1, "log": True}}, "s")
    cfg = base_config(epochs=3)
    cfg.train.lr_fusion = None  # TCMF at the trial's lr too: the bad trial learns nothing
    result = tune(tiny_store, run, cfg, space, TuneOptions(trials=6, storage=storage), finalize=False)
    states = [(r.params["train.lr"], r.state, r.epochs_run) for r in result.trials]
    assert states[:5] == [(1e-2, "COMPLETE", 3)] * 5
    assert states[5] == (1e-9, "PRUNED", 1)
    assert result.pruned_epochs_saved == 2
    rows = (run / "trials" / "trial-0005" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + the one epoch it ran
    # off with prune=False: the same trial runs all its epochs
    run2, storage2 = tmp_path / "run2", f"sqlite:///{tmp_path / 'study2.db'}"
    study = optuna.create_study(study_name="kebr", storage=storage2, direction="minimize")
    for lr in lrs:
        study.enqueue_trial({"train.lr": lr})
    result = tune(tiny_store, run2, cfg, space, TuneOptions(trials=6, prune=False, storage=storage2), finalize=False)
    assert [r.state for r in result.trials] == ["COMPLETE"] * 6 and result.pruned_epochs_saved == 0


def test_a_trial_started_after_the_last_slot_was_taken_is_surplus_and_counted_nowhere(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes on one study may both see a free slot and both start a trial: the later-numbered one
    finds the search full, is marked surplus and stopped before it trains, and no count or table has it.
    Made deterministic here: the count this process checks before starting says the search is empty."""
    import importlib

    tune_module = importlib.import_module("kebr_core.recipes.tune")
    space = parse_space({"mcc.g": {"low": -0.3, "high": 0.3}}, "s")
    storage, run = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "run"
    options = TuneOptions(trials=1, storage=storage, sampler_seed=0)
    assert tune(tiny_store, run, base_config(epochs=1), space, options, finalize=False).finished == 1
    real, stale = tune_module._counts, iter([(0, 0)])  # as if the other process's trial were not there yet
    monkeypatch.setattr(tune_module, "_counts", lambda study: next(stale, None) or real(study))
    lines: list[int] = []  # the CLI's per-trial line: never for a surplus trial (it was a StopIteration once)
    result = tune(tiny_store, run, base_config(epochs=1), space, options, finalize=False,
                  on_trial=lambda record, best, done, total: lines.append(record.number))
    assert lines == []
    trials = optuna.load_study(study_name="kebr", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"] and trials[1].user_attrs.get("surplus")
    assert "epochs_run" not in trials[1].user_attrs and not runs.trial_dir(run, 1).exists()
    assert result.finished == 1 and [r.number for r in result.trials] == [0]


def test_the_fine_tuning_loop_stops_when_on_epoch_says_so(tiny_store: Path, tmp_path: Path) -> None:
    from kebr_core.distributed import DistInfo
    from kebr_core.recipes.finetune import fit_on_validation, labeled_splits, split_datasets
    from kebr_core.recipes.setup import configure_from_store
    from kebr_core.training import resolve_device

    store = FeatureStore(tiny_store)
    cfg = base_config(epochs=5)
    configure_from_store(cfg, store)
    datasets, collate, token_ids = split_datasets(store, labeled_splits(store, tiny_store, ("train", "valid"))[0], cfg)
    seen = []
    fitted = fit_on_validation(cfg, 0, datasets, collate, token_ids, None, resolve_device("cpu"), DistInfo(),
                               text_cache={}, metrics_path=tmp_path / "m.csv",
                               on_epoch=lambda epoch, row: seen.append((epoch, row["valid_mae"])) or epoch == 2)
    assert [e for e, _ in seen] == [1, 2] and fitted.epochs_run == 2
    assert fitted.valid_mae == min(v for _, v in seen) and fitted.best_epoch in (1, 2)
    assert len((tmp_path / "m.csv").read_text().strip().splitlines()) == 3


def test_identity_a_rerun_with_another_space_or_base_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    space = parse_space({"mcc.g": {"low": -0.3, "high": 0.3}}, "s")
    tune(tiny_store, run, base_config(epochs=1), space, TuneOptions(trials=1, sampler_seed=0), finalize=False)
    again = tune(tiny_store, run, base_config(epochs=1), space, TuneOptions(trials=2, sampler_seed=1), finalize=False)
    assert again.finished == 2 and [r.number for r in again.trials] == [0, 1]  # continued, trial 0 kept
    other = parse_space({"mcc.g": {"low": -0.2, "high": 0.3}}, "s")
    with pytest.raises(KebrError, match=r"holds a run with other settings or data: space.mcc.g.low \(-0.3 → -0.2\)"):
        tune(tiny_store, run, base_config(epochs=1), other, TuneOptions(trials=2), finalize=False)
    with pytest.raises(KebrError, match=r"train.epochs \(1 → 2\)"):
        tune(tiny_store, run, base_config(epochs=2), space, TuneOptions(trials=2), finalize=False)


def test_cli_finalize_writes_trials_csv_and_best_toml_that_eval_replays(tiny_store: Path, tmp_path: Path) -> None:
    space, run, ev = tmp_path / "space.toml", tmp_path / "run", tmp_path / "ev"
    space.write_text(SPACE)
    r = runner.invoke(app, ["tune", "-d", str(tiny_store), "-o", str(run), "--space", str(space), "--trials", "3",
                            "--epochs", "2", "--seeds", "2", "--json", *FAST])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["finished"] == 3 and set(out["best"]["params"]) == {"mcc.g", "train.lr"}
    assert out["final"]["seeds"] == [0, 1] and set(out["final"]) >= {"best", "base", "paired"}
    header, *rows = (run / "trials.csv").read_text().strip().splitlines()
    assert header.split(",") == ["Model", "Dataset", "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
                                 "Mult_acc_5", "Mult_acc_7", "MAE", "Corr", "number", "state", "mcc.g", "train.lr",
                                 "value", "epochs_run", "seconds"]
    assert len(rows) == 3
    best = out["best"]
    best_cfg = resolve_config("finetune", file=run / "best.toml")
    assert best_cfg.mcc.g == best["params"]["mcc.g"] and best_cfg.train.lr == best["params"]["train.lr"]
    evaluated = json.loads((run / "best-eval" / "config.json").read_text())
    assert {k: evaluated[k] for k in ("model", "mcc", "train")} == best_cfg.to_dict()
    # Replay: kebr eval --config best.toml gives the best-eval numbers again, seed for seed.
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "--config", str(run / "best.toml"), "-o", str(ev)])
    assert r.exit_code == 0, r.output
    replay = json.loads((ev / "results.json").read_text())["per_seed"]
    assert replay == json.loads((run / "best-eval" / "results.json").read_text())["per_seed"]
    assert out["final"]["best"]["per_seed"] == replay
    # analyze on the tune run: history, importances, one slice per parameter
    r = runner.invoke(app, ["analyze", str(run)])
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert written == ["optimization_history.png", "param_importances.png", "slice_mcc.g.png", "slice_train.lr.png"]


def test_cli_bad_input_is_one_sentence(tiny_store: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text('"mcc.g" = {low = -0.6, high = 0.4}\n')
    cases = [
        (["--space", str(space)], "mcc.g (low) must lie in (-0.5, 0.5)"),
        (["--storage", "nosuchdb://x/y"], "The study storage nosuchdb://x/y cannot be opened"),
        (["--storage", "sqlite:///x.db", "--force"], "--force cannot go with --storage"),
        (["--finalize"], "No search has run in"),
        (["--finalize", "--no-finalize"], "--finalize and --no-finalize contradict each other"),
    ]
    for extra, message in cases:
        r = runner.invoke(app, ["tune", "-d", str(tiny_store), "-o", str(tmp_path / "run"), *FAST, *extra])
        assert r.exit_code == 1, (extra, r.output)
        assert message in " ".join(r.output.split()) and "Traceback" not in r.output, (extra, r.output)
    pre = tmp_path / "pre"
    assert runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(pre), "--epochs", "1", "--text-model", TINY_BERT]).exit_code == 0
    layers = tmp_path / "layers.toml"
    layers.write_text('"model.layers" = {low = 1, high = 3}\n')
    r = runner.invoke(app, ["tune", "-d", str(tiny_store), "-o", str(tmp_path / "r2"), "--pretrained", str(pre),
                            "--space", str(layers), *FAST])
    assert r.exit_code == 1 and "model.layers is fixed by the pretrained checkpoint" in " ".join(r.output.split())


# ───────────────────────── processes: kill -9, two at once ─────────────────────────


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_resume_after_kill_9_mid_trial_reruns_that_trial(tiny_store: Path, tmp_path: Path) -> None:
    space, run = tmp_path / "space.toml", tmp_path / "run"
    space.write_text(SPACE)
    cmd = kebr("tune", "-d", str(tiny_store), "-o", str(run), "--space", str(space), "--trials", "2", "--epochs", "30",
               "--no-prune", "--heartbeat", "1", "--no-finalize", *FAST)
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    metrics = run / "trials" / "trial-0000" / "metrics.csv"
    try:
        wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3 or proc.poll() is not None,
                 240, "the first trial's second epoch")
        assert proc.poll() is None, proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)  # mid-trial: epochs 2 of 30 done
    finally:
        proc.wait()
    killed = load_study(run).trials[0]
    assert killed.state.name == "RUNNING"
    time.sleep(2.5)  # longer than the grace period (2 × --heartbeat): the dead trial's heartbeat is stale
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = load_study(run).trials
    states = [t.state.name for t in trials]
    assert states[0] == "FAIL" and states.count("COMPLETE") == 2, states
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retried = [t for t in trials if t.state.name == "COMPLETE" and RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 0]
    assert len(retried) == 1 and retried[0].params == killed.params  # the killed trial ran again, same values
    assert len(retried[0].intermediate_values) == 30


def _two_processes(run_dirs: list[Path], tiny_store: Path, space: Path, storage: list[str]) -> list[str]:
    procs = [subprocess.Popen(kebr("tune", "-d", str(tiny_store), "-o", str(d), "--space", str(space), "--trials", "6",
                                   "--epochs", "2", "--no-finalize", *storage, *FAST), env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in run_dirs]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(err)
    return outs


def _assert_one_study_of_n(study, n: int, logs: list[str]) -> None:
    # A trial started at the very moment another process took the last slot is marked surplus, stopped
    # before it trains and counted nowhere (kebr_core.recipes.tune.SURPLUS).
    surplus = [t for t in study.trials if t.user_attrs.get("surplus")]
    assert all(t.state.name == "PRUNED" and "epochs_run" not in t.user_attrs for t in surplus)
    trials = [t for t in study.trials if not t.user_attrs.get("surplus")]
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == n and len({t.number for t in finished}) == n
    assert len({tuple(sorted(t.params.items())) for t in finished}) == n  # distinct values, not one trial twice
    assert not [t for t in trials if t.state.name in ("FAIL", "RUNNING")]
    assert all("trial " in log for log in logs)  # both processes ran trials


def test_two_processes_share_one_sqlite_study(tiny_store: Path, tmp_path: Path) -> None:
    space, run = tmp_path / "space.toml", tmp_path / "run"
    space.write_text(SPACE)
    logs = _two_processes([run, run], tiny_store, space, [])
    _assert_one_study_of_n(load_study(run), 6, logs)


def _postgres_bin() -> Path | None:
    """The folder of the server binaries: Debian's /usr/lib/postgresql/N/bin, else where initdb is on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_unless_required(reason: str) -> None:
    """Skip with `reason` on a machine without PostgreSQL (a user's laptop); CI sets KEBR_REQUIRE_POSTGRES=1
    (.ci/run), where a skip would hide that the test did not run, so there it fails instead."""
    if os.environ.get("KEBR_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"KEBR_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def test_two_processes_share_one_postgresql_study(tiny_store: Path, tmp_path: Path) -> None:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        _skip_unless_required("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _skip_unless_required("psycopg2 (pip install 'kebr[postgres]') is not installed")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="kebr-pg-"))
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def pg(*args: str) -> None:
        done = subprocess.run([*as_postgres, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[0]} failed: {done.stderr}"

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
           f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
        pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "kebr")
        url = f"postgresql://postgres@127.0.0.1:{port}/kebr"
        space = tmp_path / "space.toml"
        space.write_text(SPACE)
        # two "machines": their own run folders, one study
        logs = _two_processes([tmp_path / "a", tmp_path / "b"], tiny_store, space, ["--storage", url])
        from kebr_core.runs import study_url

        _assert_one_study_of_n(optuna.load_study(study_name="kebr", storage=study_url(tmp_path, url)), 6, logs)
        assert json.loads((tmp_path / "a" / "config.json").read_text())["storage"] == url
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_a_trial_whose_loss_diverges_fails_and_a_search_of_only_those_stops(tiny_store: Path, tmp_path: Path) -> None:
    space = parse_space({"train.lr": [1e30]}, "s")
    cfg = base_config(epochs=1)
    cfg.train.lr_fusion = None
    with pytest.raises(KebrError, match=r"2 trials of the search in .* failed \(the loss became NaN or infinite"):
        tune(tiny_store, tmp_path / "run", cfg, space, TuneOptions(trials=1), finalize=False)
    assert [t.state.name for t in load_study(tmp_path / "run").trials] == ["FAIL", "FAIL"]
