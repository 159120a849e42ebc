"""Run directories laid out as the recipes write them, with chosen test metrics per seed, for the tests of
paired comparisons (`kebr compare`, seed grids, the forest plot)."""

from __future__ import annotations

import json
from pathlib import Path

from kebr_core.config import RunConfig

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


def write_multi_seed_eval(root: Path, mae: list[list[float]], **kw) -> Path:
    """`kebr eval` of a multi-seed pretraining: root/pseed-S/, one evaluation run per pretraining seed S
    (row S of `mae`, one value per fine-tuning seed)."""
    for pretrain_seed, row in enumerate(mae):
        write_eval_run(root / f"pseed-{pretrain_seed}", row, pretrain_seed=pretrain_seed, **kw)
    return root
