"""Pretraining without the test inputs (`kebr pretrain`, `kebr ablate`) and pretraining seeds: P pretrainings
per configuration, each fine-tuned over F seeds, through the real commands on tiny stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.errors import KebrError
from kebr_core.run_readers import balance_table, seed_grids
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_pretrain_leaves_the_test_split_out(tmp_path: Path) -> None:
    """A 3-split store (24 train, 8 valid, 8 test): test is left out by default, with the note ablate prints;
    --splits chooses; naming test needs --pretrain-on-test; --pretrain-on-test takes all 40."""
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    out = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(out), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["splits"] == ["train", "valid", "unlabeled"] and cfg["samples"] == 32
    note = (f"note: Pretraining uses the train, valid, unlabeled samples of {store} (labels unused; the test split "
            "is left out")
    assert note in one_line(r.stderr)
    # ablate prints the same sentence for its pretraining
    r = runner.invoke(app, ["ablate", "-d", str(store), "-o", str(tmp_path / "abl"), "--seeds", "1",
                            "--pretrain-epochs", "1", "--epochs", "1", "--freeze-encoder", *FAST])
    assert r.exit_code == 0, r.output
    assert note in one_line(r.stderr)

    r = runner.invoke(app, ["pretrain", str(store), "-o", str(tmp_path / "tr"), "--epochs", "1", "--splits", "train", *FAST])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "tr" / "config.json").read_text())
    assert cfg["splits"] == ["train"] and cfg["samples"] == 24

    r = runner.invoke(app, ["pretrain", str(store), "-o", str(tmp_path / "t"), "--splits", "train,test", *FAST])
    assert r.exit_code == 1 and "--splits names test" in one_line(r.output) and "Traceback" not in r.output
    assert not (tmp_path / "t" / "config.json").exists()
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(tmp_path / "t"), "--splits", "train,tset", *FAST])
    assert r.exit_code == 1 and "--splits names 'tset', which is not a split; give some of train" in r.output

    r = runner.invoke(app, ["pretrain", str(store), "-o", str(tmp_path / "all"), "--epochs", "1", "--pretrain-on-test", *FAST])
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "all" / "config.json").read_text())
    assert cfg["splits"] is None and cfg["samples"] == 40
    assert "the test split's inputs included" in one_line(r.stderr)
    # the splits are the run's identity: resuming the run on other splits is refused, naming them
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(tmp_path / "all"), "--epochs", "2", "--resume", *FAST])
    assert r.exit_code == 1 and 'splits (null → ["train", "valid", "unlabeled"])' in one_line(r.output)


def test_ablate_pretrain_store_equal_to_the_dataset_follows_the_rule(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "-d", str(store), "--pretrain-store", str(store), "-o", str(out), *ABLATE])
    assert r.exit_code == 0, r.output
    payload = json.loads((out / "ablation.json").read_text())
    assert payload["pretrain_splits"] == ["train", "valid", "unlabeled"] and payload["pretrain_on_test"] is False
    assert json.loads((out / "pretrain" / "tcmf-mcc-g+0.20-paper-tile" / "config.json").read_text())["samples"] == 32
    # one pretraining seed: today's layout, and no Δ column (its interval would cover fine-tuning seeds only)
    assert (out / "pretrain" / "tcmf-nomcc" / "final").is_dir() and (out / "runs" / "C4" / "seed-1" / "test.json").is_file()
    assert "Δ" not in r.stdout and "vs_C1_interval" not in payload and not any("vs_C1" in c for c in payload["configurations"])
    assert "delta_mae" not in (out / "results.csv").read_text()


def weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "final" / "model.safetensors"))


def test_pretrain_seeds_give_one_run_each_and_eval_fine_tunes_each(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    pre = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(pre), "--epochs", "1", "--seeds", "2", *FAST])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in pre.iterdir() if p.is_dir()) == ["pseed-0", "pseed-1"]
    assert [json.loads((pre / f"pseed-{s}" / "config.json").read_text())["train"]["seed"] for s in (0, 1)] == [0, 1]
    a, b = weights(pre / "pseed-0"), weights(pre / "pseed-1")
    assert not all(np.array_equal(a[k], b[k]) for k in a)  # two draws of pretraining, not one twice
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(pre), "--seeds", "2", "--seed", "3", *FAST])
    assert r.exit_code == 1 and "give one of them" in r.output

    ev = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "-d", str(store), "--pretrained", str(pre), "-o", str(ev), "--epochs", "1",
                            "--seeds", "2", "--freeze-encoder", *FAST])
    assert r.exit_code == 0, r.output
    for s in (0, 1):
        cfg = json.loads((ev / f"pseed-{s}" / "config.json").read_text())
        assert Path(cfg["checkpoint"]) == pre / f"pseed-{s}" / "final"
        assert json.loads((ev / f"pseed-{s}" / "results.json").read_text())["seeds"] == [0, 1]
    grid, = seed_grids(ev)
    assert grid.pretrain_seeds == (0, 1) and grid.finetune_seeds == (0, 1) and grid.values["mae"].shape == (2, 2)
    with pytest.raises(KebrError, match="holds pretraining runs"):
        seed_grids(pre)
    results = json.loads((ev / "results.json").read_text())
    assert results["pretrain_seeds"] == [0, 1] and results["seeds"] == [0, 1] and len(results["per_run"]) == 4
    maes = [run["mae"] for run in results["per_run"]]
    np.testing.assert_allclose(grid.values["mae"].ravel(), maes)

    # --resume continues every pretraining seed's run, with the run's own settings and seeds
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(pre), "--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    assert [len((pre / f"pseed-{s}" / "metrics.csv").read_text().splitlines()) for s in (0, 1)] == [3, 3]
    assert not (pre / "config.json").exists()
    assert results["mean"]["mae"] == pytest.approx(np.mean(maes))
    assert results["std"]["mae"] == pytest.approx(np.std(maes, ddof=1))


ABLATE = ["--no-mcc", "--seeds", "2", "--pretrain-epochs", "1", "--epochs", "1", "--freeze-encoder", *FAST]


def test_ablate_pretrain_seeds_nest_fine_tuning_and_resume_only_what_is_missing(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    out = tmp_path / "abl"
    args = ["ablate", "-d", str(store), "-o", str(out), "--pretrain-seeds", "2", *ABLATE]
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    check_delta_column(out, r.stdout)
    payload = json.loads((out / "ablation.json").read_text())
    assert payload["pretrain_seeds"] == [0, 1] and payload["seeds"] == [0, 1]
    for row, key in zip(payload["configurations"], ("tcmf-mcc-g+0.20-paper-tile", "tcmf-nomcc")):
        assert row["pretrain_dir"] == f"pretrain/{key}" and row["pretrain_seeds"] == [0, 1]
        runs_ = [(p, f) for p in (0, 1) for f in (0, 1)]
        for p, f in runs_:  # P x F fine-tuning runs, each from its own pretraining
            cfg = json.loads((out / row["eval_dir"] / f"pseed-{p}" / "config.json").read_text())
            assert Path(cfg["checkpoint"]) == out / "pretrain" / key / f"pseed-{p}" / "final"
            assert (out / row["eval_dir"] / f"pseed-{p}" / f"seed-{f}" / "test.json").is_file()
            assert json.loads((out / "pretrain" / key / f"pseed-{p}" / "config.json").read_text())["train"]["seed"] == p
        a, b = (weights(out / "pretrain" / key / f"pseed-{p}") for p in (0, 1))
        assert not all(np.array_equal(a[k], b[k]) for k in a)
        maes = np.array(row["values"]["mae"])
        assert maes.shape == (2, 2)
        tests = [json.loads((out / row["eval_dir"] / f"pseed-{p}" / f"seed-{f}" / "test.json").read_text())["test"]["mae"]
                 for p, f in runs_]
        np.testing.assert_allclose(maes.ravel(), tests)
        assert row["mean"]["mae"] == pytest.approx(maes.mean()) and row["std"]["mae"] == pytest.approx(maes.std(ddof=1))

    # interrupted: one pretraining and one fine-tuning seed are lost; a rerun redoes those and nothing else
    import shutil

    shutil.rmtree(out / "pretrain" / "tcmf-nomcc" / "pseed-1")
    (out / "runs" / "C1" / "pseed-1" / "seed-0" / "test.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in [*out.rglob("test.json"), *out.rglob("model.safetensors")]}
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    changed = sorted(str(p.relative_to(out)) for p, t in stamps.items() if p.stat().st_mtime_ns != t)
    assert changed == []  # what was there is reused
    assert (out / "pretrain" / "tcmf-nomcc" / "pseed-1" / "final" / "model.safetensors").is_file()
    assert (out / "runs" / "C1" / "pseed-1" / "seed-0" / "test.json").is_file()
    new = json.loads((out / "ablation.json").read_text())["configurations"]
    np.testing.assert_allclose(new[0]["values"]["mae"], payload["configurations"][0]["values"]["mae"])

    # A configuration without pretraining runs F times (nothing depends on the pretraining seed) and pairs
    # with every pretraining seed of C1; seed_grids gives every configuration a (P, F) grid.
    r = runner.invoke(app, [*args, "--no-pretrain"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads((out / "ablation.json").read_text())["configurations"]}
    assert list(rows) == ["C1", "C4", "C2"]  # --no-pretrain adds C2 beside the earlier C1 and C4
    lone = rows["C2"]
    assert lone["pretrain_seeds"] == [] and np.array(lone["values"]["mae"]).shape == (1, 2)
    assert not list((out / "runs" / "C2").glob("pseed-*")) and (out / "runs" / "C2" / "seed-1").is_dir()
    c1 = np.array(rows["C1"]["values"]["mae"])
    assert lone["vs_C1"]["mae"]["mean"] == pytest.approx(np.mean(np.array(lone["values"]["mae"]) - c1))
    assert rows["C4"]["vs_C1"]["mae"]["mean"] == pytest.approx(np.mean(np.array(rows["C4"]["values"]["mae"]) - c1))
    grids = {g.name: g for g in seed_grids(out)}
    assert all(g.pretrain_seeds == (0, 1) and g.finetune_seeds == (0, 1) for g in grids.values())
    np.testing.assert_allclose(grids["C1"].values["mae"], c1)
    np.testing.assert_allclose(grids["C2"].values["mae"], np.repeat(lone["values"]["mae"], 2, axis=0))
    balance = [b for b in balance_table(out) if b["config"] == "C1"]
    assert [(b["stage"], b["seeds"]) for b in balance] == [("pretraining", 2), ("fine-tuning", 4)]
    # kebr analyze draws from every pretraining seed's runs
    from kebr_core.recipes.analyze import build_figures

    _, figures, skipped = build_figures(out)
    assert {"balance", "pca", "training_curves"} <= set(figures), skipped


def check_delta_column(out: Path, output: str) -> None:
    """C4's "Δ vs C1" is stats.paired_difference of the two (P, F) grids of test.json values, in the JSON,
    results.csv and the table, whose caption says what the interval covers."""
    import csv

    from kebr_core.stats import paired_difference

    payload = json.loads((out / "ablation.json").read_text())
    c1, c4 = payload["configurations"]
    assert "vs_C1" not in c1 and payload["vs_C1_interval"].startswith("Δ vs C1: configuration − C1, paired over 2")
    for k in ("mae", "acc2_non0"):
        grid = {name: [[json.loads((out / "runs" / name / f"pseed-{p}" / f"seed-{f}" / "test.json").read_text())["test"][k]
                        for f in (0, 1)] for p in (0, 1)] for name in ("C1", "C4")}
        expected = paired_difference(grid["C1"], grid["C4"])
        assert c4["vs_C1"][k]["mean"] == pytest.approx(np.mean(np.array(grid["C4"]) - np.array(grid["C1"])))
        assert (c4["vs_C1"][k]["low"], c4["vs_C1"][k]["high"]) == pytest.approx((expected.low, expected.high))
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert float(table[1]["delta_mae_low"]) == pytest.approx(c4["vs_C1"]["mae"]["low"]) and table[0]["delta_mae"] == ""
    assert table[1]["pretrain_seeds"] == "0 1"
    text = one_line(output)
    assert "Δ MAE vs C1" in text and "Δ Acc-2 vs C1" in text and "[95 % CI], pp" in text  # headers on two lines
    assert "paired over 2 pretraining × 2 fine-tuning seeds; 95 % interval: t over 2 pretraining-seed means" in text
    assert "over 2 pretraining × 2 fine-tuning seeds (pretraining 0, 1; fine-tuning 0, 1)" in text
    assert f"{c4['vs_C1']['mae']['mean']:+.3f}" in text


def test_ablate_shards_split_configuration_and_pretraining_seed(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    out = tmp_path / "abl"
    common = ["ablate", "-d", str(store), "-o", str(out), "--pretrain-seeds", "2", *ABLATE]
    r = runner.invoke(app, [*common, "--shard", "0/2"])  # items: (C1, 0) (C1, 1) (C4, 0) (C4, 1)
    assert r.exit_code == 0, r.output
    assert "C1 (pretraining seed 0), C4 (pretraining seed 0)" in one_line(r.output)
    assert sorted(str(p.relative_to(out)) for p in out.glob("pretrain/*/pseed-*")) == [
        "pretrain/tcmf-mcc-g+0.20-paper-tile/pseed-0", "pretrain/tcmf-nomcc/pseed-0"]
    r = runner.invoke(app, [*common, "--collect"])
    assert r.exit_code == 1 and "C1 (pretraining of pretraining seed 1)" in one_line(r.output)
    r = runner.invoke(app, [*common, "--shard", "1/2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*common, "--collect"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "ablation.json").read_text())["configurations"]
    assert [np.array(r["values"]["mae"]).shape for r in rows] == [(2, 2), (2, 2)]
