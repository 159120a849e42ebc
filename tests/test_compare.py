"""Seed grids (run_readers.seed_grids), `kebr compare` and the forest plot of paired differences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kebr_core.config import RunConfig
from kebr_core.errors import KebrError
from kebr_core.run_readers import RunDataMissing, seed_grids

DATA = {"store": "/data/mosi.h5", "samples": 40, "content_sha256": "abc123"}


def write_eval_run(run_dir: Path, mae: list[float], seeds=(0, 1, 2), data=DATA, finished=None, mcc_weight=1.0,
                   pretrain_seed: int = 0) -> Path:
    """An evaluation run laid out as recipes/finetune.py writes it, with the given test MAE per seed
    (Acc-2 non0 = 1 − MAE / 4 so that two metrics move together)."""
    cfg = RunConfig()
    cfg.mcc.weight, cfg.train.seed = mcc_weight, pretrain_seed
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(
        {"stage": "finetune", **cfg.to_dict(), "data": data, "checkpoint": None, "store": data["store"],
         "seeds": list(seeds)}))
    for seed, value in zip(seeds, mae):
        if finished is not None and seed not in finished:
            continue
        (run_dir / f"seed-{seed}").mkdir()
        test = {"mae": value, "acc2_non0": 1 - value / 4}
        (run_dir / f"seed-{seed}" / "test.json").write_text(json.dumps({"seed": seed, "best_epoch": 1, "test": test}))
    return run_dir


def write_ablation(root: Path, maes: dict[str, list[float]], **kw) -> Path:
    """An ablation of the named configurations (C4 and any name starting "C4" without MCC)."""
    configurations = []
    for name, mae in maes.items():
        mcc = not name.startswith("C4")
        write_eval_run(root / "runs" / name, mae, mcc_weight=1.0 if mcc else 0.0, **kw)
        configurations.append({"name": name, "kind": "table4", "pretrain": True, "tcmf": True, "mcc": mcc, "g": 0.2,
                               "mcc_form": "paper", "mcc_align": "tile", "pretrain_dir": None,
                               "eval_dir": f"runs/{name}", "status": "done", "mean": {}, "std": {}})
    configurations.append({"name": "C2", "kind": "table4", "pretrain": False, "status": "skipped: not run",
                           "eval_dir": "runs/C2"})
    (root / "ablation.json").write_text(json.dumps({"dataset": DATA["store"], "seeds": [0, 1, 2],
                                                    "configurations": configurations}))
    return root


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
