"""Benchmark: `kebr tune`'s TPE against random search (MMSA's tune mode) over the same budget, and the
epochs pruning saves, on a small synthetic store (`kebr_core.data.synth`).

The store is built so the answer can be checked: every label comes from the audio and vision latents
(text strength 0), so g and λ (mcc.g, mcc.weight), which set how the fused state is pulled towards
those streams, are what the search can move. The optimum on this store is measured, not assumed: a
dense grid over (g, λ) with every trial run to the end (no pruning) gives the best validation MAE
reachable in the space (the reference). Then TPE and random search each get the same budget of trials
(several sampler seeds), with the MedianPruner on, and we report how far each one's best validation MAE
and (g, λ) are from the grid's, and how many fine-tuning epochs pruning did not run.

Everything runs on the CPU with one thread, the tiny random BERT of the tests and a frozen encoder, so
it takes minutes; the numbers say how the search behaves, not what KEBR reaches on real data.

    python bench/tune.py [--trials 24] [--repeats 3] [--grid 5] [--epochs 4] [--json out.json]
    (results: bench/results/tune.txt)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import cpu_name  # noqa: E402
from kebr_core.config import RunConfig  # noqa: E402
from kebr_core.data.synth import SynthConfig, generate_synth  # noqa: E402
from kebr_core.recipes.tune import TuneOptions, tune  # noqa: E402
from kebr_core.search_space import parse_space  # noqa: E402

TINY_BERT = "random-bert:hidden=32,layers=2,heads=2"


def base_config(epochs: int) -> RunConfig:
    cfg = RunConfig.for_stage("finetune")
    cfg.model.text_model, cfg.model.layers = TINY_BERT, 1
    cfg.train.epochs, cfg.train.batch_size, cfg.train.unfreeze, cfg.train.seeds = epochs, 16, False, [0]
    cfg.train.lr, cfg.train.lr_fusion, cfg.train.device = 3e-3, 3e-3, "cpu"
    return cfg.validate()


def run(store: Path, folder: Path, space_entries: dict, options: TuneOptions, epochs: int) -> dict:
    t0 = time.perf_counter()
    result = tune(store, folder, base_config(epochs), parse_space(space_entries, "bench"), options, finalize=False)
    best = result.best
    return {"value": best.value, "params": best.params, "finished": result.finished,
            "pruned": sum(r.state == "PRUNED" for r in result.trials),
            "epochs_run": sum(r.epochs_run or 0 for r in result.trials), "epochs_saved": result.pruned_epochs_saved,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24, help="budget of each TPE / random search (TPE's first 10 are random)")
    ap.add_argument("--repeats", type=int, default=3, help="sampler seeds per method")
    ap.add_argument("--grid", type=int, default=5, help="grid points per parameter for the reference")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "synth.h5"
        generate_synth(store, SynthConfig(n=args.samples, audio_dim=8, vision_dim=8, text_strength=0.0,
                                          audio_strength=1.0, vision_strength=1.0, audio_len=(10, 40),
                                          vision_len=(5, 15), seed=0))
        step_g, step_w = 0.8 / (args.grid - 1), 2.0 / (args.grid - 1)
        grid_space = {"mcc.g": {"low": -0.4, "high": 0.4, "step": step_g}, "mcc.weight": {"low": 0.0, "high": 2.0, "step": step_w}}
        reference = run(store, tmp / "grid", grid_space, TuneOptions(trials=args.grid ** 2, sampler="grid", prune=False,
                                                                     sampler_seed=0), args.epochs)
        space = {"mcc.g": {"low": -0.4, "high": 0.4}, "mcc.weight": {"low": 0.0, "high": 2.0}}
        methods: dict[str, list[dict]] = {"tpe": [], "random": []}
        for method in methods:
            for rep in range(args.repeats):
                methods[method].append(run(store, tmp / f"{method}-{rep}", space,
                                           TuneOptions(trials=args.trials, sampler=method, sampler_seed=rep), args.epochs))

    ref_value = reference["value"]
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores (shared), torch threads 1; store: synth n={args.samples}, "
          f"{args.epochs} epochs per trial")
    print(f"reference: {args.grid}x{args.grid} grid over (g, λ), no pruning: best valid MAE {ref_value:.4f} at "
          f"g={reference['params']['mcc.g']:.2f}, λ={reference['params']['mcc.weight']:.2f} "
          f"({reference['epochs_run']} epochs, {reference['seconds']:.0f} s)")
    g_matters = reference["params"]["mcc.weight"] > 0  # at λ = 0 the MCC term, and so g, has no effect
    print(f"\n| method | trials | best valid MAE (mean over {args.repeats} seeds) | gap to grid best | "
          "|Δg| | |Δλ| | pruned trials | epochs run | epochs saved by pruning |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = {"reference": reference, "methods": {}}
    for method, results in methods.items():
        values = [r["value"] for r in results]
        dg = [abs(r["params"]["mcc.g"] - reference["params"]["mcc.g"]) for r in results]
        dw = [abs(r["params"]["mcc.weight"] - reference["params"]["mcc.weight"]) for r in results]
        row = {"best_mae": statistics.mean(values), "gap": statistics.mean(v - ref_value for v in values),
               "abs_dg": statistics.mean(dg), "abs_dlambda": statistics.mean(dw),
               "pruned": statistics.mean(r["pruned"] for r in results),
               "epochs_run": statistics.mean(r["epochs_run"] for r in results),
               "epochs_saved": statistics.mean(r["epochs_saved"] for r in results), "runs": results}
        summary["methods"][method] = row
        dg_text = f"{row['abs_dg']:.2f}" if g_matters else "– (λ = 0)"
        print(f"| {method} | {args.trials} | {row['best_mae']:.4f} | {row['gap']:+.4f} | {dg_text} | "
              f"{row['abs_dlambda']:.2f} | {row['pruned']:.1f} | {row['epochs_run']:.1f} of {args.trials * args.epochs} | "
              f"{row['epochs_saved']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
