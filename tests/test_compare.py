"""Seed grids (run_readers.seed_grids), `kebr compare` and the forest plot of paired differences."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kebr_cli.main import app

from figures import summarize
from kebr_core.errors import KebrError
from kebr_core.recipes.analyze import build_figures
from kebr_core.run_readers import RunDataMissing, seed_grids
from tests.conftest import TINY_BERT, write_tiny_store
from tests.paired_runs import DATA, write_ablation, write_eval_run, write_multi_seed_eval

# ───────────────────────── seed grids ─────────────────────────


def test_seed_grids_of_an_ablation_one_per_finished_configuration(tmp_path):
    root = write_ablation(tmp_path / "abl", {"C1": [1.0, 1.1, 1.2], "C4": [1.3, 1.2, 1.4]})
    grids = seed_grids(root)
    assert [g.name for g in grids] == ["C1", "C4"]  # C2 was skipped
    c1, c4 = grids
    assert c1.pretrain_seeds == (0,) and c1.finetune_seeds == (0, 1, 2)
    np.testing.assert_allclose(c4.values["mae"], [[1.3, 1.2, 1.4]])
    assert c4.values["acc2_non0"].shape == (1, 3)
    assert c1.data == DATA
    assert c1.identity["mcc"]["weight"] == 1.0 and c4.identity["mcc"]["weight"] == 0.0
    assert "data" not in c1.identity and "seeds" not in c1.identity


def test_seed_grid_of_an_eval_run_keeps_finished_seeds_in_run_order(tmp_path):
    run = write_eval_run(tmp_path / "ev", [0.9, 0.8, 0.7], seeds=(5, 3, 4), finished={5, 4}, pretrain_seed=7)
    (grid,) = seed_grids(run)
    assert grid.name == "ev" and grid.pretrain_seeds == (7,) and grid.finetune_seeds == (5, 4)
    np.testing.assert_allclose(grid.values["mae"], [[0.9, 0.7]])


def test_seed_grids_refuse_pretraining_runs_and_runs_without_finished_seeds(tmp_path):
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "config.json").write_text(json.dumps({"stage": "pretrain"}))
    with pytest.raises(KebrError, match="pretraining run"):
        seed_grids(pre)
    empty = write_eval_run(tmp_path / "empty", [1.0], seeds=(0,), finished=set())
    with pytest.raises(RunDataMissing, match="no finished seed"):
        seed_grids(empty)


# ───────────────────────── kebr compare ─────────────────────────

runner = CliRunner()
T_975_2 = 4.302652729911275  # t quantile, 2 degrees of freedom


def test_compare_two_eval_runs_prints_the_table_and_writes_json_and_csv(tmp_path):
    a = write_eval_run(tmp_path / "runs" / "with-mcc", [1.00, 1.10, 1.20])
    b = write_eval_run(tmp_path / "runs" / "no-mcc", [1.05, 1.20, 1.21], mcc_weight=0.0)
    r = runner.invoke(app, ["compare", str(a), str(b)], terminal_width=200)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "no-mcc vs with-mcc" in text and "Δ (no-mcc − with-mcc) [95 % CI]" in text
    # paired differences 0.05, 0.10, 0.01: mean 0.0533, s = 0.04509, half-width t·s/√3
    diffs = np.array([0.05, 0.10, 0.01])
    half = T_975_2 * diffs.std(ddof=1) / np.sqrt(3)
    assert f"+0.053 [{diffs.mean() - half:+.3f}, {diffs.mean() + half:+.3f}]" in text
    assert "differs: mcc.weight (1.0 → 0.0)" in text and "fine-tuning seeds only" in text
    out = tmp_path / "runs" / "compare-with-mcc-vs-no-mcc"  # the default: beside the first run
    payload = json.loads((out / "compare.json").read_text())
    assert payload["reference"] == "with-mcc" and payload["inputs"] == [str(a.resolve()), str(b.resolve())]
    mae = payload["comparisons"][0]["metrics"]["mae"]
    assert mae["mean"] == pytest.approx(diffs.mean()) and mae["high"] == pytest.approx(diffs.mean() + half)
    assert mae["reference_mean"] == pytest.approx(1.1) and mae["run_mean"] == pytest.approx(np.mean([1.05, 1.2, 1.21]))
    assert mae["p_value"] == pytest.approx(2 / 8) and mae["n_pretrain"] == 1 and mae["n_finetune"] == 3
    assert mae["variance"]["pretrain"] is None  # NaN is written as null: standard JSON
    acc = payload["comparisons"][0]["metrics"]["acc2_non0"]
    assert acc["mean"] == pytest.approx(-diffs.mean() / 4)
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(row["reference"], row["run"], row["metric"]) for row in rows] == [
        ("with-mcc", "no-mcc", "acc2_non0"), ("with-mcc", "no-mcc", "mae")]
    assert float(rows[1]["difference"]) == pytest.approx(diffs.mean())


def test_compare_configurations_of_an_ablation_each_against_the_first(tmp_path):
    root = write_ablation(tmp_path / "abl", {"C1": [1.0, 1.1, 1.2], "C3": [1.2, 1.3, 1.4], "C4": [1.1, 1.2, 1.3]})
    r = runner.invoke(app, ["compare", f"{root}:C4", f"{root}:C1", "-o", str(tmp_path / "c"), "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.output)
    assert payload["out"] == str(tmp_path / "c") and payload["reference"] == "C4"
    assert payload["comparisons"][0]["metrics"]["mae"]["mean"] == pytest.approx(-0.1)
    # the whole ablation: every finished configuration against the first (C1); C2 was skipped
    r = runner.invoke(app, ["compare", str(root), "-o", str(tmp_path / "all"), "--json"])
    assert r.exit_code == 0, r.output
    comparisons = json.loads(r.output)["comparisons"]
    assert [(c["reference"], c["run"]) for c in comparisons] == [("C1", "C3"), ("C1", "C4")]
    assert comparisons[0]["metrics"]["mae"]["mean"] == pytest.approx(0.2)
    # a constant difference has a zero-width interval
    assert comparisons[0]["metrics"]["mae"]["low"] == pytest.approx(0.2)


def test_compare_refuses_runs_on_other_data(tmp_path):
    a = write_eval_run(tmp_path / "a", [1.0, 1.1, 1.2])
    b = write_eval_run(tmp_path / "b", [1.0, 1.1, 1.2], data=DATA | {"content_sha256": "fff999", "samples": 60})
    copied = write_eval_run(tmp_path / "copy", [1.0, 1.1, 1.3], data=DATA | {"store": "/elsewhere/mosi.h5"})
    r = runner.invoke(app, ["compare", str(a), str(b)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    message = " ".join(r.stderr.split())
    assert message.startswith(f"error: {b} cannot be paired with {a}: other data")
    assert "content_sha256 (abc123 → fff999)" in message and "samples (40 → 60)" in message
    assert not (tmp_path / "compare-a-vs-b").exists()
    # the same content at another path is the same data
    assert runner.invoke(app, ["compare", str(a), str(copied)]).exit_code == 0


def test_compare_refuses_runs_on_other_seeds(tmp_path):
    a = write_eval_run(tmp_path / "a", [1.0, 1.1, 1.2])
    b = write_eval_run(tmp_path / "b", [1.0, 1.1, 1.2], seeds=(0, 1, 5))
    unfinished = write_eval_run(tmp_path / "c", [1.0, 1.1, 1.2], finished={0, 1})
    other_pretraining = write_eval_run(tmp_path / "d", [1.0, 1.1, 1.2], pretrain_seed=3)
    for run, what in ((b, "other fine-tuning seeds (finished: 0, 1, 5 vs 0, 1, 2)"),
                      (unfinished, "other fine-tuning seeds (finished: 0, 1 vs 0, 1, 2)"),
                      (other_pretraining, "other pretraining seeds (finished: 3 vs 0)")):
        r = runner.invoke(app, ["compare", str(a), str(run)])
        assert r.exit_code == 1, r.output
        assert what in " ".join(r.stderr.split())


def test_compare_never_replaces_another_comparison_or_a_users_file(tmp_path):
    a, b, c = (write_eval_run(tmp_path / n, [1.0, 1.1, 1.2 + i]) for i, n in enumerate("abc"))
    out = tmp_path / "out"
    assert runner.invoke(app, ["compare", str(a), str(b), "-o", str(out)]).exit_code == 0
    first = (out / "compare.json").read_text()
    assert runner.invoke(app, ["compare", str(a), str(b), "-o", str(out)]).exit_code == 0  # the same: replaced
    r = runner.invoke(app, ["compare", str(a), str(c), "-o", str(out)])
    assert r.exit_code == 1 and "holds another comparison" in " ".join(r.stderr.split())
    assert (out / "compare.json").read_text() == first
    assert runner.invoke(app, ["compare", str(a), str(c), "-o", str(out), "--force"]).exit_code == 0
    assert (out / "compare.json").read_text() != first
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.csv").write_text("my own table\n")
    r = runner.invoke(app, ["compare", str(a), str(b), "-o", str(mine)])
    assert r.exit_code == 1 and "is not a kebr comparison" in " ".join(r.stderr.split())
    assert (mine / "compare.csv").read_text() == "my own table\n" and not (mine / "compare.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (lambda a, abl: [str(a)], "needs at least two configurations"),
    (lambda a, abl: [str(a), str(a)], "is given twice"),
    (lambda a, abl: [str(a), f"{abl}:C9"], "has no finished configuration 'C9' (finished: C1, C4)"),
    (lambda a, abl: [f"{a}:C1", str(a)], "is an evaluation run, not an ablation"),
    (lambda a, abl: [str(a), str(a.parent / "nowhere")], "does not exist"),
    (lambda a, abl: [str(a), str(a), "--confidence", "1.5"], "--confidence"),
])
def test_compare_bad_input_is_one_sentence(tmp_path, args, fragment):
    a = write_eval_run(tmp_path / "a", [1.0, 1.1, 1.2])
    abl = write_ablation(tmp_path / "abl", {"C1": [1.0, 1.1, 1.2], "C4": [1.1, 1.2, 1.3]})
    r = runner.invoke(app, ["compare", *args(a, abl)])
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    assert fragment in " ".join(r.output.split())


def test_compare_real_ablation_runs(tmp_path):
    """The files a real `kebr ablate` writes (C1 and C4, two seeds) read back as paired grids."""
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "--dataset", str(store), "-o", str(out), "--no-mcc", "--seeds", "2",
                            "--pretrain-epochs", "1", "--epochs", "1", "--text-model", TINY_BERT, "--batch-size", "8",
                            "--freeze-encoder"])
    assert r.exit_code == 0, r.output
    grids = seed_grids(out)
    assert [(g.name, g.pretrain_seeds, g.finetune_seeds) for g in grids] == [("C1", (0,), (0, 1)), ("C4", (0,), (0, 1))]
    mae = [json.loads((out / "runs" / name / f"seed-{s}" / "test.json").read_text())["test"]["mae"]
           for name in ("C1", "C4") for s in (0, 1)]
    np.testing.assert_allclose(grids[1].values["mae"], [mae[2:]])
    r = runner.invoke(app, ["compare", f"{out}:C1", f"{out}:C4", "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.output)
    assert payload["out"] == str(tmp_path / "compare-C1-vs-C4")
    assert payload["comparisons"][0]["metrics"]["mae"]["mean"] == pytest.approx(np.mean(mae[2:]) - np.mean(mae[:2]))
    assert payload["comparisons"][0]["differs"] == ["mcc.weight (1.0 → 0.0)"]


# ───────────────────────── the forest plot (kebr analyze) ─────────────────────────


def forest_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_ablation_forest_plot_one_row_per_configuration_against_c1(tmp_path):
    root = write_ablation(tmp_path / "abl", {"C1": [1.0, 1.1, 1.2], "C3": [1.2, 1.3, 1.4], "C4": [1.1, 1.15, 1.26]})
    kind, figures, skipped = build_figures(root)
    assert kind == "ablation" and "differences" in figures, skipped
    fig = figures["differences"]
    mae_panel, acc_panel = summarize(fig)
    assert "Δ MAE vs C1" in mae_panel.xlabel and "Δ Acc-2 non0 (points) vs C1" in acc_panel.xlabel
    # C3's constant +0.2 excludes zero; C4's differences 0.1, 0.05, 0.06 also do (t over 3 seeds)
    c4 = np.array([0.1, 0.05, 0.06])
    c4_high = c4.mean() + T_975_2 * c4.std(ddof=1) / np.sqrt(3)
    assert mae_panel.curves == [("interval excludes zero", 2), ("no difference", 2)]
    ax = forest_axes(fig)[0]
    assert [t.get_text() for t in sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])] == ["C3", "C4"]
    (points,) = [c for c in ax.containers]
    np.testing.assert_allclose(points.lines[0].get_xdata(), [0.2, c4.mean()])
    np.testing.assert_allclose(points.lines[0].get_ydata(), [1, 0])  # the first configuration on top
    texts = [t.get_text() for t in ax.texts]
    assert f"+{c4.mean():.3f} [+{c4.mean() - (c4_high - c4.mean()):.3f}, +{c4_high:.3f}]" in texts
    zero = [line for line in ax.lines if line.get_label() == "no difference"][0]
    assert list(zero.get_xdata()) == [0, 0]
    low, high = ax.get_xlim()
    assert low < 0 < high and high - low >= 0.05  # zero in view; at least MIN_SPAN wide
    assert "t over 3 fine-tuning seeds" in fig.get_label()


def test_forest_plot_marks_intervals_through_zero_and_single_pairs(tmp_path):
    root = write_ablation(tmp_path / "abl", {"C1": [1.0, 1.1, 1.2], "C4": [1.1, 1.0, 1.25]})
    fig = build_figures(root)[1]["differences"]
    assert summarize(fig)[0].curves == [("interval includes zero", 1), ("no difference", 2)]
    one = tmp_path / "one"
    write_eval_run(one / "a", [1.0], seeds=(0,))
    write_eval_run(one / "b", [1.3], seeds=(0,))
    assert runner.invoke(app, ["compare", str(one / "a"), str(one / "b"), "-o", str(one / "cmp")]).exit_code == 0
    r = runner.invoke(app, ["analyze", str(one / "cmp"), "-f", "png", "-f", "pdf"])
    assert r.exit_code == 0, r.output
    assert (one / "cmp" / "plots" / "differences.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (one / "cmp" / "plots" / "differences.pdf").read_bytes()[:5] == b"%PDF-"
    kind, figures, _ = build_figures(one / "cmp")
    assert kind == "comparison"
    mae_panel = summarize(figures["differences"])[0]
    assert mae_panel.curves == [("one pair: no interval", 1), ("no difference", 2)]
    assert "+0.300" in [t.get_text() for t in forest_axes(figures["differences"])[0].texts]


def test_forest_plot_skipped_with_one_finished_configuration(tmp_path):
    root = write_ablation(tmp_path / "abl", {"C1": [1.0, 1.1, 1.2]})
    _, figures, skipped = build_figures(root)
    assert "differences" not in figures
    assert skipped["differences"] == "The ablation has one finished configuration; paired differences need two."


def test_compare_over_pretraining_seeds_uses_their_means(tmp_path):
    """Two evaluations of 3-seed pretrainings (pseed-S/ each): the interval is a t over the 3
    pretraining-seed means of the paired differences, and the variance components split its spread."""
    a = write_multi_seed_eval(tmp_path / "a", [[1.0, 1.2], [1.1, 1.1], [0.9, 1.0]])
    b = write_multi_seed_eval(tmp_path / "b", [[1.1, 1.4], [1.1, 1.2], [1.2, 1.3]], mcc_weight=0.0)
    r = runner.invoke(app, ["compare", str(a), str(b), "--json"])
    assert r.exit_code == 0, r.output
    mae = json.loads(r.output)["comparisons"][0]["metrics"]["mae"]
    d = np.array([[0.1, 0.2], [0.0, 0.1], [0.3, 0.3]])  # b − a; pretraining-seed means 0.15, 0.05, 0.3
    means = d.mean(axis=1)
    half = T_975_2 * means.std(ddof=1) / np.sqrt(3)
    assert (mae["n_pretrain"], mae["n_finetune"]) == (3, 2)
    assert (mae["mean"], mae["low"], mae["high"]) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    assert mae["p_value"] == pytest.approx(0.25)  # all three positive: 2 of 8 sign patterns
    # one-way ANOVA: MS_within over P(F − 1) = 3 degrees of freedom, MS_between = F·Σ(row mean − mean)² / (P − 1)
    ms_within = np.sum((d - means[:, None]) ** 2) / 3
    ms_between = 2 * np.sum((means - d.mean()) ** 2) / 2
    assert mae["variance"]["finetune"] == pytest.approx(ms_within)
    assert mae["variance"]["pretrain"] == pytest.approx((ms_between - ms_within) / 2)
    text = " ".join(runner.invoke(app, ["compare", str(a), str(b), "-o", str(tmp_path / "o")], terminal_width=200).output.split())
    assert "3 × 2 paired runs" in text and "t over 3 pretraining-seed means" in text
    assert "spread of Δ MAE: " in text
