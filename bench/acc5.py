"""Benchmark: why kebr's Acc-5 trails the authors' fine-tuning recipe at equal MAE (issue 25, part 6).

Data: the real CMU-MOSI `label.csv` (transcripts, labels, splits) with seeded random audio (33-d) and
vision (709-d) of MOSI-like lengths (`bench/train_step.py`'s `build_store`): the non-verbal streams
carry nothing, so every difference is in how the text is fitted. No pretraining, the embedded
MiniLM, one seed, the same epochs for every recipe; the epoch is chosen on validation MAE; test
evaluated once. Recipes (`RECIPES`):

  kebr       `kebr eval`'s defaults: head 128, dropout 0.1, FFN mlp, TCMF/encoder 5e-6, head 1e-4
  authors    `--preset authors`' fine-tuning stage (attention width 256 + projection, dropout 0.5,
             head 256, single-Linear FFN, texts ≤ 39 pieces, reference MCC form, g 0.4, λ 1, their
             alignment), the same learning rates
  kebr-no-mcc         kebr's defaults with λ = 0
  kebr-authors-head   kebr's defaults with the authors' dropout 0.5 and 256-unit head
(`--recipes` picks; the default runs the first two.)

Then, from each run's test predictions (seed-S/predictions.csv), what moves Acc-5: the spread of the
predictions against the labels' (std ratio; the least-squares slope of the label on the prediction,
> 1 when predictions are shrunk towards 0), the share of predictions inside (−0.5, 0.5) (class 0 of
Acc-5), the median error on negative and on positive labels, the Acc-5 confusion, and for the Acc-5
errors whether the predicted class is nearer to 0 than the label's (shrinkage) or farther.
Diagnostics, not results (fitted on the TEST split itself): Acc-5 and MAE after stretching the
predictions by that slope, and after a monotone recalibration (the i-th smallest prediction gets the
i-th smallest label: the ranking kept, the calibration made perfect).

    KEBR_MOSI_LABELS=…/mosi/label.csv python bench/acc5.py --threads 1 [--epochs 6] [--recipes kebr authors]
    python bench/acc5.py --analyse-only RUN_DIR [RUN_DIR …]     # the analysis of finished runs

Writes bench/results/acc5.json and prints one table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_label_csv_option, check_label_csv, cpu_name  # noqa: E402
from train_step import build_store, read_label_csv  # noqa: E402
from kebr_core.config import RunConfig  # noqa: E402
from kebr_core.metrics import msa_metrics  # noqa: E402
from kebr_core.recipes.finetune import finetune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "acc5.json"
# name → (preset of the fine-tuning stage, settings over it)
RECIPES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "kebr": (None, {}),
    "authors": ("authors", {}),
    "kebr-no-mcc": (None, {"mcc.weight": 0.0}),  # is it the MCC term (λ = 1 on noise streams)?
    "kebr-authors-head": (None, {"model.dropout": 0.5, "model.head_hidden": 256}),  # or the head and dropout?
}


def recipe_config(name: str, epochs: int) -> RunConfig:
    preset, settings = RECIPES[name]
    cfg = RunConfig.for_stage("finetune", preset=preset)
    cfg.train.epochs, cfg.train.device, cfg.train.bf16 = epochs, "cpu", False
    return cfg.set_values(settings)


def acc5_classes(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -2, 2))  # MMSA's Acc-5 classes (round half to even)


def analyse(pred: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """How the predictions' spread moves Acc-5 (see the module docstring)."""
    metrics = msa_metrics(pred, label)
    slope = float(np.polyfit(pred, label, 1)[0])  # label ≈ slope·pred + b: > 1 means shrunk predictions
    p_cls, y_cls = acc5_classes(pred), acc5_classes(label)
    wrong = p_cls != y_cls
    toward_zero = wrong & (np.abs(p_cls) < np.abs(y_cls))
    stretched = pred * slope
    stretched_metrics = msa_metrics(stretched, label)
    # monotone recalibration: the i-th smallest prediction gets the i-th smallest label (fitted on test:
    # a diagnostic of how much of Acc-5 is calibration, the ranking kept)
    order = np.argsort(pred, kind="stable")
    mapped = np.empty_like(pred)
    mapped[order] = np.sort(label)
    mapped_metrics = msa_metrics(mapped, label)
    neg, pos = label < 0, label > 0
    return {
        "acc5": metrics["acc5"], "mae": metrics["mae"], "corr": metrics["corr"], "acc2_non0": metrics["acc2_non0"],
        "std_pred": float(pred.std()), "std_label": float(label.std()), "std_ratio": float(pred.std() / label.std()),
        "slope_label_on_pred": slope,
        "share_pred_class0": float(np.mean(p_cls == 0)), "share_label_class0": float(np.mean(y_cls == 0)),
        "acc5_errors": int(wrong.sum()), "errors_toward_zero": int(toward_zero.sum()),
        "errors_away_from_zero": int((wrong & (np.abs(p_cls) > np.abs(y_cls))).sum()),
        "errors_across_zero": int((wrong & (np.sign(p_cls) * np.sign(y_cls) < 0)).sum()),
        "diagnostic_stretched_on_test": {"acc5": stretched_metrics["acc5"], "mae": stretched_metrics["mae"]},
        "diagnostic_quantile_mapped_on_test": {"acc5": mapped_metrics["acc5"], "mae": mapped_metrics["mae"]},
        "median_error_negative_labels": float(np.median(pred[neg] - label[neg])),
        "median_error_positive_labels": float(np.median(pred[pos] - label[pos])),
        "confusion_acc5": {int(k): {int(j): int(((y_cls == k) & (p_cls == j)).sum()) for j in range(-2, 3)}
                           for k in range(-2, 3)},
    }


def read_predictions(seed_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with (seed_dir / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = rows[0].keys()
    pred_key = next(k for k in ("prediction", "pred") if k in keys)
    return np.array([float(r[pred_key]) for r in rows]), np.array([float(r["label"]) for r in rows])


def analyse_run(run_dir: Path) -> dict[str, Any]:
    seeds = sorted(p for p in run_dir.glob("seed-*") if (p / "predictions.csv").is_file())
    per_seed = {p.name: analyse(*read_predictions(p)) for p in seeds}
    with (seeds[0] / "metrics.csv").open() as f:
        epochs = [{k: float(v) for k, v in r.items() if k in ("epoch", "valid_mae", "train_task_l1")} for r in csv.DictReader(f)]
    return {"per_seed": per_seed, "epochs": epochs}


def print_table(results: dict[str, dict]) -> None:
    cols = ["acc5", "mae", "corr", "acc2_non0", "std_ratio", "slope_label_on_pred", "median_error_negative_labels",
            "median_error_positive_labels", "errors_toward_zero", "errors_away_from_zero", "acc5_errors"]
    print("| recipe | " + " | ".join(cols) + " | quantile-mapped on test: Acc-5 / MAE |")
    print("|---|" + "---:|" * (len(cols) + 1))
    for name, res in results.items():
        for seed, a in res["per_seed"].items():
            cells = [f"{a[c]:.3f}" if isinstance(a[c], float) else str(a[c]) for c in cols]
            d = a["diagnostic_quantile_mapped_on_test"]
            print(f"| {name} {seed} | " + " | ".join(cells) + f" | {d['acc5']:.3f} / {d['mae']:.3f} |")
    label_class0 = next(iter(next(iter(results.values()))["per_seed"].values()))["share_label_class0"]
    print(f"labels in Acc-5 class 0 (−0.5 < y < 0.5): {label_class0:.3f} of the test split")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_label_csv_option(parser)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipes", nargs="+", default=["kebr", "authors"], choices=list(RECIPES))
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--analyse-only", type=Path, nargs="+", default=None, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.analyse_only:  # several invocations' runs (e.g. --keep DIR, then other --recipes) in one file
        results = {p.name: analyse_run(p) for p in args.analyse_only}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "results": results}, indent=2))
        print_table(results)
        return
    check_label_csv(parser, args.label_csv)
    torch.set_num_threads(args.threads)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_dir:
        root = args.keep or Path(tmp_dir)
        root.mkdir(parents=True, exist_ok=True)
        store = root / "mosi-noise.h5"
        if not store.exists():
            build_store(store, read_label_csv(args.label_csv), d_vision=709, seed=0)
        results, seconds = {}, {}
        for name in args.recipes:
            t0 = time.perf_counter()
            finetune(store, root / name, recipe_config(name, args.epochs), seeds=[args.seed],
                     progress=lambda stage, done, total, info: print(f"  {name} {stage} {done}/{total}", flush=True)
                     if stage.startswith("seed ") else None)
            seconds[name] = time.perf_counter() - t0
            results[name] = analyse_run(root / name)
    payload = {"machine": machine, "command": "python " + " ".join(sys.argv), "epochs": args.epochs, "seed": args.seed,
               "load_average_start_end": [load_start, os.getloadavg()[0]], "seconds": seconds, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print_table(results)
    print(f"machine: {machine}; seconds {seconds}; results: {args.out}")


if __name__ == "__main__":
    main()
