"""Benchmark: coverage of 95 % intervals for a paired difference in the nested (pretraining × fine-tuning
seed) design, on data drawn from the two-level model d[p, f] = Δ + u_p + e_pf (docs/design.md §7,
"Paired differences"):

  (a) `kebr_core.stats.paired_difference`: a t over the P pretraining-seed means (what kebr uses);
  (b) a t over all P·F cells as if independent (ignoring the nesting);
  (c) a hierarchical percentile bootstrap: resample pretraining seeds, then fine-tuning seeds within each.

    python bench/paired_coverage.py [--reps 2000] [--boot 1000] [--P 3] [--F 5] [--sigma-p 1] [--sigma-f 0.5]
"""

from __future__ import annotations

import argparse

import numpy as np

from kebr_core.stats import paired_difference, t_interval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--P", type=int, default=3)
    ap.add_argument("--F", type=int, default=5)
    ap.add_argument("--sigma-p", type=float, default=1.0)
    ap.add_argument("--sigma-f", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    delta, P, F = -0.3, args.P, args.F
    d = delta + rng.normal(0, args.sigma_p, size=(args.reps, P, 1)) + rng.normal(0, args.sigma_f, size=(args.reps, P, F))
    covered = {"t over pretraining-seed means (kebr)": 0, "t over all P·F cells (nesting ignored)": 0,
               "hierarchical percentile bootstrap": 0}
    zeros = np.zeros((P, F))
    for r in range(args.reps):
        x = paired_difference(zeros, d[r])
        covered["t over pretraining-seed means (kebr)"] += x.low <= delta <= x.high
        low, high = t_interval(d[r].ravel())
        covered["t over all P·F cells (nesting ignored)"] += low <= delta <= high
        rows = rng.integers(0, P, size=(args.boot, P))
        cols = rng.integers(0, F, size=(args.boot, P, F))
        means = d[r][rows[:, :, None], cols].mean(axis=(1, 2))  # (boot,)
        low, high = np.quantile(means, [0.025, 0.975])
        covered["hierarchical percentile bootstrap"] += low <= delta <= high
    print(f"P = {P} pretraining × F = {F} fine-tuning seeds, σ_P = {args.sigma_p}, σ_F = {args.sigma_f}, "
          f"{args.reps} replications (seed {args.seed}); coverage of the nominal 95 % interval:")
    for name, count in covered.items():
        print(f"  {name:42s} {count / args.reps:.3f}")


if __name__ == "__main__":
    main()
