"""`kebr analyze` (kebr_core.recipes.analyze, run_readers, analysis): run directories written with the recipes' exact files
(metrics rows from `training.epoch_row`, results.json / ablation.json / test_features.npz as the
recipes lay them out), then the PNGs, what each figure draws, skipped plots and user errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex
from matplotlib.image import imread
from typer.testing import CliRunner

from kebr_cli.main import app
from figures import summarize
from kebr_core.analysis import CONFIGURATION_COLORS
from kebr_core.config import RunConfig
from kebr_core.errors import KebrError
from kebr_core.recipes.analyze import AnalysisReport, analyze, build_figures
from kebr_core.run_readers import RunDataMissing, balance_table, detect_kind, mean_over_seeds
from kebr_core.runs import MetricsLog
from kebr_core.training import epoch_row

SEEDS = (0, 1, 2)
EPOCHS = 6
N_TEST, DT = 60, 12
G_SWEEP = [round(-0.5 + 0.1 * i, 1) for i in range(11)]  # Fig. 4's grid, 11 values


# ───────────────────────── realistic run directories ─────────────────────────


def balance_values(epoch: int, seed: int, mcc: bool) -> tuple[float, float, float]:
    """c_a, c_v, |Δθ| of one epoch: with MCC the two cosines meet; without, audio stays far ahead."""
    if mcc:
        c_a, c_v = 0.5 - 0.02 * epoch + 0.01 * seed, 0.1 + 0.03 * epoch + 0.01 * seed
    else:
        c_a, c_v = 0.6 + 0.01 * epoch + 0.01 * seed, 0.05 + 0.001 * epoch + 0.01 * seed
    return c_a, c_v, abs(math.acos(c_a) - math.acos(c_v))


def metrics_row(epoch: int, seed: int, mcc: bool, prefix: str) -> dict[str, float]:
    """A metrics.csv row built by the recipes' own `epoch_row` from balance sums (see balance_sums)."""
    task, mcc_loss = 1.2 - 0.1 * epoch + 0.02 * seed, (0.4 - 0.05 * epoch) if mcc else 0.3
    c_a, c_v, dtheta = balance_values(epoch, seed, mcc)
    n, n_valid = 32.0, 30.0
    sums = torch.tensor([task * n, n, mcc_loss * n_valid, c_a * n_valid, c_v * n_valid, dtheta * n_valid, n_valid],
                        dtype=torch.float64)
    return epoch_row(epoch, sums, seconds=1.5, mcc_weight=1.0 if mcc else 0.0, prefix=prefix)


def write_config(run_dir: Path, stage: str, g: float, weight: float, **extra) -> None:
    cfg = RunConfig()
    cfg.mcc.g, cfg.mcc.weight = g, weight
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict() | {"stage": stage, **extra}, indent=2))


def write_pretrain_run(run_dir: Path, mcc: bool = True, g: float = 0.2, epochs: int = EPOCHS) -> Path:
    run_dir.mkdir(parents=True)
    write_config(run_dir, "pretrain", g, 1.0 if mcc else 0.0, store="feats.h5")
    log = MetricsLog(run_dir / "metrics.csv")
    for epoch in range(1, epochs + 1):
        log.append(metrics_row(epoch, 0, mcc, prefix=""))
    return run_dir


def make_test_features(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features whose largest-variance direction carries the label: PC1 must recover it."""
    rng = np.random.default_rng(seed)
    labels = np.round(rng.uniform(-3, 3, N_TEST) * 5) / 5
    direction = rng.normal(size=DT)
    direction /= np.linalg.norm(direction)
    features = 4.0 * labels[:, None] * direction[None] + 0.05 * rng.normal(size=(N_TEST, DT))
    return features.astype(np.float32), labels


def write_eval_run(run_dir: Path, mcc: bool = True, g: float = 0.2, seeds=SEEDS, epochs: int = EPOCHS) -> Path:
    run_dir.mkdir(parents=True)
    write_config(run_dir, "finetune", g, 1.0 if mcc else 0.0, store="mosi.h5", checkpoint=None, seeds=list(seeds))
    per_seed = []
    for seed in seeds:
        seed_dir = run_dir / f"seed-{seed}"
        seed_dir.mkdir()
        log = MetricsLog(seed_dir / "metrics.csv")
        for epoch in range(1, epochs + 1):
            row = metrics_row(epoch, seed, mcc, prefix="train_")
            log.append(row | {"valid_mae": 1.1 - 0.05 * epoch, "valid_corr": 0.5, "valid_acc2_non0": 0.7})
        features, labels = make_test_features(seed)
        np.savez_compressed(seed_dir / "test_features.npz", features=features, labels=labels, predictions=labels * 0.8)
        per_seed.append({"acc2_non0": 0.8, "f1_non0": 0.8, "mae": 0.8 + (0.0 if mcc else 0.01 * (seed + 1)), "corr": 0.7})
        (seed_dir / "test.json").write_text(json.dumps({"seed": seed, "best_epoch": epochs, "test": per_seed[-1]}))
    results = {"seeds": list(seeds), "best_epochs": [epochs] * len(seeds), "mean": per_seed[0], "std": per_seed[0],
               "per_seed": per_seed}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def sweep_metrics(g: float) -> tuple[dict[str, float], dict[str, float]]:
    f1 = 0.84 - 0.3 * (g - 0.1) ** 2
    return {"f1_non0": f1, "mae": 0.7 + 0.2 * abs(g)}, {"f1_non0": 0.01 + 0.01 * abs(g), "mae": 0.02}


def write_ablation(root: Path, with_c4: bool = True) -> Path:
    root.mkdir(parents=True)
    configurations = []
    table4 = [("C1", True, True, True), ("C2", False, True, True), ("C3", True, False, True), ("C4", True, True, False),
              ("C5", False, False, False)]
    for name, pretrain, tcmf, mcc in table4:
        has_runs = name == "C1" or (name == "C4" and with_c4)
        if has_runs:
            write_eval_run(root / name / "eval", mcc=mcc)
            write_pretrain_run(root / name / "pretrain", mcc=mcc)
        mean, std = sweep_metrics(0.2) if name == "C1" else ({"f1_non0": 0.8, "mae": 0.8}, {"f1_non0": 0.01, "mae": 0.01})
        configurations.append({
            "name": name, "kind": "table4", "pretrain": pretrain, "tcmf": tcmf, "mcc": mcc, "g": 0.2,
            "mcc_form": "paper", "mcc_align": "tile", "pretrain_dir": f"{name}/pretrain" if pretrain else None,
            "eval_dir": f"{name}/eval", "status": "done" if has_runs else "skipped: not run in this test",
            "mean": mean if has_runs else {}, "std": std if has_runs else {}, "avg_change": None,
        })
    for g in [0.25, *reversed([g for g in G_SWEEP if g != 0.2])]:  # unsorted on purpose; g = 0.25 did not finish; C1 is g = 0.2
        mean, std = sweep_metrics(g)
        configurations.append({
            "name": f"g={g:+.2f}", "kind": "g-sweep", "pretrain": True, "tcmf": True, "mcc": True, "g": g,
            "mcc_form": "paper", "mcc_align": "tile", "pretrain_dir": None, "eval_dir": f"g/{g:+.2f}",
            "status": "skipped: interrupted" if g == 0.25 else "done", "mean": mean, "std": std, "avg_change": None,
        })
    (root / "ablation.json").write_text(json.dumps(
        {"dataset": "mosi", "pretrain_store": "pre.h5", "seeds": list(SEEDS), "configurations": configurations}, indent=2))
    return root


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[:2] == (1000, 1600)  # 8 × 5 in at 200 dpi
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def curve(fig, axes_index: int, label: str):
    ax = [a for a in fig.axes if a.get_label() != "<colorbar>"][axes_index]
    for line in ax.lines:
        if line.get_label() == label:
            return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    raise AssertionError(f"no curve {label!r} in {[l.get_label() for l in ax.lines]}")


# ───────────────────────── ablation directory ─────────────────────────


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory) -> Path:
    return write_ablation(tmp_path_factory.mktemp("abl") / "ablation")


@pytest.fixture(scope="module")
def ablation_figures(ablation_dir):
    return build_figures(ablation_dir)


def test_ablation_writes_five_pngs(ablation_dir, tmp_path):
    report = analyze(ablation_dir, tmp_path / "plots")
    assert isinstance(report, AnalysisReport) and report.kind == "ablation"
    assert [p.name for p in report.written] == ["g_sweep.png", "differences.png", "balance.png", "pca.png",
                                                "training_curves.png"]
    assert report.skipped == {}
    for path in report.written:
        assert path.parent == tmp_path / "plots"
        assert_png(path)
    for info in report.plots.values():
        assert all(a.title and a.xlabel or a.title and a.ylabel for a in summarize(info.figure))


def test_balance_table_holds_the_last_epoch_of_each_stage(ablation_dir, tmp_path):
    rows = balance_table(ablation_dir)
    assert [(r["config"], r["stage"]) for r in rows] == [
        ("C1", "pretraining"), ("C1", "fine-tuning"), ("C4", "pretraining"), ("C4", "fine-tuning")]
    for r in rows:
        seeds = (0,) if r["stage"] == "pretraining" else SEEDS
        assert r["epoch"] == EPOCHS and r["seeds"] == len(seeds) and r["mcc"] == (r["config"] == "C1")
        expected = np.array([balance_values(EPOCHS, s, r["mcc"]) for s in seeds])  # (seeds, 3)
        for j, name in enumerate(("cos_a", "cos_v", "abs_dtheta")):
            assert r[name] == pytest.approx(expected[:, j].mean(), abs=1e-6)
            spread = expected[:, j].std(ddof=1) if len(seeds) > 1 else 0.0
            assert r[f"{name}_std"] == pytest.approx(spread, abs=1e-6)
    # the fixture's MCC run ends with the smaller angle gap, and analyze writes the table
    gap = {(r["config"], r["stage"]): r["abs_dtheta"] for r in rows}
    assert gap[("C1", "fine-tuning")] < gap[("C4", "fine-tuning")]
    report = analyze(ablation_dir, tmp_path / "plots")
    assert report.tables == [tmp_path / "plots" / "balance.csv"]
    with (tmp_path / "plots" / "balance.csv").open() as f:
        written = list(csv.DictReader(f))
    assert len(written) == 4 and float(written[3]["abs_dtheta"]) == pytest.approx(rows[3]["abs_dtheta"])


def test_titles_name_the_data_not_its_path_which_goes_into_the_files(tmp_path):
    root = write_ablation(tmp_path / "abl")
    data = json.loads((root / "ablation.json").read_text())
    data["dataset"] = "runs/an/experiment/with/a/rather/long/path/to/its/synthetic/store.h5"
    (root / "ablation.json").write_text(json.dumps(data))
    report = analyze(root, formats=("png", "pdf", "svg"))
    _, figs, _ = build_figures(root)
    for fig in figs.values():
        title = fig.get_suptitle()
        assert "runs/an" not in title and max(len(line) for line in title.splitlines()) <= 90
    assert "on store.h5" in figs["balance"].get_suptitle()
    # the run's path is in each file's metadata: PNG text chunk, SVG <dc:source>, PDF /Subject
    from PIL import Image

    assert Image.open(root / "plots" / "balance.png").info["Source"] == str(root)
    assert f"<dc:source>{root}</dc:source>" in (root / "plots" / "balance.svg").read_text()
    assert f"source: {root}".encode() in (root / "plots" / "balance.pdf").read_bytes()
    assert {p.suffix for p in report.written} == {".png", ".pdf", ".svg"} and len(report.written) == 15


def test_index_lists_every_figure_with_a_caption(tmp_path):
    root = write_ablation(tmp_path / "abl", with_c4=False)
    report = analyze(root, formats=("svg", "png"))
    index = (root / "plots" / "index.md").read_text()
    assert report.index == root / "plots" / "index.md"
    assert "- **g_sweep** ([svg](g_sweep.svg), [png](g_sweep.png)): Test F1 (non0) and MAE against the MCC " in index
    assert "- **training_curves** ([svg](training_curves.svg), [png](training_curves.png)): " in index
    assert "- balance: The ablation has no finished pair" in index  # skipped, with its reason
    for info in report.plots.values():
        assert info.caption and info.caption in index and "\n" not in info.caption


def test_bad_format_is_one_sentence(tmp_path):
    with pytest.raises(KebrError, match="--format must be one or more of png, pdf, svg, not gif"):
        analyze(write_eval_run(tmp_path / "eval"), formats=("gif",))


def test_g_sweep_has_eleven_points_per_series_with_std_error_bars(ablation_figures):
    kind, figs, _ = ablation_figures
    fig = figs["g_sweep"]
    f1_ax, mae_ax = summarize(fig)
    # C1 is the sweep's point at g = 0.2 (the sweep does not run its configuration again), ringed in C1's colour
    assert f1_ax.curves == [("F1 (non0)", 11), ("C1 (its g = +0.20)", 1)] and mae_ax.curves == [("MAE", 11), ("C1 (its g = +0.20)", 1)]
    ring = [line for line in fig.axes[0].lines if line.get_label().startswith("C1")][0]
    assert ring.get_xdata()[0] == pytest.approx(0.2) and ring.get_markeredgecolor() == CONFIGURATION_COLORS["C1"]
    # points with error bars, not a band between them: no filled area, no line joining the points
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert fig.axes[0].containers[0].lines[0].get_linestyle() == "None"
    assert "%" in f1_ax.ylabel and mae_ax.xlabel.startswith("g")
    bar = fig.axes[0].containers[0]
    x, y = bar.lines[0].get_xdata(), bar.lines[0].get_ydata()
    assert np.allclose(x, G_SWEEP)  # sorted by g, the unfinished g = 0.25 left out
    expected = [sweep_metrics(g) for g in G_SWEEP]
    assert np.allclose(y, [100 * m["f1_non0"] for m, _ in expected])
    # each error bar spans mean ± std, in percent
    segments = bar.lines[2][0].get_segments()
    spans = np.array([[s[0][1], s[1][1]] for s in segments])
    std = np.array([100 * s["f1_non0"] for _, s in expected])
    assert np.allclose(np.sort(spans, axis=1), np.stack([y - std, y + std], axis=1))
    mae_y = fig.axes[1].containers[0].lines[0].get_ydata()
    assert np.allclose(mae_y, [m["mae"] for m, _ in expected])


def test_balance_compares_c1_and_c4_in_both_stages(ablation_figures):
    _, figs, _ = ablation_figures
    fig = figs["balance"]
    axes = summarize(fig)
    assert len(axes) == 4  # (cosines, |Δθ|) × (fine-tuning, pretraining)
    cos_ft, cos_pt, dth_ft, dth_pt = axes  # subplots(2, 2) are stored row by row
    assert cos_ft.title.startswith("fine-tuning") and cos_pt.title.startswith("pretraining")
    expected_cos = [("C1 (with MCC): c_a (audio)", EPOCHS), ("C1 (with MCC): c_v (vision)", EPOCHS),
                    ("C4 (without MCC): c_a (audio)", EPOCHS), ("C4 (without MCC): c_v (vision)", EPOCHS),
                    ("MCC balanced zero (c_a = c_v = 0.30)", 2)]
    assert cos_ft.curves == expected_cos and cos_pt.curves == expected_cos
    assert dth_ft.curves == [("C1 (with MCC)", EPOCHS), ("C4 (without MCC)", EPOCHS)] == dth_pt.curves
    assert dth_ft.ylabel == "|θa − θv| (rad)" and dth_ft.xlabel == "epoch"
    # fine-tuning curves are the mean over the three seeds: + 0.01 · mean(0, 1, 2) = + 0.01
    x, y = curve(fig, 0, "C1 (with MCC): c_a (audio)")
    assert np.allclose(x, np.arange(1, EPOCHS + 1))
    assert np.allclose(y, [0.5 - 0.02 * e + 0.01 for e in range(1, EPOCHS + 1)], atol=1e-6)
    _, dth = curve(fig, 2, "C4 (without MCC)")
    want = [np.mean([balance_values(e, s, False)[2] for s in SEEDS]) for e in range(1, EPOCHS + 1)]
    assert np.allclose(dth, want, atol=1e-6)
    # pretraining panel: the single pretraining run (seed 0)
    _, y = curve(fig, 1, "C4 (without MCC): c_v (vision)")
    assert np.allclose(y, [balance_values(e, 0, False)[1] for e in range(1, EPOCHS + 1)], atol=1e-6)


def test_pca_two_panels_coloured_by_label(ablation_figures):
    _, figs, _ = ablation_figures
    fig = figs["pca"]
    with_mcc, without_mcc = summarize(fig)
    assert with_mcc.points == N_TEST and without_mcc.points == N_TEST
    assert "C1 (with MCC)" in with_mcc.title and "C4 (without MCC)" in without_mcc.title
    assert with_mcc.xlabel.startswith("PC1 (") and "% of variance" in with_mcc.xlabel
    colorbars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and colorbars[0].get_ylabel() == "sentiment label"
    features, labels = make_test_features(0)  # first seed
    scatter = fig.axes[0].collections[0]
    assert np.allclose(scatter.get_array(), labels)
    assert scatter.norm.vmin == -scatter.norm.vmax  # symmetric diverging scale around neutral 0
    pc1 = scatter.get_offsets()[:, 0]
    assert abs(np.corrcoef(pc1, labels)[0, 1]) > 0.999  # the label direction is the top component


def test_training_curves_show_every_configuration(ablation_figures):
    _, figs, _ = ablation_figures
    fig = figs["training_curves"]
    assert "every configuration" in fig.get_suptitle()
    task, valid, mcc, dtheta = summarize(fig)
    finished = ["C1", "C4"]  # the g-sweep's runs are not in the fixture: left out
    for panel in (task, valid, mcc, dtheta):
        assert panel.curves == [(name, EPOCHS) for name in finished]
    assert (valid.title, dtheta.ylabel) == ("validation MAE", "|θa − θv| (rad)")
    _, y = curve(fig, 1, "C1")
    assert np.allclose(y, [1.1 - 0.05 * e for e in range(1, EPOCHS + 1)])
    _, y = curve(fig, 0, "C4")  # mean over seeds 0, 1, 2 of 1.2 − 0.1·e + 0.02·seed
    assert np.allclose(y, [1.2 - 0.1 * e + 0.02 for e in range(1, EPOCHS + 1)], atol=1e-6)


def test_seed_spread_is_a_band_and_epochs_are_whole(ablation_figures):
    _, figs, _ = ablation_figures
    ax = figs["balance"].axes[0]  # fine-tuning cosines, mean of 3 seeds
    bands = [c for c in ax.collections if c.get_label().startswith("_")]
    assert len(bands) == 4  # c_a and c_v of C1 and C4
    # c_a of C1 over seeds 0, 1, 2 is 0.5 − 0.02·e + 0.01·seed: sample std 0.01
    top = bands[0].get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(0.5 - 0.02 + 0.01 + 0.01, abs=1e-6)
    for fig in figs.values():
        for axes in fig.axes:
            if axes.get_xlabel() == "epoch":
                ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks)


def test_one_epoch_run_shows_its_points_on_one_whole_tick(tmp_path):
    run = write_eval_run(tmp_path / "eval", seeds=(0,), epochs=1)
    _, figs, _ = build_figures(run)
    for name in ("balance", "training_curves"):
        for ax in figs[name].axes:
            data_lines = [line for line in ax.lines if line.get_label() and not line.get_label().startswith("MCC")]
            assert all(line.get_marker() not in (None, "None", "") for line in data_lines)
        bottom = figs[name].axes[-1]
        ticks = [t for t in bottom.get_xticks() if bottom.get_xlim()[0] <= t <= bottom.get_xlim()[1]]
        assert ticks == [1.0]
    assert not any(c.get_label().startswith("_") for ax in figs["balance"].axes for c in ax.collections)  # 1 seed: no band
    two = write_eval_run(tmp_path / "eval2", seeds=(0,), epochs=2)
    bottom = build_figures(two)[1]["training_curves"].axes[0]
    assert [t for t in bottom.get_xticks() if bottom.get_xlim()[0] <= t <= bottom.get_xlim()[1]] == [1.0, 2.0]


def test_tiny_differences_are_not_blown_up_and_far_reference_lines_do_not_flatten_curves():
    from kebr_core.analysis import MIN_SPAN, BalanceSeries, SweepPoint, balance_figure, g_sweep_figure

    points = [SweepPoint(g, 80.0, 0.5, 0.700 + 0.002 * i, 0.01) for i, g in enumerate((-0.2, 0.0, 0.2))]
    fig = g_sweep_figure(points, "synth")
    low, high = fig.axes[1].get_ylim()
    assert high - low >= MIN_SPAN["mae"] - 1e-12  # 0.004 of MAE does not fill the panel
    e = np.arange(1.0, 5.0)
    cosines = {"epoch": e, "cos_a": 0.02 + 0.001 * e, "cos_v": 0.015 + 0.002 * e, "abs_dtheta": 0.01 + 0 * e}
    fig = balance_figure([BalanceSeries("", "fine-tuning", cosines, None, 0.3)], "small cosines")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high < 0.3 and high - low == pytest.approx(MIN_SPAN["cosine"])  # the line at 0.30 is off the panel...
    assert any("MCC balanced zero at c_a = c_v = 0.30" in t.get_text() for t in ax.texts)  # ...and named at its edge
    assert fig.axes[1].get_ylim()[0] >= 0.0  # |θa − θv| never below 0


def test_ablation_without_an_mcc_pair_skips_balance_and_pca(tmp_path):
    root = write_ablation(tmp_path / "abl", with_c4=False)
    report = analyze(root)
    assert [p.name for p in report.written] == ["g_sweep.png", "training_curves.png"]
    assert set(report.skipped) == {"differences", "balance", "pca"}
    assert "differ only in MCC" in report.skipped["balance"]
    assert report.written[0].parent == root / "plots"  # default output folder


def test_ablation_with_a_missing_eval_dir_skips_with_the_path(tmp_path):
    root = write_ablation(tmp_path / "abl")
    for seed in SEEDS:  # C4 marked done, but its evaluation run was deleted
        for f in (root / "C4" / "eval" / f"seed-{seed}").iterdir():
            f.unlink()
        (root / "C4" / "eval" / f"seed-{seed}").rmdir()
    report = analyze(root)
    assert [p.name for p in report.written] == ["g_sweep.png", "training_curves.png"]
    assert "has no seed-S directories" in report.skipped["balance"] and str(root / "C4" / "eval") in report.skipped["balance"]
    assert "test_features.npz" in report.skipped["pca"]


def test_pair_found_by_settings_when_not_named_c1_c4(tmp_path):
    root = tmp_path / "abl"
    root.mkdir()
    write_eval_run(root / "a", mcc=True)
    write_eval_run(root / "b", mcc=False)
    common = {"kind": "variant", "pretrain": False, "tcmf": True, "g": 0.1, "mcc_form": "reference",
              "mcc_align": "projected", "pretrain_dir": None, "status": "done", "mean": {}, "std": {}, "avg_change": None}
    configs = [{"name": "ref-on", "mcc": True, "eval_dir": "a", **common},
               {"name": "ref-off", "mcc": False, "eval_dir": "b", **common}]
    (root / "ablation.json").write_text(json.dumps({"dataset": "synth", "pretrain_store": None, "seeds": [0],
                                                    "configurations": configs}))
    kind, figs, skipped = build_figures(root)
    assert set(figs) == {"differences", "balance", "pca", "training_curves"}
    assert skipped == {"g_sweep": "The ablation has no finished g-sweep configuration."}
    cos_ft, dth_ft = summarize(figs["balance"])  # fine-tuning only: one column
    assert [c[0] for c in dth_ft.curves] == ["ref-on (with MCC)", "ref-off (without MCC)"]
    assert ("MCC balanced zero (c_a = c_v = 0.40)", 2) in cos_ft.curves


# ───────────────────────── single runs ─────────────────────────


def test_eval_run_alone(tmp_path):
    run = write_eval_run(tmp_path / "eval", mcc=True, g=0.1)
    assert detect_kind(run) == "finetune"
    report = analyze(run)
    assert [p.name for p in report.written] == ["balance.png", "pca.png", "training_curves.png"]
    for path in report.written:
        assert_png(path)
    cos, dth = summarize(report.plots["balance"].figure)
    assert cos.curves == [("c_a (audio)", EPOCHS), ("c_v (vision)", EPOCHS), ("MCC balanced zero (c_a = c_v = 0.40)", 2)]
    assert dth.curves == [("|θa − θv|", EPOCHS)]
    (pca,) = summarize(report.plots["pca"].figure)
    assert pca.points == N_TEST and "seed 0" in pca.title
    assert [len(a.curves) for a in summarize(report.plots["training_curves"].figure)] == [2, 1, 2]


def test_eval_run_without_mcc_draws_no_target_and_skips_missing_features(tmp_path):
    run = write_eval_run(tmp_path / "eval", mcc=False)
    for seed in SEEDS:
        (run / f"seed-{seed}" / "test_features.npz").unlink()
    report = analyze(run, tmp_path / "out")
    assert [p.name for p in report.written] == ["balance.png", "training_curves.png"]
    assert "test_features.npz" in report.skipped["pca"] and str(run) in report.skipped["pca"]
    cos, _ = summarize(report.plots["balance"].figure)
    assert [c[0] for c in cos.curves] == ["c_a (audio)", "c_v (vision)"]


def test_pca_uses_first_seed_with_features(tmp_path):
    run = write_eval_run(tmp_path / "eval")
    (run / "seed-0" / "test_features.npz").unlink()
    _, figs, _ = build_figures(run)
    assert "seed 1" in figs["pca"].axes[0].get_title()
    assert np.allclose(figs["pca"].axes[0].collections[0].get_array(), make_test_features(1)[1])


def test_missing_column_skips_with_its_name(tmp_path):
    run = write_eval_run(tmp_path / "eval", seeds=(0,))
    path = run / "seed-0" / "metrics.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h != "train_cos_v"]
    path.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    _, figs, skipped = build_figures(run)
    assert set(skipped) == {"balance", "training_curves"}
    assert "No seed" in skipped["balance"] and set(figs) == {"pca"}


def test_pretrain_run(tmp_path):
    run = write_pretrain_run(tmp_path / "pre", mcc=True, g=0.2)
    report = analyze(run)
    assert report.kind == "pretrain"
    assert [p.name for p in report.written] == ["balance.png", "training_curves.png"]
    cos, dth = summarize(report.plots["balance"].figure)
    assert cos.title.startswith("pretraining") and len(cos.curves) == 3 and dth.curves == [("|θa − θv|", EPOCHS)]
    task, mcc, cosines = summarize(report.plots["training_curves"].figure)
    assert task.curves == [("train task L1", EPOCHS)]  # no validation during pretraining
    assert "lexicon" in task.ylabel


def test_mean_over_seeds_aligns_epochs_and_ignores_nan():
    seed0 = {"epoch": np.array([1.0, 2.0, 3.0]), "x": np.array([1.0, 2.0, np.nan])}
    seed1 = {"epoch": np.array([1.0, 2.0]), "x": np.array([3.0, 6.0])}  # stopped after epoch 2
    seed2 = {"epoch": np.array([2.0, 1.0]), "x": np.array([1.0, 5.0])}  # rows out of order
    out = mean_over_seeds([seed0, seed1, seed2], ("x",))
    assert np.array_equal(out["epoch"], [1.0, 2.0, 3.0])
    assert np.allclose(out["x"][:2], [3.0, 3.0]) and np.isnan(out["x"][2])


# ───────────────────────── user errors ─────────────────────────


def test_directories_that_are_not_runs(tmp_path):
    with pytest.raises(KebrError, match="not a KEBR run directory"):
        analyze(tmp_path)
    with pytest.raises(KebrError, match="does not exist"):
        analyze(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(KebrError, match="is a file"):
        analyze(tmp_path / "f.txt")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"stage": "extract"}')
    with pytest.raises(KebrError, match="stage 'extract'"):
        analyze(bad)
    (bad / "ablation.json").write_text("{not json")
    with pytest.raises(KebrError, match="cannot be read as JSON"):
        analyze(bad)


# ───────────────────────── CLI ─────────────────────────


def test_cli_writes_and_lists_files(ablation_dir, tmp_path):
    out = tmp_path / "figs"
    result = CliRunner().invoke(app, ["analyze", str(ablation_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("g_sweep", "differences", "balance", "pca", "training_curves"):
        assert str(out / f"{name}.png") in result.stdout
        assert_png(out / f"{name}.png")
    assert "wrote 5 plot(s)" in result.stdout and str(out / "balance.csv") in result.stdout


def test_cli_reports_skipped_plots(tmp_path):
    run = write_eval_run(tmp_path / "eval", seeds=(0,))
    (run / "seed-0" / "test_features.npz").unlink()
    result = CliRunner().invoke(app, ["analyze", str(run)])
    assert result.exit_code == 0, result.output
    assert str(run / "plots" / "balance.png") in result.stdout
    assert "skipped pca:" in result.stderr


def test_cli_bad_directory_is_one_sentence(tmp_path):
    result = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("error:") and "not a KEBR run directory" in message
    assert "\n" not in message and "Traceback" not in result.output


# ───────────────────────── palettes, reference lines, PCA basis, overlays (issue 27, item 7) ─────────────────────────


def line_colors(fig, axes_index: int) -> dict[str, str]:
    ax = [a for a in fig.axes if a.get_label() != "<colorbar>"][axes_index]
    return {line.get_label(): to_hex(line.get_color()) for line in ax.lines}


def test_one_palette_per_concept_in_every_figure(ablation_figures, tmp_path):
    from kebr_core.analysis import (
        MODALITY_COLORS, NEUTRAL, OTHER_CONFIGURATION_COLORS, RUN_COLORS, configuration_colors, g_color)

    # the palettes never share a colour: a colour means one thing
    named = [*MODALITY_COLORS.values(), *CONFIGURATION_COLORS.values(), *OTHER_CONFIGURATION_COLORS, *RUN_COLORS, NEUTRAL]
    assert len({to_hex(c) for c in named}) == len(named)
    sweep = {to_hex(g_color(g)) for g in np.linspace(-0.5, 0.5, 11)}
    assert len(sweep) == 11 and not sweep & {to_hex(c) for c in named}
    assert configuration_colors([("C4", "table4", 0.2), ("g=+0.20", "g-sweep", 0.2), ("no-tcmf+no-mcc", "table4", 0.2)]) == [
        CONFIGURATION_COLORS["C4"], g_color(0.2), OTHER_CONFIGURATION_COLORS[0]]
    # C1 and C4 keep their colours from the balance figure to the training curves
    _, figs, _ = ablation_figures
    balance, curves = line_colors(figs["balance"], 0), line_colors(figs["training_curves"], 0)
    for name in ("C1", "C4"):
        assert balance[f"{name} ({'with' if name == 'C1' else 'without'} MCC): c_a (audio)"] == to_hex(CONFIGURATION_COLORS[name])
        assert curves[name] == to_hex(CONFIGURATION_COLORS[name])
    # c_a and c_v are the same colours in an evaluation run's balance figure and its training curves
    _, run_figs, _ = build_figures(write_eval_run(tmp_path / "eval"))
    balance, cosines = line_colors(run_figs["balance"], 0), line_colors(run_figs["training_curves"], 2)
    for label, modality in (("c_a (audio)", "audio"), ("c_v (vision)", "vision")):
        assert balance[label] == cosines[label] == to_hex(MODALITY_COLORS[modality])


def test_the_balanced_zero_is_in_the_legend_only_when_drawn_inside_the_axes():
    from kebr_core.analysis import BalanceSeries, balance_figure

    e = np.arange(1, 5, dtype=float)
    curves = {"epoch": e, "cos_a": 0.5 + 0.01 * e, "cos_v": 0.4 + 0.01 * e, "abs_dtheta": 0.1 + 0 * e}
    for zero, inside in ((0.45, True), (0.9, False)):  # g = +0.05: between the curves; g = −0.40: far above them
        fig = balance_figure([BalanceSeries("C1 (with MCC)", "fine-tuning", curves, True, zero),
                              BalanceSeries("C4 (without MCC)", "fine-tuning", curves, False, None)], "t")
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        references = [line for line in ax.lines if line.get_label().startswith("MCC balanced zero")]
        assert bool(references) == inside and any("balanced zero" in t for t in legend) == inside
        assert all(low <= line.get_ydata()[0] <= high for line in references)
        if not inside:  # named by an arrow at the panel's edge instead, and the curves keep their range
            assert any("↑ MCC balanced zero at c_a = c_v = 0.90" in t.get_text() for t in ax.texts) and high < 0.9


def test_pca_panels_share_one_basis_and_give_the_polarity_silhouette():
    from kebr_core.analysis import pca_figure, polarity_silhouette
    from kebr_core.run_readers import TestFeatures

    # silhouette by hand: negatives at 0 and 1, positives at 10 and 11 (1-D); neutral and unlabeled left out.
    # s(0) = 1 − 1/10.5, s(1) = 1 − 1/9.5, and the same for the positives by symmetry.
    x = np.array([[0.0], [1.0], [10.0], [11.0], [5.0], [6.0]])
    y = np.array([-1.0, -2.0, 1.0, 2.5, 0.0, np.nan])
    want = np.mean([1 - 1 / 10.5, 1 - 1 / 9.5])
    assert polarity_silhouette(x, y) == pytest.approx(want, abs=1e-12)
    assert np.isnan(polarity_silhouette(x[:3], y[:3]))  # one positive: undefined
    rng = np.random.default_rng(0)
    a = TestFeatures(seed=0, features=rng.normal(size=(30, 4)).astype(np.float32), labels=rng.uniform(-3, 3, 30))
    b = TestFeatures(seed=1, features=(3.0 * rng.normal(size=(20, 4)) + 5.0).astype(np.float32), labels=rng.uniform(-3, 3, 20))
    fig = pca_figure([("a", a), ("b", b)], "t")
    union = np.concatenate([a.features, b.features]).astype(np.float64)
    centre = union.mean(axis=0)
    _, _, vt = np.linalg.svd(union - centre, full_matrices=False)
    for ax, tf in zip(fig.axes[:2], (a, b)):
        xy = ax.collections[0].get_offsets()
        expected = (tf.features - centre) @ vt[:2].T  # the union's basis, up to each component's sign
        assert np.allclose(np.abs(xy), np.abs(expected), atol=1e-4)
        assert f"silhouette neg/pos = {polarity_silhouette(tf.features, tf.labels):+.2f}" in ax.get_title()
    wide = TestFeatures(seed=0, features=np.zeros((5, 6), np.float32), labels=np.ones(5))
    with pytest.raises(RunDataMissing, match="different widths"):
        pca_figure([("a", a), ("w", wide)], "t")


def test_cli_overlays_two_runs_of_one_kind(tmp_path):
    from kebr_core.analysis import RUN_COLORS

    a, b = write_eval_run(tmp_path / "runs" / "a"), write_eval_run(tmp_path / "runs" / "b", mcc=False)
    out = tmp_path / "both"
    r = CliRunner().invoke(app, ["analyze", str(a), str(b), "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = analyze([a, b], tmp_path / "again")
    assert [p.name for p in report.written] == ["balance.png", "pca.png", "training_curves.png"]
    for p in report.written:
        assert_png(p)
    balance = line_colors(report.plots["balance"].figure, 0)
    assert balance["a: c_a (audio)"] == to_hex(RUN_COLORS[0]) and balance["b: c_v (vision)"] == to_hex(RUN_COLORS[1])
    panels = summarize(report.plots["pca"].figure)
    assert [p.title.split(" (")[0] for p in panels] == ["a", "b"] and all(p.points == N_TEST for p in panels)
    assert [l.get_label() for l in report.plots["training_curves"].figure.axes[0].lines] == ["a", "b"]
    assert "`" + str(a) + "`, `" + str(b) + "`" in (out / "index.md").read_text()
    # two ablations: the g-sweeps overlay; the rest is each ablation's own, with the reason in index.md
    one, two = write_ablation(tmp_path / "ab1"), write_ablation(tmp_path / "ab2")
    r = CliRunner().invoke(app, ["analyze", str(one), str(two), "-o", str(tmp_path / "abs")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "abs" / "g_sweep.png").is_file() and not (tmp_path / "abs" / "balance.png").exists()
    assert "skipped differences: not overlaid: each ablation's differences are against its own C1" in " ".join(r.stderr.split())
    _, figs, _ = build_figures([one, two])
    assert [c for c, _ in summarize(figs["g_sweep"])[0].curves if not c.startswith("C1")] == ["ab1: F1 (non0)", "ab2: F1 (non0)"]


@pytest.mark.parametrize("case", ["kinds", "no out", "twice", "comparison"])
def test_cli_refuses_an_overlay_it_cannot_draw_in_one_sentence(tmp_path, case):
    a = write_eval_run(tmp_path / "a")
    other = {"kinds": write_ablation(tmp_path / "abl"), "no out": write_eval_run(tmp_path / "b"), "twice": a,
             "comparison": None}[case]
    if case == "comparison":
        for name in ("c1", "c2"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "compare.json").write_text(json.dumps({"reference": "x", "comparisons": []}))
        a, other = tmp_path / "c1", tmp_path / "c2"
    args = ["analyze", str(a), str(other)] + ([] if case == "no out" else ["-o", str(tmp_path / "out")])
    r = CliRunner().invoke(app, args)
    message = " ".join(r.stderr.split())
    want = {"kinds": f"kebr analyze overlays runs of one kind, but {a} is an evaluation run and {other} is an ablation.",
            "no out": "An overlay of several runs belongs to none of them: give --out for its figures.",
            "twice": f"{a} is given twice; an overlay needs different runs.",
            "comparison": "kebr analyze cannot overlay kebr compare outputs"}[case]
    assert r.exit_code == 1 and want in message and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out").exists()
