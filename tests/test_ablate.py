"""`kebr ablate`: each flag builds the configuration it names; --all gives C1–C5; reruns skip finished work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.config import RunConfig
from kebr_core.metrics import METRIC_NAMES
from kebr_core.model import KEBRModel
from kebr_core.modules.fusion import LateFusion
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
    assert names(build_specs(no_pretrain=True, no_tcmf=True, no_mcc=True)) == ["C1", "C5"]
    combo = build_specs(no_pretrain=True, no_mcc=True)[1]
    assert (combo.name, combo.pretrain, combo.tcmf, combo.mcc) == ("no-pretrain+no-mcc", False, True, False)
    assert names(build_specs(all_table4=True)) == ["C1", "C2", "C3", "C4", "C5"]
    sweep = build_specs(g_sweep=[-0.5, 0.0, 0.5])
    assert [s.g for s in sweep[1:]] == [-0.5, 0.0, 0.5] and all(s.kind == "g-sweep" for s in sweep[1:])
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
    # results.csv: one row per configuration with the means and relative changes of ablation.json.
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == ["C1", "C2", "C3", "C4", "C5"]
    for line, row in zip(table, rows):
        assert line["status"] == "done" and line["mcc"] == str(row["mcc"])
        for k in METRIC_NAMES:
            assert float(line[f"{k}_mean"]) == pytest.approx(row["mean"][k], nan_ok=True)
        assert float(line["avg_change"]) == pytest.approx(row["avg_change"])
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("test.json")} | {
        p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing recomputed


def test_ablate_bad_align_is_one_sentence(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ablate", "--dataset", "synth", "-o", str(tmp_path / "abl"), "--align", "diagonal"])
    assert r.exit_code != 0
    assert "--align must be one of tile, projected, not 'diagonal'." in r.output
    assert not (tmp_path / "abl").exists()


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
