"""Runs you can trust: one configuration (defaults, checks, file/options/--set precedence), the run
directory's identity, crash-safe checkpoints, safe trainer state, exact resume, fresh heads per seed,
ablation reruns that merge, analyze's own stale plots, the results table and extraction settings."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core import checkpoints, runs
from kebr_core.config import RunConfig, parse_seeds, resolve_config
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.masking import tokenize_plain
from kebr_core.text_encoder import load_tokenizer
from kebr_core.recipes.finetune import apply_checkpoint_config, finetune
from kebr_core.recipes.pretrain import pretrain
from kebr_core.recipes.setup import configure_from_store, setup_model
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]


def small_cfg(stage: str = "finetune", epochs: int = 1, **values) -> RunConfig:
    return resolve_config(stage, options={"model.text_model": TINY_BERT, "model.head_hidden": 16, "train.epochs": epochs,
                                          "train.batch_size": 8, "train.unfreeze": False, "train.checkpoint_every": 1,
                                          "train.seeds": [0], **values})


# ───────────────────────── 1–2: one configuration, files, overrides ─────────────────────────


def test_stage_defaults_and_paper_preset() -> None:
    pre, ft = RunConfig.for_stage("pretrain"), RunConfig.for_stage("finetune")
    assert (pre.train.epochs, pre.train.unfreeze, pre.train.lr_fusion) == (20, False, None)
    assert (ft.train.epochs, ft.train.unfreeze, ft.train.lr_fusion) == (10, True, 5e-6)
    assert RunConfig.for_stage("pretrain", preset="paper").train.epochs == 200
    paper_ft = RunConfig.for_stage("finetune", preset="paper").train
    # §4.2: "the epoch is set to 200", "5e-6 for BERT and 1e-4 for other parameters" (TCMF included)
    assert (paper_ft.epochs, paper_ft.lr, paper_ft.lr_encoder, paper_ft.lr_fusion) == (200, 1e-4, 5e-6, None)


@pytest.mark.parametrize("stage, form, g, weight, random_word", [
    ("pretrain", "mean-cosine", 0.25, 0.5, "per-epoch"),  # pretrain.py:69, 83–85, 88; data_loader.py:70
    ("finetune", "reference", 0.4, 1.0, "fixed"),  # main.py:96, 122–125, 129
])
def test_authors_preset_per_stage(stage: str, form: str, g: float, weight: float, random_word: str) -> None:
    cfg = RunConfig.for_stage(stage, preset="authors")
    assert (cfg.mcc.form, cfg.mcc.g, cfg.mcc.weight, cfg.mcc.align) == (form, g, weight, "authors")
    m = cfg.model
    assert (m.attention_width, m.ffn, m.dropout, m.head_hidden, m.max_text_len, m.shared_layers, m.layers) == (
        256, "linear", 0.5, 256, 39, True, 4)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.random_word) == (200, 32, random_word)
    if stage == "finetune":  # main.py:85–91: encoder and TCMF 5e-6, heads 1e-4, cosine T_max 20
        t = cfg.train
        assert (t.lr, t.lr_fusion, t.lr_encoder, t.cosine_tmax, t.unfreeze) == (1e-4, 5e-6, 5e-6, 20, True)


@pytest.mark.parametrize("key, value, message", [
    ("mcc.g", 0.5, "mcc.g must lie in (-0.5, 0.5)"),
    ("mcc.g", float("nan"), "mcc.g must lie in (-0.5, 0.5)"),
    ("mcc.s", -1.0, "mcc.s must be a positive number"),
    ("mcc.form", "nope", "mcc.form must be one of paper, reference, mean-cosine, balanced, not 'nope'."),
    ("model.attention_width", 0, "model.attention_width must be an integer ≥ 1 and ≤ 1,048,576 (or unset: d_t, no projection), not 0."),
    ("model.fusion", "early", "model.fusion must be one of tcmf, late, symmetric, not 'early'."),
    ("train.random_word", "always", "train.random_word must be one of fixed, per-epoch, not 'always'."),
    ("mcc.align", "diag", "mcc.align must be one of tile, authors, projected"),
    ("model.ffn", "conv", "model.ffn must be one of mlp, linear"),
    ("model.layers", 0, "model.layers must be an integer ≥ 1 and ≤ 1,000, not 0."),
    ("model.dropout", 1.0, "model.dropout must lie in [0, 1)"),
    ("train.epochs", 0, "train.epochs must be an integer ≥ 1"),
    ("train.batch_size", -3, "train.batch_size must be an integer ≥ 1"),
    ("train.lr", -1.0, "train.lr must be a positive number"),
    ("train.lr", float("inf"), "train.lr must be a positive number"),
    ("train.workers", -1, "train.workers must be an integer ≥ 0"),
    ("train.checkpoint_every", 0, "train.checkpoint_every must be an integer ≥ 1"),
    ("train.seeds", [1, 1], "train.seeds must be one or more distinct integers ≥ 0"),
    ("train.epochs", 2.5, "train.epochs must be an integer, not 2.5 (float)."),
    ("train.device", "tpu", "train.device must be auto, cpu, cuda or cuda:N"),
])
def test_every_field_is_checked_with_one_sentence(key: str, value, message: str) -> None:
    with pytest.raises(KebrError) as e:
        resolve_config("pretrain", options={key: value})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_library_callers_get_the_same_check() -> None:
    cfg = RunConfig()
    cfg.mcc.g = 0.7  # set by hand: the recipes validate again before they run
    with pytest.raises(KebrError, match=r"mcc.g must lie in"):
        cfg.validate()
    with pytest.raises(KebrError, match="model.heads must be an integer ≥ 1"):
        RunConfig.from_dict({"model": {"heads": 0}})
    with pytest.raises(KebrError, match="unknown setting 'mcc.gee'"):
        RunConfig.from_dict({"mcc": {"gee": 0.1}})


def test_precedence_defaults_preset_file_options_set(tmp_path: Path) -> None:
    file = tmp_path / "run.toml"
    file.write_text("[train]\nepochs = 7\nlr = 3e-4\nbatch_size = 16\n[mcc]\ng = 0.1\n")
    cfg = resolve_config("pretrain", preset="paper", file=file, options={"train.lr": 2e-4, "mcc.g": 0.3},
                         sets=["mcc.g=-0.1", "train.seeds=1111,1112", "train.lr_fusion=none", "train.bf16=true"])
    assert cfg.train.epochs == 7  # file over preset (200)
    assert cfg.train.batch_size == 16 and cfg.train.lr == 2e-4  # options over file
    assert cfg.mcc.g == -0.1  # --set over options
    assert cfg.train.seeds == [1111, 1112] and cfg.train.lr_fusion is None and cfg.train.bf16 is True
    with pytest.raises(KebrError, match=r"--set mcc.g=abc: mcc.g must be a number in plain decimal"):
        resolve_config("pretrain", sets=["mcc.g=abc"])
    with pytest.raises(KebrError, match=r"--set takes key=value"):
        resolve_config("pretrain", sets=["mcc.g"])


def test_seeds_are_a_count_or_a_list() -> None:
    assert parse_seeds("5") == [0, 1, 2, 3, 4]
    assert parse_seeds("1111,1112,1113") == [1111, 1112, 1113]
    for bad in ("0", "a,b", "-2"):
        with pytest.raises(KebrError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(KebrError, match="--pretrain-seeds lists seed 1 more than once"):
        parse_seeds("1,2,1", "--pretrain-seeds")


def test_print_config_shows_the_resolved_layers(tmp_path: Path) -> None:
    earlier = tmp_path / "config.json"  # any run's config.json (extra keys are ignored)
    earlier.write_text(json.dumps({"stage": "finetune", "store": "x.h5", "mcc": {"g": 0.1, "s": 2.0},
                                   "train": {"epochs": 4, "lr": 3e-4}}))
    r = runner.invoke(app, ["eval", "-d", "synth", "--config", str(earlier), "--lr", "5e-4", "--seeds", "1111,1112",
                            "--set", "train.epochs=6", "--print-config"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert (cfg["mcc"]["g"], cfg["mcc"]["s"], cfg["train"]["lr"], cfg["train"]["epochs"]) == (0.1, 2.0, 5e-4, 6)
    assert cfg["train"]["seeds"] == [1111, 1112] and cfg["train"]["unfreeze"] is True
    r = runner.invoke(app, ["pretrain", "x.h5", "--set", "mcc.g=0.7", "--print-config"])
    assert r.exit_code == 1 and "--set mcc.g must lie in (-0.5, 0.5)" in r.stderr and "Traceback" not in r.output


def test_ablate_g_sweep_default_is_valid_and_bad_values_are_refused(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ablate", "--g-sweep", "--print-config", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) == {"pretrain", "finetune"}
    r = runner.invoke(app, ["ablate", "--g-sweep", "--g-values", "0,0.5", "-o", str(tmp_path / "a")])
    assert r.exit_code == 1 and "--g-values must lie in (-0.5, 0.5)" in r.stderr
    assert not (tmp_path / "a").exists()


# ───────────────────────── 3: run identity ─────────────────────────


@pytest.fixture(scope="module")
def finished_eval(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ident")
    store = write_tiny_store(tmp / "a.h5", n=40)
    finetune(store, tmp / "ev", small_cfg())
    return store, tmp / "ev"


@pytest.mark.parametrize("change, keys", [
    ({"mcc.g": -0.3}, ["mcc.g (0.2 → -0.3)"]),
    ({"train.lr": 2e-5}, ["train.lr"]),
    ({"mcc.weight": 0.5}, ["mcc.weight"]),
    ({"train.epochs": 2}, ["train.epochs (1 → 2)"]),
])  # not train.seeds: more seeds grow the run, fewer report on those (tests/test_run_records.py)
def test_a_rerun_with_other_settings_is_refused_naming_the_keys(finished_eval, change: dict, keys: list[str]) -> None:
    store, run = finished_eval
    before = (run / "results.json").read_bytes()
    with pytest.raises(KebrError) as e:
        finetune(store, run, small_cfg(**change))
    assert all(k in str(e.value) for k in keys) and "--force" in str(e.value)
    assert (run / "results.json").read_bytes() == before


def test_a_rerun_on_other_data_is_refused(finished_eval, tmp_path: Path) -> None:
    store, run = finished_eval
    other = write_tiny_store(tmp_path / "b.h5", n=40, seed=1)
    with pytest.raises(KebrError, match=r"data\.content_sha256 .*data\.store "):
        finetune(other, run, small_cfg())


def test_same_settings_continue_and_operational_keys_may_differ(finished_eval) -> None:
    store, run = finished_eval
    stamp = (runs.seed_dir(run, 0) / runs.TEST_JSON).stat().st_mtime_ns
    finetune(store, run, small_cfg(**{"train.workers": 0, "train.device": "cpu"}))
    assert (runs.seed_dir(run, 0) / runs.TEST_JSON).stat().st_mtime_ns == stamp


def test_a_run_written_before_a_field_existed_continues_with_its_default(finished_eval, tmp_path: Path) -> None:
    """A config.json without a field added later (train.random_word, model.attention_width) is read as that
    field's default, the behaviour the run had; a missing field set to another value is still refused."""
    store, run = finished_eval
    old = tmp_path / "old"
    shutil.copytree(run, old)
    cfg = json.loads((old / runs.CONFIG).read_text())
    del cfg["train"]["random_word"], cfg["model"]["attention_width"]
    (old / runs.CONFIG).write_text(json.dumps(cfg))
    stamp = (runs.seed_dir(old, 0) / runs.TEST_JSON).stat().st_mtime_ns
    finetune(store, old, small_cfg())
    assert (runs.seed_dir(old, 0) / runs.TEST_JSON).stat().st_mtime_ns == stamp
    with pytest.raises(KebrError, match=r"model\.attention_width"):
        finetune(store, old, small_cfg(**{"model.attention_width": 64}))


def test_cli_rerun_refused_then_force_removes_only_the_runs_files(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    args = ["eval", "-d", str(tiny_store), "-o", str(out), "--seeds", "1", "--epochs", "1", "--freeze-encoder", *FAST]
    assert runner.invoke(app, args).exit_code == 0
    (out / "notes.txt").write_text("mine")
    r = runner.invoke(app, [*args, "--g", "-0.3"])
    assert r.exit_code == 1 and "mcc.g (0.2 → -0.3)" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, [*args, "--g", "-0.3", "--force"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["mcc"]["g"] == -0.3
    assert (out / "notes.txt").read_text() == "mine"
    # the results table beside --out holds one row for this run directory, MMSA's columns as mean and std
    table = (tmp_path / runs.RESULTS_TABLE).read_text().splitlines()
    assert table[0].startswith("Model,Dataset,Inputs,Has0_acc_2_mean_pct,Has0_acc_2_std_pct") and len(table) == 2


def test_config_replay_gives_identical_results(tiny_store: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    r = runner.invoke(app, ["eval", "-d", str(tiny_store), "-o", str(first), "--seeds", "1", "--epochs", "2", "--lr",
                            "3e-4", "--g", "0.1", "--freeze-encoder", *FAST])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "-d", str(tiny_store), "-o", str(tmp_path / "replay"), "--config",
                            str(first / "config.json")])
    assert r.exit_code == 0, r.output
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, tmp_path / "replay"))
    assert a["per_seed"] == b["per_seed"]


# ───────────────────────── 5: a fresh head per seed ─────────────────────────


def test_each_seed_starts_with_its_own_head_and_the_same_pretrained_weights(tiny_store: Path, tmp_path: Path) -> None:
    pre = pretrain(tiny_store, tmp_path / "pre", small_cfg("pretrain"))
    cfg = small_cfg()
    apply_checkpoint_config(cfg, pre.checkpoint)
    configure_from_store(cfg, FeatureStore(tiny_store))
    saved = load_file(str(pre.checkpoint / runs.WEIGHTS))
    texts = tokenize_plain(FeatureStore(tiny_store).texts, load_tokenizer(TINY_BERT), cfg.model.max_text_len)
    models = [setup_model(cfg, torch.device("cpu"), "finetune", token_ids=texts, checkpoint=pre.checkpoint,
                          seed=seed).model for seed in (0, 1, 2)]
    heads = [[p.detach() for p in m.finetune_head.parameters()] for m in models]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(heads[i][0], heads[j][0])
    fusion = [k for k in saved if k.startswith("fusion.")]
    assert fusion
    for m in models:
        state = m.state_dict()
        assert all(torch.equal(state[k], saved[k]) for k in fusion)


# ───────────────────────── 6: crash-safe checkpoints ─────────────────────────


def _save(run: Path, epoch: int, keep: int = 0) -> Path:
    weights = {"w": torch.full((3,), float(epoch))}
    return checkpoints.save_resume_checkpoint(run, epoch, weights, {"epoch": epoch}, {"optimizer": {"state": {}, "param_groups": []}},
                                              keep=keep)


class Killed(BaseException):
    """What a kill -9 leaves: nothing after the point it struck runs."""


@pytest.mark.parametrize("step", range(15))
def test_a_kill_at_any_step_of_a_save_leaves_a_loadable_latest(tmp_path: Path, monkeypatch, step: int) -> None:
    run = tmp_path / "run"
    _save(run, 1)
    calls = {"n": 0}

    def crash_point(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == step + 1:
                raise Killed
            return real(*args, **kwargs)
        return wrapped

    for name, real in (("replace", os.replace), ("fsync", os.fsync)):
        monkeypatch.setattr(checkpoints.os, name, crash_point(real))
    monkeypatch.setattr(runs.shutil, "rmtree", crash_point(shutil.rmtree))
    monkeypatch.setattr(checkpoints, "save_file", crash_point(checkpoints.save_file))
    monkeypatch.setattr(checkpoints.torch, "save", crash_point(torch.save))
    try:
        _save(run, 2, keep=1)
        crashed = False
    except Killed:
        crashed = True
    monkeypatch.undo()
    latest = checkpoints.latest_checkpoint(run)
    assert latest is not None
    state = checkpoints.load_trainer_state(latest)
    assert state["epoch"] in (1, 2) and load_file(str(latest / runs.WEIGHTS))["w"][0] == state["epoch"]
    if not crashed:
        assert state["epoch"] == 2
    assert _save(run, 3, keep=1) == checkpoints.latest_checkpoint(run)  # and the run can checkpoint again
    assert sorted(p.name for p in (run / runs.CHECKPOINTS).iterdir()) == ["epoch-0003", "latest"]


def test_retention_keeps_the_newest_epoch_folders(tmp_path: Path) -> None:
    for epoch in range(1, 6):
        _save(tmp_path, epoch, keep=2)
    assert sorted(p.name for p in (tmp_path / runs.CHECKPOINTS).iterdir()) == ["epoch-0004", "epoch-0005", "latest"]


# ───────────────────────── 7 and issue 13: resume ─────────────────────────


def test_resume_without_a_checkpoint_fails_unless_if_possible(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), "--epochs", "1", "--resume", *FAST])
    assert r.exit_code == 1 and "Nothing to resume in" in r.stderr and "--resume-if-possible" in r.stderr
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), "--epochs", "2", "--resume-if-possible",
                            "--keep-checkpoints", "1", "--checkpoint-every", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / runs.CHECKPOINTS).iterdir()) == ["epoch-0002", "latest"]
    # resuming takes the run's own settings; one typed now that differs from them is refused, named
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), "--epochs", "3", "--resume", "--lr", "1e-3"])
    assert r.exit_code == 1 and "train.lr (0.0001 → 0.001)" in r.stderr and "--force" in r.stderr


def test_a_run_checkpointed_on_a_gpu_resumes_on_the_cpu(tiny_store: Path, tmp_path: Path) -> None:
    """A trainer state whose tensors were saved from CUDA (its storages tagged "cuda:0", as torch.save
    writes them on a GPU) loads on a CPU-only machine: load_trainer_state maps it to the CPU. Without
    map_location, torch.load refuses such a file when CUDA is absent."""
    from unittest import mock

    out = tmp_path / "pre"
    pretrain(tiny_store, out, small_cfg("pretrain", epochs=1))
    path = checkpoints.latest_checkpoint(out) / runs.TRAINER_STATE
    state = torch.load(path, weights_only=True, map_location="cpu")
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(state, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # the file really claims a GPU
    loaded = checkpoints.load_trainer_state(path.parent)
    moments = [v for s in loaded["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)]
    assert moments and all(v.device.type == "cpu" for v in moments)
    result = pretrain(tiny_store, out, small_cfg("pretrain", epochs=2), resume=True)
    assert result.epochs_done == 2


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_trainer_state_is_refused_and_runs_no_code(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "pre"
    pretrain(tiny_store, out, small_cfg("pretrain"))
    marker = tmp_path / "pwned"
    latest = checkpoints.latest_checkpoint(out)
    with open(latest / runs.TRAINER_STATE, "wb") as f:
        pickle.dump({"epoch": 1, "optimizer": _Payload(marker)}, f)
    # the library run read every sample: so does the resumed one (--pretrain-on-test)
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), "--epochs", "2", "--resume", "--pretrain-on-test"])
    assert r.exit_code == 1
    assert "is not a safe kebr trainer state and was not loaded" in r.stderr and "Traceback" not in r.output
    assert not marker.exists()


def test_trainer_state_holds_only_tensors_and_plain_values(tiny_store: Path, tmp_path: Path) -> None:
    pretrain(tiny_store, tmp_path / "pre", small_cfg("pretrain"))
    state = torch.load(checkpoints.latest_checkpoint(tmp_path / "pre") / runs.TRAINER_STATE, weights_only=True, map_location="cpu")
    assert state["epoch"] == 1 and set(state) == {"epoch", "optimizer"}


# ───────────────────────── 4: ablation reruns merge; analyze's stale plots; results table ─────────────────────────


def test_ablate_rerun_adds_configurations_and_keeps_earlier_ones(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    out = tmp_path / "abl"
    common = ["ablate", "--dataset", str(store), "-o", str(out), "--seeds", "1", "--epochs", "1", "--text-model", TINY_BERT,
              "--batch-size", "8", "--freeze-encoder"]
    base = [*common, "--pretrain-epochs", "1"]
    assert runner.invoke(app, [*base, "--no-mcc"]).exit_code == 0
    assert runner.invoke(app, [*base, "--no-pretrain"]).exit_code == 0
    rows = json.loads((out / runs.ABLATION_JSON).read_text())["configurations"]
    assert [r["name"] for r in rows] == ["C1", "C4", "C2"] and all(r["mean"] for r in rows)
    assert len((out / runs.RESULTS_CSV).read_text().splitlines()) == 4
    table = (tmp_path / runs.RESULTS_TABLE).read_text().splitlines()
    assert len(table) == 4  # C1, C4, C2: one row each across the two runs
    r = runner.invoke(app, [*common, "--pretrain-epochs", "2"])  # C1's pretraining ran 1 epoch
    assert r.exit_code == 1 and "Configuration C1" in r.stderr and "train.epochs (1 → 2)" in r.stderr
    other = write_tiny_store(tmp_path / "other.h5", n=40, seed=3)
    r = runner.invoke(app, ["ablate", "--dataset", str(other), *base[3:]])
    assert r.exit_code == 1 and f"holds an ablation of {store}" in r.stderr
    assert [r["name"] for r in json.loads((out / runs.ABLATION_JSON).read_text())["configurations"]] == ["C1", "C4", "C2"]


def test_analyze_removes_only_its_own_stale_outputs(tmp_path: Path) -> None:
    from kebr_core.io import path_record
    from kebr_core.recipes.analyze import WRITTEN_MANIFEST, remove_stale_outputs

    plots = tmp_path / "plots"
    plots.mkdir()
    for name in ("balance.png", "pca.png", "training_curves.png", "mine.png"):
        (plots / name).write_text("x")
    # What analyze recorded writing: balance.png and pca.png (as they are now), training_curves.png as it was.
    record = {name: path_record(plots / name) for name in ("balance.png", "pca.png", "training_curves.png", "mine.png")}
    (plots / "training_curves.png").write_text("changed by the user since")
    (plots / WRITTEN_MANIFEST).write_text(json.dumps(record))
    remove_stale_outputs(plots, [plots / "balance.png"])
    # pca.png went (stale and still as written); a changed file and a name analyze never writes stayed.
    assert sorted(p.name for p in plots.iterdir() if p.suffix == ".png") == ["balance.png", "mine.png", "training_curves.png"]
    assert list(json.loads((plots / WRITTEN_MANIFEST).read_text())) == ["balance.png"]


# ───────────────────────── 3: a store records its extraction settings ─────────────────────────


def test_appending_to_a_store_with_other_extraction_settings_is_refused(tmp_path: Path) -> None:
    from kebr_core.data.store import StoreWriter
    from kebr_core.extract.extractor import ExtractOptions
    from kebr_core.extract.pipeline import _extractor_info, check_extraction_settings

    options = ExtractOptions(vision="none", asr="none")
    path = tmp_path / "s.h5"
    with StoreWriter(path, ["a"], [], extractor=_extractor_info(options)):
        pass
    check_extraction_settings(path, _extractor_info(options))  # the same settings: appending is fine
    with pytest.raises(KebrError, match=r"other settings \(--fps 10.0 → 5.0; --asr none → pocketsphinx"):
        check_extraction_settings(path, _extractor_info(ExtractOptions(vision="none", asr="pocketsphinx", fps=5.0)))


def test_each_epoch_and_rank_has_its_own_random_stream() -> None:
    """Dropout streams are a function of (seed, epoch, rank): a resumed run or another rank needs no saved
    RNG state, and ranks > 0 do not repeat rank 0's stream."""
    from kebr_core.training import seed_epoch

    def draw(seed: int, epoch: int, rank: int) -> torch.Tensor:
        torch.manual_seed(12345)  # whatever ran before does not matter
        seed_epoch(seed, epoch, rank)
        return torch.rand(4)

    assert torch.equal(draw(0, 3, 0), draw(0, 3, 0))
    streams = [draw(0, 3, 0), draw(0, 3, 1), draw(0, 4, 0), draw(1, 3, 0)]
    assert all(not torch.equal(a, b) for i, a in enumerate(streams) for b in streams[i + 1:])
