"""`kebr ablate`: each flag builds the configuration it names; --all gives C1–C5; reruns skip finished work."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.config import RunConfig
from kebr_core.metrics import METRIC_NAMES
from kebr_core.model import KEBRModel
from kebr_core.modules.fusion import LateFusion, SymmetricFusion
from kebr_core.modules.tcmf import TCMF
from kebr_core.recipes.ablate import AblationSpec, apply_spec, build_specs, relative_change
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()


def names(specs: list[AblationSpec]) -> list[str]:
    return [s.name for s in specs]


def test_flags_choose_configurations() -> None:
    assert names(build_specs()) == ["C1"]
    assert names(build_specs(no_mcc=True)) == ["C1", "C4"]
    assert names(build_specs(no_tcmf=True)) == ["C1", "C3"]
    assert names(build_specs(no_pretrain=True)) == ["C1", "C2"]
    # each flag adds its own configuration, as --help says; a combination only when asked for (--combined)
    assert names(build_specs(no_pretrain=True, no_tcmf=True, no_mcc=True)) == ["C1", "C2", "C3", "C4"]
    assert names(build_specs(no_pretrain=True, no_mcc=True)) == ["C1", "C2", "C4"]
    assert names(build_specs(no_pretrain=True, no_tcmf=True, no_mcc=True, combined=True)) == ["C1", "C2", "C3", "C4", "C5"]
    combo = build_specs(no_pretrain=True, no_mcc=True, combined=True)[-1]
    assert (combo.name, combo.pretrain, combo.tcmf, combo.mcc) == ("no-pretrain+no-mcc", False, True, False)
    assert names(build_specs(no_mcc=True, combined=True)) == ["C1", "C4"]  # one factor: nothing to combine
    assert names(build_specs(all_table4=True)) == ["C1", "C2", "C3", "C4", "C5"]
    sweep = build_specs(g_sweep=[-0.5, 0.0, 0.5])
    assert [s.g for s in sweep[1:]] == [-0.5, 0.0, 0.5] and all(s.kind == "g-sweep" for s in sweep[1:])
    # the sweep's point at C1's g is C1 (the same configuration), not a second run of it
    assert names(build_specs(g_sweep=[0.0, 0.2, 0.4])) == ["C1", "g=+0.00", "g=+0.40"]
    assert names(build_specs(g_sweep=[0.0, 0.2, 0.4], g=0.4)) == ["C1", "g=+0.00", "g=+0.20"]
    variants = build_specs(mcc_forms=["paper", "reference"], mcc_aligns=["projected"])
    assert [(s.mcc_form, s.mcc_align) for s in variants[1:]] == [("reference", "tile"), ("paper", "projected")]
    # --align sets every configuration's alignment; a no-MCC run logs its cosines with it
    projected = build_specs(no_mcc=True, mcc_aligns=["tile", "projected"], align="projected")
    assert [(s.name, s.mcc, s.mcc_align) for s in projected] == [
        ("C1", True, "projected"), ("C4", False, "projected"), ("align=tile", True, "tile")]
    assert [s.pretrain_key() for s in projected] == [
        "tcmf-mcc-g+0.20-paper-projected", "tcmf-nomcc-projected", "tcmf-mcc-g+0.20-paper-tile"]
    assert apply_spec(RunConfig(), projected[1]).mcc.align == "projected"


@pytest.mark.parametrize("spec", build_specs(all_table4=True), ids=lambda s: s.name)
def test_each_configuration_builds_the_model_and_loss_it_names(spec: AblationSpec) -> None:
    base = RunConfig()
    base.model.text_model, base.model.d_audio, base.model.d_vision = TINY_BERT, 7, 5
    cfg = apply_spec(base, spec)
    model = KEBRModel(cfg.model, cfg.mcc)
    assert isinstance(model.fusion, TCMF if spec.tcmf else LateFusion)
    symmetric = apply_spec(base, replace(spec, c3="symmetric"))
    assert isinstance(KEBRModel(symmetric.model, symmetric.mcc).fusion, TCMF if spec.tcmf else SymmetricFusion)
    assert cfg.mcc.weight == (1.0 if spec.mcc else 0.0)
    assert cfg.mcc.g == spec.g


def test_relative_change_reverses_mae() -> None:
    ref = {"acc2_non0": 0.8, "mae": 1.0}
    assert relative_change({"acc2_non0": 0.88, "mae": 0.9}, ref) == pytest.approx((10 + 10) / 2)


def test_ablate_all_runs_five_rows_and_reuses_work(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "s.h5", n=40)
    out = tmp_path / "abl"
    args = ["ablate", "--dataset", str(store), "-o", str(out), "--all", "--seeds", "1", "--pretrain-epochs", "1",
            "--epochs", "1", "--text-model", TINY_BERT, "--batch-size", "8", "--freeze-encoder"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    payload = json.loads((out / "ablation.json").read_text())
    rows = payload["configurations"]
    assert [row["name"] for row in rows] == ["C1", "C2", "C3", "C4", "C5"]
    assert all(row["status"] == "done" and row["mean"] for row in rows)
    assert rows[0]["avg_change"] == pytest.approx(0.0)
    # Pretraining is shared: C1, C3, C4 need three distinct runs; C2 and C5 none.
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == sorted(
        {"tcmf-mcc-g+0.20-paper-tile", "late-mcc-g+0.20-paper-tile", "tcmf-nomcc"})
    assert rows[1]["pretrain_dir"] is None and rows[4]["pretrain_dir"] is None
    for row in rows:
        cfg = json.loads((out / row["eval_dir"] / "config.json").read_text())
        assert cfg["model"]["fusion"] == ("tcmf" if row["tcmf"] else "late")
        assert cfg["mcc"]["weight"] == (1.0 if row["mcc"] else 0.0)
        assert (cfg["checkpoint"] is not None) == row["pretrain"]
        if row["pretrain"]:  # λ = 0 in both stages for C4: its pretraining run and checkpoint say so too
            for pre_cfg in (out / row["pretrain_dir"] / "config.json", out / row["pretrain_dir"] / "final" / "config.json"):
                saved = json.loads(pre_cfg.read_text())
                assert saved["mcc"]["weight"] == cfg["mcc"]["weight"] and saved["model"]["fusion"] == cfg["model"]["fusion"]
    # results.csv: one row per configuration with the means and relative changes of ablation.json, accuracies
    # and F1 in percent (ablation.json: fractions), the unit in the column's name.
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["C1", "C2", "C3", "C4", "C5"]
    for line, row in zip(table, rows):
        assert line["status"] == "done" and line["mcc"] == str(row["mcc"]) and line["inputs"] == "text, audio, vision"
        for k in METRIC_NAMES:
            scale, column = (1, f"{k}_mean") if k in ("mae", "corr") else (100, f"{k}_mean_pct")
            assert float(line[column]) == pytest.approx(scale * row["mean"][k], nan_ok=True)
        assert float(line["avg_change_pct"]) == pytest.approx(row["avg_change"])
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("test.json")} | {
        p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing recomputed


def test_ablate_bad_align_is_one_sentence(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ablate", "--dataset", "synth", "-o", str(tmp_path / "abl"), "--mcc-align", "diagonal"])
    assert r.exit_code != 0
    assert "--mcc-align must be one of tile, authors, projected, not 'diagonal'." in r.output
    assert not (tmp_path / "abl").exists()
    old = runner.invoke(app, ["ablate", "--dataset", "synth", "-o", str(tmp_path / "abl"), "--align", "projected",
                              "--compare-aligns", "nope"])  # the old name of --mcc-align still works, with a note
    assert "note: --align is now --mcc-align" in old.stderr and "--compare-aligns must be one of" in old.stderr
    listed = runner.invoke(app, ["ablate", "--dataset", "synth", "-o", str(tmp_path / "abl"), "--mcc-align", "tile,projected"])
    assert listed.exit_code == 1 and "use --compare-aligns tile,projected" in listed.stderr


def test_ablate_without_streams_skips_what_cannot_differ(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "text.h5", n=40, no_streams=True)
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "--dataset", str(store), "-o", str(out), "--no-mcc", "--seeds", "1",
                            "--pretrain-epochs", "1", "--epochs", "1", "--text-model", TINY_BERT, "--freeze-encoder"])
    assert r.exit_code == 0, r.output
    assert "MCC is undefined" in r.output
    rows = json.loads((out / "ablation.json").read_text())["configurations"]
    assert rows[0]["status"] == "done"
    assert rows[1]["status"].startswith("skipped: identical to C1")


def test_ablate_pretrains_without_the_test_split_unless_asked(tmp_path: Path) -> None:
    """Without --pretrain-store the dataset's test inputs stay out of pretraining (the paper pretrains on
    separate video); --pretrain-on-test opts in; the choice is in ablation.json, config.json and the caption."""
    store = write_tiny_store(tmp_path / "s.h5", n=40)  # 24 train, 8 valid, 8 test
    common = ["--dataset", str(store), "--seeds", "1", "--pretrain-epochs", "1", "--epochs", "1",
              "--text-model", TINY_BERT, "--batch-size", "8", "--freeze-encoder"]
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "-o", str(out), *common])
    assert r.exit_code == 0, r.output
    payload = json.loads((out / "ablation.json").read_text())
    assert payload["pretrain_splits"] == ["train", "valid", "unlabeled"] and payload["pretrain_on_test"] is False
    pre_cfg = json.loads((out / "pretrain" / "tcmf-mcc-g+0.20-paper-tile" / "config.json").read_text())
    assert pre_cfg["splits"] == ["train", "valid", "unlabeled"] and pre_cfg["samples"] == 32
    assert "test inputs left out" in " ".join(r.output.split())

    out2 = tmp_path / "abl2"
    r = runner.invoke(app, ["ablate", "-o", str(out2), "--pretrain-on-test", *common])
    assert r.exit_code == 0, r.output
    payload = json.loads((out2 / "ablation.json").read_text())
    assert payload["pretrain_splits"] is None and payload["pretrain_on_test"] is True
    assert json.loads((out2 / "pretrain" / "tcmf-mcc-g+0.20-paper-tile" / "config.json").read_text())["samples"] == 40
    assert "test inputs included" in " ".join(r.output.split())

    # a finished pretraining run on other data is not silently reused
    r = runner.invoke(app, ["ablate", "-o", str(out2), *common])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert 'splits (null → ["train", "valid", "unlabeled"])' in " ".join(r.output.split())


def test_remove_modality_zeroes_or_hides_one_stream() -> None:

    from kebr_core.recipes.finetune import remove_modality

    batch = {"audio": torch.ones(2, 3, 4), "audio_mask": torch.tensor([[True, True, False]] * 2),
             "vision": torch.ones(2, 2, 5), "vision_mask": torch.ones(2, 2, dtype=torch.bool)}
    zeroed = remove_modality(batch, "audio", "zeroed")
    assert (zeroed["audio"] == 0).all() and torch.equal(zeroed["audio_mask"], batch["audio_mask"])
    assert zeroed["vision"] is batch["vision"] and (batch["audio"] == 1).all()  # the input batch is unchanged
    absent = remove_modality(batch, "vision", "absent")
    assert (absent["vision"] == 0).all() and not absent["vision_mask"].any() and absent["audio"] is batch["audio"]


def test_probe_equals_testing_on_a_store_without_that_modality(tmp_path: Path) -> None:
    """predict_split(remove=(m, how)) gives exactly the predictions of the same model on a copy of the store
    whose m frames are all 0 (zeroed) or missing (absent)."""
    from kebr_core.data.dataset import Collator, StoreDataset
    from kebr_core.masking import tokenize_plain
    from kebr_core.text_encoder import load_tokenizer
    from kebr_core.recipes.finetune import predict_split

    cfg = RunConfig()
    cfg.model.text_model, cfg.model.layers, cfg.model.d_audio, cfg.model.d_vision = TINY_BERT, 1, 7, 5
    cfg.train.device = "cpu"
    model = KEBRModel(cfg.model, cfg.mcc).eval()
    tokenizer = load_tokenizer(TINY_BERT)
    collate = Collator(50, 400, 55, pad_id=tokenizer.pad_token_id)

    def predictions(store: Path, remove=None) -> np.ndarray:
        encoder = lambda texts: [{"input_ids": ids} for ids in tokenize_plain(texts, tokenizer, 50)]  # noqa: E731
        return predict_split(model, StoreDataset(store, "test", encoder), collate, None, cfg, torch.device("cpu"),
                             remove=remove)[0]

    base = write_tiny_store(tmp_path / "base.h5", n=30, seed=3)
    for how, kwargs in (("zeroed", {"audio_value": 0.0}), ("absent", {"no_audio": True})):
        without = write_tiny_store(tmp_path / f"{how}.h5", n=30, seed=3, **kwargs)
        probed = predictions(base, remove=("audio", how))
        np.testing.assert_allclose(probed, predictions(without), atol=1e-6)
        assert not np.allclose(probed, predictions(base))  # the model does read audio


def test_ablate_probe_tests_each_configuration_with_a_modality_removed(tmp_path: Path) -> None:
    """--probe: each configuration's test metrics with audio or vision zeroed or absent, per seed and as mean
    over seeds, in test.json, results.json, ablation.json and the printed table."""
    store = write_tiny_store(tmp_path / "s.h5", n=30)
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "--dataset", str(store), "-o", str(out), "--probe", "--seeds", "2",
                            "--pretrain-epochs", "1", "--epochs", "1", "--text-model", TINY_BERT, "--batch-size", "8",
                            "--layers", "1", "--freeze-encoder"])
    assert r.exit_code == 0, r.output
    assert "Modality removed at test time" in r.output
    (row,) = json.loads((out / "ablation.json").read_text())["configurations"]
    names = ["audio zeroed", "audio absent", "vision zeroed", "vision absent"]
    assert list(row["probe"]) == names
    assert all(set(row["probe"][n]["mean"]) == set(row["mean"]) for n in names)
    results = json.loads((out / row["eval_dir"] / "results.json").read_text())
    assert results["probe"]["audio absent"] == row["probe"]["audio absent"]
    per_seed = [json.loads((out / row["eval_dir"] / f"seed-{s}" / "test.json").read_text()) for s in (0, 1)]
    for name in names:
        assert np.mean([p["probe"][name]["mae"] for p in per_seed]) == pytest.approx(row["probe"][name]["mean"]["mae"])
    assert row["probe"]["audio absent"]["mean"]["mae"] != row["mean"]["mae"]


def test_form_and_align_of_every_configuration() -> None:
    """ablate --mcc-form/--mcc-align set every configuration (as in eval); --compare-* add one per other value."""
    specs = build_specs(all_table4=True, g_sweep=[0.1], mcc_forms=["paper", "reference"], mcc_aligns=["tile", "authors"],
                        form="reference", align="authors")
    assert [s.name for s in specs] == ["C1", "C2", "C3", "C4", "C5", "g=+0.10", "form=paper", "align=tile"]
    assert all(s.mcc_form == "reference" for s in specs if s.name != "form=paper")
    assert all(s.mcc_align == "authors" for s in specs if s.name != "align=tile")


def test_ablate_c3_symmetric_is_named_in_the_caption(tmp_path: Path) -> None:
    """--c3 symmetric: C3 keeps a cross-modal network of three equal streams (our reading of Table 4's
    caption); its pretraining key, the row and the table's caption say which C3 ran; --c3 late stays."""
    assert [s.pretrain_key() for s in build_specs(no_tcmf=True, c3="symmetric")] == [
        "tcmf-mcc-g+0.20-paper-tile", "symmetric-mcc-g+0.20-paper-tile"]
    assert build_specs(no_tcmf=True)[1].fusion == "late"
    store = write_tiny_store(tmp_path / "s.h5", n=30)
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "--dataset", str(store), "-o", str(out), "--no-tcmf", "--c3", "symmetric",
                            "--seeds", "1", "--pretrain-epochs", "1", "--epochs", "1", "--text-model", TINY_BERT,
                            "--batch-size", "8", "--freeze-encoder", "--layers", "1"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "ablation.json").read_text())["configurations"]
    assert [(row["name"], row["c3"]) for row in rows] == [("C1", "symmetric"), ("C3", "symmetric")]
    assert json.loads((out / rows[1]["eval_dir"] / "config.json").read_text())["model"]["fusion"] == "symmetric"
    assert "symmetric cross-modal fusion of three equal streams" in " ".join(r.output.split())
    bad = runner.invoke(app, ["ablate", "--dataset", str(store), "-o", str(out), "--no-tcmf", "--c3", "early"])
    assert bad.exit_code != 0 and "--c3 must be one of late, symmetric, not 'early'." in bad.output


def test_ablate_refuses_a_different_mcc_per_stage(tmp_path: Path) -> None:
    """--preset authors pretrains with mean-cosine, g 0.25 and fine-tunes with reference, g 0.4; ablate gives
    both stages one geometry (its pretraining runs are keyed by it), so it asks for one instead of
    silently using the fine-tuning stage's for pretraining; typing --g and --mcc-form settles it."""
    store = write_tiny_store(tmp_path / "s.h5", n=20)
    r = runner.invoke(app, ["ablate", "--dataset", str(store), "-o", str(tmp_path / "abl"), "--preset", "authors",
                            "--text-model", TINY_BERT, "--print-config"])
    assert r.exit_code == 0, r.output  # printing the per-stage settings is fine
    r = runner.invoke(app, ["ablate", "--dataset", str(store), "-o", str(tmp_path / "abl"), "--preset", "authors",
                            "--text-model", TINY_BERT])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert ("(pretraining: g 0.25, form mean-cosine, align authors; fine-tuning: g 0.4, form reference, align "
            "authors); choose one with --g and --mcc-form") in " ".join(r.output.split())
    assert not (tmp_path / "abl" / "ablation.json").exists()


def test_the_g_sweep_reuses_c1_as_its_point_at_c1s_g(tmp_path: Path) -> None:
    """`kebr ablate --g-sweep --g-values 0,0.2`: g = 0.2 is C1's own configuration, so it is not trained a second
    time (no run, no row), and `kebr analyze` draws C1 as the sweep's point there (issue 27, item 7)."""
    from kebr_core.recipes.analyze import build_figures

    store = write_tiny_store(tmp_path / "s.h5", n=30)
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "-d", str(store), "-o", str(out), "--g-sweep", "--g-values", "0,0.2", "--seeds", "1",
                            "--pretrain-epochs", "1", "--epochs", "1", "--freeze-encoder", "--text-model", TINY_BERT,
                            "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "ablation.json").read_text())["configurations"]
    assert [(row["name"], row["g"]) for row in rows] == [("C1", 0.2), ("g=+0.00", 0.0)]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["C1", "g=+0.00"]
    _, figures, skipped = build_figures(out)
    bar = figures["g_sweep"].axes[0].containers[0]
    assert list(bar.lines[0].get_xdata()) == [0.0, 0.2] and "g_sweep" not in skipped
    c1 = next(row for row in rows if row["name"] == "C1")
    assert bar.lines[0].get_ydata()[1] == pytest.approx(100 * c1["mean"]["f1_non0"])
    assert [line.get_label() for line in figures["g_sweep"].axes[0].lines if line.get_label().startswith("C1")] == [
        "C1 (its g = +0.20)"]
