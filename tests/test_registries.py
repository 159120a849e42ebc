"""The name → implementation tables (#31 item 3): MCC forms and alignments, importers, audio feature sets and
vision backends, datasets. Each entry is complete and callable, the CLI's choices are the table's keys, an
unknown name is one clear sentence, and a dataset's entry drives its label range and metric set."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import h5py

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core import runs
from kebr_core.config import MCCConfig
from kebr_core.data import registry
from kebr_core.data.catalog import DATASET_HELP, DATASETS, DEFAULT, Dataset, dataset_of, get_dataset
from kebr_core.data.importers import AUTO, IMPORT_FORMATS, IMPORTERS, importer_for, merge_stores
from kebr_core.data.store import FeatureStore
from kebr_core.data.labels import check_labels, outside_range_warning
from kebr_core.data.summary import label_histogram, summarize
from kebr_core.errors import KebrError
from kebr_core.extract.audio import FEATURE_SETS, get_feature_set
from kebr_core.extract.vision import VISION_BACKENDS, vision_feature_names
from kebr_core.metrics import METRIC_NAMES, msa_metrics, table_headers
from kebr_core.modules.mcc import ALIGNS, FORMS, mcc_from_cosines, mcc_loss
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()


def shown_choices(command: str, option: str) -> list[str]:
    """The a|b|c choices (a metavar, <a|b|c> for an Enum) `kebr COMMAND --help` shows on OPTION's line."""
    out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}).output
    line = next(line for line in out.splitlines() if re.match(rf"│\s+(\*\s+)?{option}\s", line))
    return re.search(r"<?([\w-]+(?:\|[\w-]+)+)>?", line).group(1).split("|")


def one_sentence(text: str) -> bool:
    return text.count(". ") == 0 and text.rstrip().endswith(".") and "\n" not in text


# ── MCC forms and alignments ──


def test_every_mcc_form_is_a_function_of_the_cosines() -> None:
    c_a, c_v = torch.tensor([0.9, 0.3, -0.2]), torch.tensor([0.1, 0.3, 0.5])
    for name, form in FORMS.items():
        f = form(c_a, c_v, 0.2, 1.0, 1e-6)
        assert f.shape == (3,) and torch.isfinite(f).all() and (f >= 0).all(), name
        assert torch.equal(mcc_from_cosines(c_a, c_v, 0.2, 1.0, name), f), name
    # the balanced form by hand: c* = 0.3, (0.3 − 0.3)² + (0.3 − 0.3)² = 0 at the middle sample
    assert FORMS["balanced"](c_a, c_v, 0.2, 1.0, 1e-6)[1] == pytest.approx(0.0)


def test_every_mcc_alignment_gives_two_cosines_per_sample() -> None:
    torch.manual_seed(0)
    b, lt, la, lv, d = 2, 4, 3, 5, 6
    fused, audio, vision = torch.randn(b, lt, d), torch.randn(b, la, 2), torch.randn(b, lv, 3)
    masks = [torch.ones(b, n, dtype=torch.bool) for n in (lt, la, lv)]
    values = torch.randn(b, la, d), torch.randn(b, lv, d)
    for name, align in ALIGNS.items():
        c_a, c_v = align(fused, masks[0], audio, masks[1], vision, masks[2], *values)
        assert c_a.shape == c_v.shape == (b,) and (c_a.abs() <= 1 + 1e-6).all(), name
        out = mcc_loss(fused, masks[0], audio, masks[1], vision, masks[2], MCCConfig(align=name), *values)
        assert torch.allclose(out.c_a, c_a.to(out.c_a.dtype)) and torch.isfinite(out.loss), name


def test_a_registered_mcc_form_is_used_by_name(monkeypatch) -> None:
    """mcc_loss dispatches through FORMS: a form added to the table is computed, nothing else to change."""
    monkeypatch.setitem(FORMS, "sum", lambda c_a, c_v, g, s, eps: s * (c_a + c_v))
    c = torch.tensor([0.25, 0.5])
    assert torch.allclose(mcc_from_cosines(c, c, 0.2, 2.0, "sum"), torch.tensor([1.0, 2.0]))


def test_mcc_choices_are_the_tables_keys_and_unknown_names_are_one_sentence() -> None:
    for command in ("pretrain", "eval"):
        assert shown_choices(command, "--mcc-form") == list(FORMS)
        assert shown_choices(command, "--mcc-align") == list(ALIGNS)
    c = torch.zeros(2)
    with pytest.raises(KebrError, match=r"^Unknown MCC form 'nope': use one of paper, reference, mean-cosine, "
                                        r"balanced\.$"):
        mcc_from_cosines(c, c, 0.2, 1.0, "nope")
    x, m = torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(KebrError, match=r"^Unknown MCC alignment 'nope': use one of tile, authors, projected\.$"):
        mcc_loss(x, m, x, m, x, m, _config_with(align="nope"))


def _config_with(**fields) -> MCCConfig:
    """An MCCConfig holding a value its own checks would refuse (to reach mcc_loss's)."""
    cfg = MCCConfig()
    for key, value in fields.items():
        object.__setattr__(cfg, key, value)
    return cfg


# ── importers ──


def test_every_importer_is_complete_and_found_by_its_extensions(tmp_path: Path) -> None:
    for name, importer in IMPORTERS.items():
        assert importer.name == name and importer.what and callable(importer.run)
        assert importer.suffixes and all(s.startswith(".") for s in importer.suffixes)
        for suffix in importer.suffixes:
            assert importer_for(tmp_path / f"x{suffix.upper()}") is importer
        assert importer_for(tmp_path / "x.bin", name) is importer
    assert IMPORT_FORMATS == (AUTO, *IMPORTERS)
    assert shown_choices("import", "--format") == list(IMPORT_FORMATS)


def test_an_unknown_import_format_or_extension_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(KebrError) as error:
        importer_for(tmp_path / "x.bin", "hdf5")
    assert str(error.value) == "Unknown import format 'hdf5'; use auto, mmsa-pkl or label-csv." and one_sentence(str(error.value))
    with pytest.raises(KebrError, match=r"use \.pkl \(MMSA pickle\) or \.csv \(MMSA label\.csv\), or name the format\.$"):
        importer_for(tmp_path / "x.bin")
    (tmp_path / "x.bin").write_bytes(b"")
    r = runner.invoke(app, ["import", str(tmp_path / "x.bin"), "-o", str(tmp_path / "x.h5")])
    assert r.exit_code == 1 and "Cannot tell the format of" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "x.h5").exists()


# ── audio feature sets and vision backends ──


def test_every_feature_set_computes_its_columns() -> None:
    y = np.random.default_rng(0).standard_normal(22050).astype(np.float32)  # a second of noise
    for name, feature_set in FEATURE_SETS.items():
        assert feature_set.name == name and feature_set.summary and get_feature_set(name) is feature_set
        features = feature_set.compute(y)
        assert features.ndim == 2 and features.shape[1] == feature_set.dim == len(feature_set.names), name
    with pytest.raises(KebrError, match=r"^unknown audio feature set 'mfcc'; choose one of kebr33, mmsa33$"):
        get_feature_set("mfcc")


def test_extract_choices_and_help_come_from_the_tables() -> None:
    assert shown_choices("extract", "--audio-features") == list(FEATURE_SETS)
    assert shown_choices("extract", "--vision") == list(VISION_BACKENDS)
    out = " ".join(runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "250"}).output.replace("│", " ").split())
    for name, feature_set in FEATURE_SETS.items():
        assert f"{name} ({feature_set.summary})" in out
    for name in VISION_BACKENDS:
        assert isinstance(vision_feature_names(name), tuple)
    with pytest.raises(KebrError, match=r"^unknown vision backend 'webcam'; choose one of mediapipe, openface-csv, none$"):
        vision_feature_names("webcam")


# ── datasets ──


def test_every_dataset_entry_is_complete() -> None:
    for name, entry in DATASETS.items():
        assert entry.name == name and entry.title and get_dataset(name.upper()) is entry
        low, high = entry.label_range
        assert low < entry.neutral < high and all(0 < bound <= high for _, bound in entry.class_accuracies)
        assert (entry.generate is not None) != bool(entry.processed_files and entry.label_files), name
    assert DEFAULT.metric_names == METRIC_NAMES == ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5",
                                                    "mae", "corr")
    help_text = " ".join(runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "250"}).output.replace("│", " ").split())
    assert DATASET_HELP in help_text and DATASET_HELP.startswith(", ".join(DATASETS) + ", ")


def test_an_unknown_dataset_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(KebrError) as error:
        registry.resolve_dataset("chsims", tmp_path)
    assert str(error.value) == "Dataset 'chsims' is neither mosi, mosei, synth nor an existing store file."
    with pytest.raises(KebrError, match=r"^Unknown dataset 'chsims': kebr knows mosi, mosei, synth\.$"):
        get_dataset("chsims")


# A made-up dataset on [-1, 1] with one 3-class accuracy (CH-SIMS's scale, not its exact metrics).
UNIT = Dataset("unit", "a [-1, 1] test dataset", label_range=(-1.0, 1.0), class_accuracies=(("acc3", 1.0),))


def test_a_dataset_entry_sets_the_label_range_of_the_checks() -> None:
    labels, outside = check_labels(np.array([-1.5, 0.2, 1.0, np.nan, 2.5]), list("abcde"), "f", clip=True,
                                   label_range=UNIT.label_range)
    assert outside == 2 and np.allclose(labels, [-1.0, 0.2, 1.0, np.nan, 1.0], equal_nan=True)
    assert check_labels(np.array([-1.5, 2.5]), ["a", "b"], "f")[1] == 0  # on MOSI's [-3, 3] both are inside
    assert outside_range_warning(2, clipped=True, label_range=UNIT.label_range) == (
        "2 label(s) outside [-1, 1] were clipped onto it.")
    # round(clip(y, -1, 1)), half to even: -1, -1, 0 (0.4), 0 (0.5), 1 (0.6), 1 (2.0 clipped)
    histogram = label_histogram(np.array([-1.0, -0.6, 0.4, 0.5, 0.6, 2.0, np.nan]), UNIT.label_range)
    assert histogram == {"-1": 2, "0": 2, "1": 2}
    assert list(label_histogram(np.array([0.0]))) == ["-3", "-2", "-1", "0", "1", "2", "3"]


def test_a_dataset_entry_sets_the_metric_set() -> None:
    """labels (-0.8, -0.2, 0.3, 0.9), predictions (-0.4, 0.1, 0.6, 2.0) on [-1, 1]:
    Acc-2 has0: labels >= 0 (F F T T) vs predictions (F T T T) → 3/4; non0 the same (no zero label);
    Acc-3: round(clip) of labels (-1, 0, 0, 1), of predictions (0, 0, 1, 1) → 2/4; MAE (0.4+0.3+0.3+1.1)/4."""
    label, pred = np.array([-0.8, -0.2, 0.3, 0.9]), np.array([-0.4, 0.1, 0.6, 2.0])
    got = msa_metrics(pred, label, UNIT)
    assert tuple(got) == UNIT.metric_names == ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc3", "mae", "corr")
    assert got["acc2_has0"] == got["acc2_non0"] == 0.75 and got["acc3"] == 0.5
    assert got["mae"] == pytest.approx(0.525) and got["corr"] == pytest.approx(np.corrcoef(pred, label)[0, 1])
    # on MOSI's scale the 2.0 prediction is not clipped onto 1: Acc-7 compares 2 with 1 there, 1 of 4 agree
    # Table 1's column order whatever order the keys come in (MMSA's CSV lists Acc-5 before Acc-7)
    assert list(table_headers(UNIT.metric_names)) == ["Acc-2", "F1", "Acc-3", "MAE", "Corr"]
    assert list(table_headers(["corr", "acc5", "mae", "acc7", "f1_has0", "f1_non0", "acc2_has0", "acc2_non0"])) == [
        "Acc-2", "F1", "Acc-7", "Acc-5", "MAE", "Corr"]
    mosi = msa_metrics(pred, label)
    assert tuple(mosi) == METRIC_NAMES and mosi["acc7"] == 0.25 and mosi["acc2_has0"] == 0.75


def test_a_dataset_entry_is_resolved_with_its_files_and_range(tmp_path: Path, monkeypatch) -> None:
    """A registered entry is found by name under the data directory, its label.csv imported with its range:
    the 1.5 label lies outside [-1, 1] and the warning says so."""
    monkeypatch.setitem(DATASETS, "unit", UNIT)
    folder = tmp_path / "unit"
    folder.mkdir()
    (folder / "label.csv").write_text("video_id,clip_id,text,label,annotation,mode\n"
                                      "v,1,good,0.5,Positive,train\nv,2,bad,1.5,Positive,test\n")
    warnings: list[str] = []
    store = registry.resolve_dataset("unit", tmp_path, warn=warnings.append)
    assert store == tmp_path / "unit-text.h5" and store.is_file()
    assert any("1 label(s) lie outside [-1, 1]" in w for w in warnings)
    with pytest.raises(KebrError, match=r"^No unit data under .*MMSA's unaligned_50\.pkl at .*label\.csv at"):
        registry.resolve_dataset("unit", tmp_path / "empty")
    # The store records the entry it was made for; `kebr inspect` says so and bins labels on its range.
    assert FeatureStore(store).attrs["dataset"] == "unit" and dataset_of(FeatureStore(store).attrs, store) is UNIT
    summary = summarize(store)
    assert summary["dataset"] == "unit" and summary["labels"]["histogram"] == {"-1": 0, "0": 1, "1": 1}
    assert summary["labels"]["outside_range"] == 1
    assert "made for dataset: unit" in runner.invoke(app, ["inspect", str(store)]).output
    assert FeatureStore(registry.resolve_dataset("synth", tmp_path)).attrs["dataset"] == "synth"


def test_a_store_made_for_a_dataset_is_scored_with_its_metric_set(tmp_path: Path, monkeypatch) -> None:
    """`kebr eval` on a store made for the [-1, 1] entry: every seed's test metrics are that entry's set,
    computed on its scale from the seed's own predictions (Acc-3, no Acc-7), and the table shows Acc-3."""
    monkeypatch.setitem(DATASETS, "unit", UNIT)
    store = write_tiny_store(tmp_path / "unit.h5", dataset="unit")
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(tmp_path / "run"), "--text-model", TINY_BERT,
                            "--batch-size", "8", "--epochs", "1", "--seeds", "1"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "run" / runs.RESULTS_JSON).read_text())
    test = results["per_seed"][0]
    assert tuple(test) == UNIT.metric_names
    rows = list(csv.DictReader((runs.seed_dir(tmp_path / "run", results["seeds"][0]) / runs.PREDICTIONS_CSV).open()))
    label, pred = (np.array([float(row[k]) for row in rows]) for k in ("label", "prediction"))
    assert test == pytest.approx(msa_metrics(pred, label, UNIT))
    assert "Acc-3" in r.output and "Acc-7" not in r.output


def test_a_store_made_for_an_unknown_dataset_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "unit", UNIT)
    store = write_tiny_store(tmp_path / "unit.h5", dataset="unit")
    monkeypatch.delitem(DATASETS, "unit")  # a store from a kebr that knew the entry
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(tmp_path / "run"), "--text-model", TINY_BERT,
                            "--epochs", "1", "--seeds", "1"])
    assert r.exit_code != 0 and not (tmp_path / "run").exists()
    message = " ".join(r.output.split())
    assert f"Store {store} was made for dataset 'unit', which this kebr does not know" in message, r.output


def test_stores_made_for_different_datasets_are_not_merged(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "unit", UNIT)
    a = write_tiny_store(tmp_path / "a.h5", n=5, dataset="unit")
    b = write_tiny_store(tmp_path / "b.h5", n=5)
    with h5py.File(b, "r+") as f:  # disjoint ids
        f["id"][:5] = [f"b{i}" for i in range(5)]
    with pytest.raises(KebrError, match="their dataset differ"):
        merge_stores([a, b], tmp_path / "ab.h5")
    assert not (tmp_path / "ab.h5").exists()
