"""Result folders for `kebr table` (tests/test_paper_table.py), written by the recipes' own writers
(`finetune.write_summary`, `results_files.update_results_table`) or, for ablation.json, with the keys
recipes/ablate.py writes: chosen numbers, so the tables can be checked against reviewed files in tests/data/."""

from __future__ import annotations

import json
from pathlib import Path

from kebr_core import results_files, runs
from kebr_core.config import RunConfig
from kebr_core.metrics import METRIC_NAMES, aggregate, split_summary
from kebr_core.recipes.finetune import write_summary

SEEDS = [0, 1, 2]


def seed_metrics(base: dict[str, float], seed: int) -> dict[str, float]:
    """One seed's test metrics: `base` moved by a seed-dependent step (−1, 0, +1 × 0.01; MAE × 0.02)."""
    step = (seed - 1) * 0.01
    return {k: base[k] + (2 * step if k == "mae" else step) for k in METRIC_NAMES}


def metrics(acc2: float, f1: float, acc7: float, acc5: float, mae: float, corr: float) -> dict[str, float]:
    """has0 is 1.5 points below non0, as in the paper's Table 1."""
    return {"acc2_has0": acc2 - 0.015, "acc2_non0": acc2, "f1_has0": f1 - 0.015, "f1_non0": f1, "acc7": acc7,
            "acc5": acc5, "mae": mae, "corr": corr}


def write_eval(run_dir: Path, store: str, base: dict[str, float], seeds=SEEDS,
               checkpoint: str | None = "/runs/pretrain/final", inputs: str = "text, audio, vision") -> Path:
    """An evaluation run: config.json and results.json/results.csv as `kebr eval` writes them (fine-tuned
    from `checkpoint`, a pretraining; None: from the plain encoder, the paper's C2)."""
    run_dir.mkdir(parents=True)
    (run_dir / runs.CONFIG).write_text(json.dumps({"stage": "finetune", **RunConfig().to_dict(), "store": store,
                                                   "seeds": list(seeds), "checkpoint": checkpoint}))
    per_seed = [seed_metrics(base, s) for s in seeds]
    summary = aggregate(per_seed, "sample")
    write_summary(run_dir, {"seeds": list(seeds), "inputs": inputs, **split_summary(summary), "std_ddof": 1, "per_seed": per_seed},
                  summary, "sample", [f"seed_{s}" for s in seeds], per_seed)
    return run_dir


def write_table1_inputs(root: Path) -> tuple[Path, Path, Path]:
    """KEBR on mosi and on mosei (two runs), and a results-table.csv with a baseline (Self-MM) on mosi
    whose run folder is gone (so its std convention is not recorded)."""
    mosi = write_eval(root / "mosi", "/data/mosi.h5", metrics(0.8727, 0.8725, 0.4781, 0.5210, 0.683, 0.819))
    mosei = write_eval(root / "mosei", "/data/mosei.h5", metrics(0.8674, 0.8668, 0.5437, 0.5520, 0.517, 0.799))
    table = root / "results-table.csv"
    baseline = aggregate([seed_metrics(metrics(0.8521, 0.8518, 0.4865, 0.5300, 0.701, 0.774), s) for s in SEEDS])
    results_files.update_results_table(table, [results_files.ResultsRow("Self-MM", "mosi", root / "gone" / "self-mm", SEEDS, baseline)])
    return mosi, mosei, table


TABLE4 = {  # name: (pretrain, tcmf, mcc, metrics or None: not finished)
    "C1": (True, True, True, metrics(0.872, 0.8719, 0.471, 0.50, 0.702, 0.808)),
    "C2": (False, True, True, metrics(0.8674, 0.8673, 0.4676, 0.49, 0.705, 0.803)),
    "C3": (True, False, True, None),
    "C4": (True, True, False, metrics(0.8628, 0.8329, 0.457, 0.48, 0.7069, 0.8074)),
    "C5": (False, False, False, metrics(0.8232, 0.8235, 0.344, 0.40, 0.927, 0.7302)),
}


def write_ablation(root: Path) -> Path:
    """ablation.json with the keys `kebr ablate` writes: C1, C2, C4, C5 finished, C3 not."""
    root.mkdir(parents=True)
    rows = []
    for name, (pretrain, tcmf, mcc, base) in TABLE4.items():
        summary = aggregate([seed_metrics(base, s) for s in SEEDS]) if base else {}
        rows.append({"name": name, "kind": "table4", "pretrain": pretrain, "tcmf": tcmf, "mcc": mcc, "g": 0.2,
                     "mcc_form": "paper", "mcc_align": "tile", "pretrain_dir": None, "eval_dir": f"runs/{name}",
                     "status": "done" if base else "pending", "pretrain_seeds": [0] if pretrain else [], "seeds": SEEDS,
                     **split_summary(summary), "avg_change": None})
    from kebr_core.recipes.ablate import relative_change

    for r in rows:
        r["avg_change"] = relative_change(r["mean"], rows[0]["mean"]) if r["mean"] else None
    (root / runs.ABLATION_JSON).write_text(json.dumps(
        {"dataset": "/data/mosi.h5", "pretrain_store": None, "pretrain_splits": ["train", "valid"], "pretrain_on_test": False,
         "pretrain_seeds": [0], "seeds": SEEDS, "std_ddof": 1, "notes": [], "configurations": rows}, indent=2))
    return root
