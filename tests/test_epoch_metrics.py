"""The per-epoch metrics schema (`kebr_core.epoch_metrics`): what a real run writes is what is declared,
and the readers find every column they ask for by name."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from kebr_core import epoch_metrics, runs
from kebr_core.epoch_metrics import FINETUNE_COLUMNS, PRETRAIN_COLUMNS
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.pretrain import pretrain
from kebr_core.run_readers import eval_curves, pretrain_curves
from kebr_core.epoch_metrics import BALANCE_SUMS
from kebr_core.training import epoch_row
from tests.test_recipes import small_cfg


def header(path: Path) -> tuple[str, ...]:
    with path.open(newline="") as f:
        return tuple(next(csv.reader(f)))


def test_a_real_run_writes_exactly_the_declared_columns(tiny_store: Path, tmp_path: Path) -> None:
    """A one-epoch pretraining and a one-epoch fine-tuning from it: each metrics.csv's header equals the
    declared columns, in order, and the readers' curves (a subset, by name) come back finite."""
    pre = pretrain(tiny_store, tmp_path / "pre", small_cfg(epochs=1))
    assert header(pre.run_dir / runs.METRICS) == PRETRAIN_COLUMNS
    assert tuple(pre.last_row) == PRETRAIN_COLUMNS
    finetune(tiny_store, tmp_path / "ft", small_cfg(epochs=1), checkpoint=pre.run_dir, seeds=[0])
    assert header(runs.seed_dir(tmp_path / "ft", 0) / runs.METRICS) == FINETUNE_COLUMNS
    curves = pretrain_curves(pre.run_dir)
    assert set(epoch_metrics.PRETRAIN_CURVES) <= set(curves) and curves["mcc"].shape == (1,)
    finetune_curves, seeds = eval_curves(tmp_path / "ft")
    assert seeds == 1 and set(epoch_metrics.FINETUNE_CURVES) <= set(finetune_curves)


def test_the_schema_is_complete_and_its_names_are_unique() -> None:
    for metric in (*epoch_metrics.TRAINING, *epoch_metrics.VALIDATION):
        assert metric.name and metric.meaning
    for metric in epoch_metrics.VALIDATION:
        assert metric.direction in ("minimize", "maximize")
    for columns in (PRETRAIN_COLUMNS, FINETUNE_COLUMNS):
        assert len(set(columns)) == len(columns) and columns[0] == epoch_metrics.EPOCH
    assert set(epoch_metrics.BALANCE) <= set(epoch_metrics.TRAINING_NAMES)
    assert set(epoch_metrics.PRETRAIN_CURVES) <= set(PRETRAIN_COLUMNS)
    assert set(epoch_metrics.FINETUNE_CURVES) <= set(FINETUNE_COLUMNS)


def test_epoch_row_from_hand_made_sums() -> None:
    """Σ|err| 6 over 4 samples, Σf 1, Σc_a 1.5, Σc_v 0.5, Σ|Δθ| 0.4 over 2 valid samples, λ 0.5:
    task_l1 1.5, mcc 0.5, loss 1.75, cos_a 0.75, cos_v 0.25, abs_dtheta 0.2."""
    sums = dict(abs_err=6.0, samples=4.0, mcc=1.0, cos_a=1.5, cos_v=0.5, abs_dtheta=0.4, mcc_samples=2.0)
    row = epoch_row(3, torch.tensor([sums[k] for k in BALANCE_SUMS], dtype=torch.float64), 1.23456, 0.5,
                    prefix="train_")
    assert tuple(row) == epoch_metrics.training_columns("train_")
    assert row["epoch"] == 3 and row["seconds"] == 1.235
    expected = {"loss": 1.75, "task_l1": 1.5, "mcc": 0.5, "cos_a": 0.75, "cos_v": 0.25, "abs_dtheta": 0.2}
    assert {k.removeprefix("train_"): v for k, v in row.items() if k not in ("epoch", "seconds")} == pytest.approx(expected)
