"""kebr_core.stats: hand-computed values, scipy on known data, and the coverage of the interval on data
drawn from a known two-level model (pretraining effect + fine-tuning noise)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kebr_core.stats import paired_difference, sign_flip_p_value, t_interval, variance_components

T_975_2 = 4.302652729911275  # t quantile, 2 degrees of freedom (tables)
T_975_3 = 3.182446305284263


def test_paired_difference_over_pretraining_seed_means_by_hand():
    a = np.zeros((3, 2))
    b = np.array([[1.0, 3.0], [2.0, 2.0], [4.0, 6.0]])  # pretraining-seed means 2, 2, 5
    d = paired_difference(a, b, metric="mae")
    assert (d.metric, d.n_pretrain, d.n_finetune) == ("mae", 3, 2)
    assert d.mean == pytest.approx(3.0)
    half = T_975_2 * np.sqrt(3.0) / np.sqrt(3.0)  # s = √((1 + 1 + 4) / 2) = √3
    assert (d.low, d.high) == pytest.approx((3.0 - half, 3.0 + half))
    # sign patterns of (2, 2, 5) with |mean| ≥ 3: only all-plus and all-minus, 2 of 8
    assert d.p_value == pytest.approx(0.25)
    assert "pretraining-seed means" in d.method


def test_one_pretraining_seed_uses_the_fine_tuning_pairs_and_says_so():
    d = paired_difference([[0.0, 0.0, 0.0, 0.0]], [[1.0, 2.0, 3.0, 4.0]])
    half = T_975_3 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert d.mean == pytest.approx(2.5)
    assert (d.low, d.high) == pytest.approx((2.5 - half, 2.5 + half))
    assert d.p_value == pytest.approx(2 / 16)
    assert "fine-tuning seeds only" in d.method
    single = paired_difference([[1.0]], [[2.0]])
    assert single.mean == 1.0 and np.isnan(single.low) and np.isnan(single.p_value)


def test_sign_flip_counts_ties_and_is_symmetric():
    # ±1 ±1 ±2 ±3 with |sum| ≥ 5 (observed 1 − 1 + 2 + 3): sums 7, 5, 5, 3, … → 6 of 16 patterns by enumeration
    units = np.array([1.0, -1.0, 2.0, 3.0])
    signs = np.array(np.meshgrid(*[[1, -1]] * 4)).reshape(4, -1).T
    expected = np.mean(np.abs(signs @ units) >= 5)
    assert sign_flip_p_value(units) == pytest.approx(expected)
    assert sign_flip_p_value(-units) == pytest.approx(expected)


def test_against_scipy_permutation_test_and_ttest_rel():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(7, 4))
    b = a + 0.4 + rng.normal(scale=0.5, size=(7, 4))
    d = paired_difference(a, b)
    a_means, b_means = a.mean(axis=1), b.mean(axis=1)
    ref = scipy_stats.ttest_rel(b_means, a_means).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high))
    perm = scipy_stats.permutation_test((b_means - a_means,), lambda x, axis: np.mean(x, axis=axis),
                                        permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
    assert d.p_value == pytest.approx(perm.pvalue)
    assert d.confidence == 0.95 and paired_difference(a, b, confidence=0.8).high < d.high


def test_many_units_use_seeded_random_sign_flips_close_to_the_t_test():
    rng = np.random.default_rng(0)
    units = rng.normal(0.3, 1.0, size=40)
    p = sign_flip_p_value(units, rng_seed=1)
    assert p == sign_flip_p_value(units, rng_seed=1)
    assert p == pytest.approx(scipy_stats.ttest_1samp(units, 0.0).pvalue, abs=0.03)


def test_variance_components_by_hand():
    # row means 2, 5; grand 3.5: MS_between = 3·(1.5² + 1.5²)/1 = 13.5; MS_within = 4/(2·2) = 1
    vc = variance_components([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert vc["ms_between"] == pytest.approx(13.5) and vc["ms_within"] == pytest.approx(1.0)
    assert vc["finetune"] == pytest.approx(1.0)
    assert vc["pretrain"] == pytest.approx(12.5 / 3)
    assert vc["share_pretrain"] == pytest.approx((12.5 / 3) / (12.5 / 3 + 1))
    # between-row spread below the within-row noise: σ²_P truncated at 0
    assert variance_components([[0.0, 2.0], [2.0, 0.0]])["pretrain"] == 0.0
    one = variance_components([[1.0, 2.0, 4.0]])
    assert np.isnan(one["pretrain"]) and one["finetune"] == pytest.approx(np.var([1, 2, 4], ddof=1))


def test_variance_components_recover_a_known_model():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2.0, size=(400, 1)) + rng.normal(0, 0.5, size=(400, 6))  # σ²_P = 4, σ²_F = 0.25
    vc = variance_components(x)
    assert vc["pretrain"] == pytest.approx(4.0, rel=0.15)
    assert vc["finetune"] == pytest.approx(0.25, rel=0.05)


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((2, 3)), np.zeros((3, 2)), "paired grids of one shape"),
    (np.zeros((2, 3)), np.full((2, 3), np.nan), "NaN"),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), "grid"),
])
def test_bad_grids_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(a, b)


def test_interval_covers_the_true_difference_95_percent_and_ignoring_the_nesting_undercovers():
    """d[p, f] = Δ + u_p + e_pf with σ_P = 1, σ_F = 0.5, P = 3, F = 5; 2000 replications."""
    rng = np.random.default_rng(2026)
    reps, n_pretrain, n_finetune, delta = 2000, 3, 5, -0.3
    a = rng.normal(size=(reps, n_pretrain, n_finetune))
    d = delta + rng.normal(0, 1.0, size=(reps, n_pretrain, 1)) + rng.normal(0, 0.5, size=(reps, n_pretrain, n_finetune))
    nested = [paired_difference(a[r], a[r] + d[r]) for r in range(reps)]
    coverage = np.mean([x.low <= delta <= x.high for x in nested])
    assert 0.93 <= coverage <= 0.97
    # the same pairs as if all P·F were independent: a t over 15 pairs, far too narrow
    naive = [t_interval(d[r].ravel()) for r in range(reps)]  # what paired_difference does for P = 1, F = 15
    naive_coverage = np.mean([low <= delta <= high for low, high in naive])
    assert naive_coverage < 0.85
    # and the p-value under a true null rejects at most at its nominal rate (P = 3: never below 0.25)
    assert min(x.p_value for x in nested) == pytest.approx(0.25)
