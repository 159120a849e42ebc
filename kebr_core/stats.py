"""Paired statistics for comparing two configurations run on the same data and seeds (docs/design.md §7,
"Paired differences").

The design is nested: each configuration is pretrained once per pretraining seed p (P of them), and each
pretraining is fine-tuned once per fine-tuning seed f (F of them), so a test metric is a (P, F) grid.
Two configurations run with the same seeds are paired cell by cell: d[p, f] = b[p, f] − a[p, f].

Model (two-level, balanced):  d[p, f] = Δ + u_p + e_pf,  u_p ~ (0, σ²_P),  e_pf ~ (0, σ²_F).
The P pretraining seeds are the independent units: the F cells of one pretraining share u_p, so treating
the P·F cells as independent understates the spread of the mean (by up to a factor F when σ²_P dominates)
and its interval undercovers (tests/test_stats.py simulates both).

- `paired_difference`: the mean paired difference, a t-interval over the P pretraining-seed means
  d̄_p = mean_f d[p, f] (independent, identically distributed, variance σ²_P + σ²_F / F; exact under
  normality for any σ²_P, σ²_F), and an exact sign-flip permutation p-value over the same means.
  With P = 1 the units are the F fine-tuning pairs: the interval then covers fine-tuning seeds only
  (head initialisation and batch order), not a new pretraining draw, and `method` says so.
  With n units the smallest reachable two-sided p is 2 / 2ⁿ (P = 3: 0.25; P = 5: 0.0625).
- `variance_components`: σ²_P and σ²_F of a (P, F) grid by one-way random-effects ANOVA (method of
  moments): σ²_F = MS_within, σ²_P = max(0, (MS_between − MS_within) / F).

numpy and scipy only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

# Up to this many units every sign pattern is enumerated (2^16 = 65 536); beyond, a seeded random sample.
EXACT_SIGN_FLIP_UNITS = 16
RANDOM_SIGN_FLIPS = 20_000


@dataclass(frozen=True)
class PairedDifference:
    """The difference b − a of one metric over paired runs (module docstring)."""

    metric: str
    mean: float  # mean over all P·F pairs of (b − a) (= the mean of the P pretraining-seed means)
    low: float  # the `confidence` interval of the mean; NaN with a single unit
    high: float
    p_value: float  # two-sided sign-flip permutation p of "no difference"; NaN with a single unit
    method: str  # what the interval is over, in words
    n_pretrain: int
    n_finetune: int
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return {"metric": self.metric, "mean": self.mean, "low": self.low, "high": self.high, "p_value": self.p_value,
                "method": self.method, "n_pretrain": self.n_pretrain, "n_finetune": self.n_finetune,
                "confidence": self.confidence}


def as_grid(x, what: str = "values") -> np.ndarray:
    """x as a finite float64 (P, F) grid (a 1-D array is one pretraining seed: (1, F)), else ValueError."""
    grid = np.asarray(x, dtype=np.float64)
    if grid.ndim == 1:
        grid = grid[None, :]
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{what} must be a non-empty (pretraining seeds, fine-tuning seeds) grid, not shape {grid.shape}.")
    if not np.isfinite(grid).all():
        raise ValueError(f"{what} hold NaN or infinite values.")
    return grid


def sign_flip_p_value(units: np.ndarray, rng_seed: int = 0) -> float:
    """Two-sided p of H0 "the units are symmetric about 0": the share of sign patterns s ∈ {±1}ⁿ with
    |mean(s · units)| ≥ |mean(units)|. Exact (all 2ⁿ patterns) for n ≤ EXACT_SIGN_FLIP_UNITS, else
    RANDOM_SIGN_FLIPS seeded random patterns plus the observed one. units: (n,)."""
    units = np.asarray(units, dtype=np.float64)
    n = len(units)
    if n < 1:
        return float("nan")
    observed = abs(units.mean())
    if n <= EXACT_SIGN_FLIP_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2ⁿ, n)
        extra = 0
    else:
        signs = np.random.default_rng(rng_seed).choice((1.0, -1.0), size=(RANDOM_SIGN_FLIPS, n))
        extra = 1  # the observed pattern counts once (a valid Monte Carlo p)
    flipped = np.abs(signs @ units) / n  # (patterns,)
    # a relative tolerance: patterns equal to the observed mean up to rounding count as "as extreme"
    at_least = int(np.sum(flipped >= observed * (1 - 1e-12) - 1e-15))
    return float((at_least + extra) / (len(signs) + extra))


def t_interval(units: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """mean ± t_{n−1, (1+c)/2} · s / √n of units (n,), s the sample std (ddof = 1); NaN for n < 2."""
    n = len(units)
    if n < 2:
        return float("nan"), float("nan")
    centre = float(np.mean(units))
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * np.std(units, ddof=1) / np.sqrt(n))
    return centre - half, centre + half


def paired_difference(a, b, metric: str = "", confidence: float = 0.95, rng_seed: int = 0) -> PairedDifference:
    """The paired difference b − a of one metric.

    a, b: (P, F) grids (pretraining seed × fine-tuning seed, the same seeds in the same order; a 1-D
    array is P = 1). P ≥ 2: t-interval and sign-flip p over the P pretraining-seed means; P = 1: over
    the F pairs (covering fine-tuning seeds only). A single pair has no interval (NaN low, high, p)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}.")
    a, b = as_grid(a, "a"), as_grid(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired grids of one shape, not {a.shape} and {b.shape}.")
    d = b - a  # (P, F)
    n_pretrain, n_finetune = d.shape
    if n_pretrain >= 2:
        units = d.mean(axis=1)  # (P,) pretraining-seed means
        method = f"t over {n_pretrain} pretraining-seed means (each over {n_finetune} fine-tuning seeds)"
    else:
        units = d[0]  # (F,)
        method = (f"t over {n_finetune} fine-tuning seeds of one pretraining "
                  "(covers fine-tuning seeds only, not pretraining)")
    if len(units) < 2:
        method = "a single pair: no interval"
    low, high = t_interval(units, confidence)
    return PairedDifference(
        metric=metric, mean=float(d.mean()), low=low, high=high,
        p_value=sign_flip_p_value(units, rng_seed) if len(units) >= 2 else float("nan"),
        method=method, n_pretrain=n_pretrain, n_finetune=n_finetune, confidence=confidence,
    )


def variance_components(x) -> dict[str, float]:
    """σ²_P (between pretraining seeds) and σ²_F (between fine-tuning seeds within one pretraining) of a
    (P, F) grid, by one-way random-effects ANOVA (method of moments):

        MS_between = F · Σ_p (x̄_p − x̄)² / (P − 1),   MS_within = Σ_pf (x_pf − x̄_p)² / (P (F − 1)),
        σ²_F = MS_within,   σ²_P = max(0, (MS_between − MS_within) / F).

    Returns {"pretrain", "finetune", "share_pretrain" (σ²_P / (σ²_P + σ²_F)), "ms_between", "ms_within"};
    a component the grid cannot show (σ²_P needs P ≥ 2 and F ≥ 2, σ²_F needs F ≥ 2) is NaN."""
    x = as_grid(x, "x")
    n_pretrain, n_finetune = x.shape
    row_means = x.mean(axis=1)  # (P,)
    nan = float("nan")
    ms_between = float(n_finetune * np.sum((row_means - x.mean()) ** 2) / (n_pretrain - 1)) if n_pretrain > 1 else nan
    ms_within = float(np.sum((x - row_means[:, None]) ** 2) / (n_pretrain * (n_finetune - 1))) if n_finetune > 1 else nan
    finetune = ms_within
    # F = 1: MS_between is σ²_P + σ²_F together, not separable
    pretrain = max(0.0, (ms_between - ms_within) / n_finetune) if n_pretrain > 1 and n_finetune > 1 else nan
    total = pretrain + finetune
    share = pretrain / total if np.isfinite(total) and total > 0 else nan
    return {"pretrain": pretrain, "finetune": finetune, "share_pretrain": share, "ms_between": ms_between,
            "ms_within": ms_within}
