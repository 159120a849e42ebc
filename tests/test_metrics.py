"""Tests of the MSA metrics (docs/design.md §7): hand-computed cases, scikit-learn/scipy cross-checks,
MMSA's conventions (zero ties, half-to-even rounding) and the real MOSI test labels."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import f1_score

from kebr_core.errors import KebrError
from kebr_core.metrics import (
    METRIC_NAMES,
    UndefinedCorrelationWarning,
    UndefinedMetricWarning,
    aggregate,
    format_table_row,
    msa_metrics,
    seeds_caption,
)

from tests.conftest import MOSI_LABELS, MOSI_SAMPLE, needs_full_mosi  # noqa: E402

# Worked by hand (used by several tests):
#   label = [ 1.5, -0.5,  0.0,  2.5, -2.0]
#   pred  = [ 1.0,  0.0, -0.4,  2.6, -1.2]
# has0 classes (>= 0): label [T, F, T, T, F], pred [T, T, F, T, F] -> samples 0, 3, 4 right: acc 3/5.
#   class T: TP 2 (0, 3), FP 1 (1), FN 1 (2) -> P = R = 2/3, F1 2/3, support 3
#   class F: TP 1 (4), FP 1 (2), FN 1 (1)    -> P = R = 1/2, F1 1/2, support 2
#   weighted F1 = (3 * 2/3 + 2 * 1/2) / 5 = 3/5
# non0 (drop sample 2, label 0), classes (> 0): label [T, F, T, F], pred [T, F, T, F]
#   (pred 0.0 of sample 1 is negative here, though non-negative in has0) -> acc 1, F1 1.
# Acc-7: round(clip(., -3, 3)): label [2, -0, 0, 2, -2] (1.5 -> 2, 2.5 -> 2, half to even),
#   pred [1, 0, -0, 3, -1] -> samples 1, 2 agree (-0 == 0): 2/5.
# Acc-5: clip to [-2, 2] first: label [2, -0, 0, 2, -2], pred [1, 0, -0, 2, -1] -> samples 1, 2, 3: 3/5.
# MAE: (0.5 + 0.5 + 0.4 + 0.1 + 0.8) / 5 = 2.3 / 5 = 0.46.
# Corr: means 0.3 (label) and 0.4 (pred); centred label [1.2, -0.8, -0.3, 2.2, -2.3],
#   centred pred [0.6, -0.4, -0.8, 2.2, -1.6]; sum of products 9.8, sums of squares 12.3 and 8.56
#   -> r = 9.8 / sqrt(12.3 * 8.56).
HAND_LABEL = np.array([1.5, -0.5, 0.0, 2.5, -2.0])
HAND_PRED = np.array([1.0, 0.0, -0.4, 2.6, -1.2])
HAND_EXPECTED = {
    "acc2_has0": 3 / 5,
    "f1_has0": 3 / 5,
    "acc2_non0": 1.0,
    "f1_non0": 1.0,
    "acc7": 2 / 5,
    "acc5": 3 / 5,
    "mae": 0.46,
    "corr": 9.8 / math.sqrt(12.3 * 8.56),
}


def _mosi_split(source: Path, mode: str) -> np.ndarray:
    with source.open(newline="") as handle:
        return np.array([float(row["label"]) for row in csv.DictReader(handle) if row["mode"] == mode])


def test_hand_computed_example() -> None:
    metrics = msa_metrics(HAND_PRED, HAND_LABEL)
    assert list(metrics) == list(METRIC_NAMES)
    for name, expected in HAND_EXPECTED.items():
        assert metrics[name] == pytest.approx(expected, abs=1e-12), name
    assert all(isinstance(value, float) for value in metrics.values())


def test_accepts_float32_column_and_tensor() -> None:
    # Model heads output (B, 1) float32 tensors; the metrics flatten them and compute in float64.
    pred = torch.tensor(HAND_PRED, dtype=torch.float32).unsqueeze(1)
    metrics = msa_metrics(pred, HAND_LABEL.astype(np.float32))
    for name, expected in HAND_EXPECTED.items():
        assert metrics[name] == pytest.approx(expected, abs=1e-6), name


def test_zero_ties_has0_vs_non0() -> None:
    # label 0 / pred 0: has0 puts both in the non-negative class (right); non0 drops the sample.
    # label 1 / pred 0: has0 calls both non-negative (right); non0 calls pred 0 negative (wrong).
    # label -1 / pred 0: has0 calls pred 0 non-negative (wrong); non0 calls it negative (right).
    label = np.array([0.0, 1.0, -1.0, 2.0])
    pred = np.array([0.0, 0.0, 0.0, 2.0])
    metrics = msa_metrics(pred, label)
    assert metrics["acc2_has0"] == pytest.approx(3 / 4)  # samples 0, 1, 3
    assert metrics["acc2_non0"] == pytest.approx(2 / 3)  # of samples 1, 2, 3: 2 and 3
    # non0 F1 by hand: truth [T, F, T], pred [F, F, T]; class T: P 1, R 1/2, F1 2/3 (support 2);
    # class F: P 1/2, R 1, F1 2/3 (support 1) -> weighted 2/3.
    assert metrics["f1_non0"] == pytest.approx(2 / 3)
    # has0 F1 by hand: truth [T, T, F, T], pred [T, T, T, T]; class T: P 3/4, R 1, F1 6/7 (support 3);
    # class F never predicted: F1 0 (support 1) -> weighted 3/4 * 6/7 = 9/14.
    assert metrics["f1_has0"] == pytest.approx(9 / 14)


def test_half_to_even_rounding() -> None:
    # MOSI's x.5 labels: numpy rounds half to even, so 2.5 -> 2, -0.5 -> -0, 1.5 -> 2, 0.5 -> 0,
    # -2.5 -> -2, -1.5 -> -2. Predictions at those even integers all agree ...
    label = np.array([2.5, -0.5, 1.5, 0.5, -2.5, -1.5])
    even = np.array([2.0, 0.0, 2.0, 0.0, -2.0, -2.0])
    assert msa_metrics(even, label)["acc7"] == 1.0
    # ... and the classes that round-half-away-from-zero would give all disagree (1.5 is the one
    # half where both rules give 2, so it gets 1.0 here to stay a mismatch).
    away = np.array([3.0, -1.0, 1.0, 1.0, -3.0, -1.0])
    assert msa_metrics(away, label)["acc7"] == 0.0


def test_acc5_clips_before_rounding() -> None:
    # label 3.0 and pred 2.2: Acc-7 classes 3 vs 2 (wrong); Acc-5 clips both to 2 (right).
    # label -2.6 and pred -1.6: Acc-7 -3 vs -2 (wrong); Acc-5 -2 vs -2 (right).
    # label 0.4 and pred -0.4: -0 == 0 in both.
    label = np.array([3.0, -2.6, 0.4])
    pred = np.array([2.2, -1.6, -0.4])
    metrics = msa_metrics(pred, label)
    assert metrics["acc7"] == pytest.approx(1 / 3)
    assert metrics["acc5"] == 1.0


def test_all_positive_labels() -> None:
    # has0 truth all non-negative; pred -0.1 is the only negative -> acc 3/4. Weighted F1: class T
    # P 1, R 3/4, F1 6/7, support 4; class F has no support so weight 0 -> 6/7. All labels != 0, so
    # non0 is the same here.
    label = np.array([0.5, 1.0, 2.0, 3.0])
    pred = np.array([0.2, -0.1, 1.0, 2.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a degenerate class is a result, not a warning
        metrics = msa_metrics(pred, label)
    assert metrics["acc2_has0"] == metrics["acc2_non0"] == pytest.approx(3 / 4)
    assert metrics["f1_has0"] == metrics["f1_non0"] == pytest.approx(6 / 7)
    assert f1_score(label >= 0, pred >= 0, average="weighted") == pytest.approx(6 / 7)


def test_matches_sklearn_and_scipy_on_random_scores() -> None:
    rng = np.random.default_rng(7)
    # Labels on MOSI's grid of annotator means (multiples of 0.2 and halves), with zeros; predictions
    # continuous but with exact zeros planted so the zero conventions are exercised.
    fifths = np.round(rng.uniform(-3, 3, 150) * 5) / 5
    halves = np.round(rng.uniform(-3, 3, 50) * 2) / 2
    label = np.concatenate([fifths, halves])
    label[:10] = 0.0
    pred = np.clip(label + rng.normal(0, 0.8, label.size), -3.5, 3.5)
    pred[5:15] = 0.0
    metrics = msa_metrics(pred, label)

    assert metrics["acc2_has0"] == pytest.approx(np.mean((pred >= 0) == (label >= 0)))
    assert metrics["f1_has0"] == pytest.approx(f1_score(label >= 0, pred >= 0, average="weighted"))
    keep = label != 0
    assert metrics["acc2_non0"] == pytest.approx(np.mean((pred[keep] > 0) == (label[keep] > 0)))
    assert metrics["f1_non0"] == pytest.approx(f1_score(label[keep] > 0, pred[keep] > 0, average="weighted"))
    for name, bound in (("acc7", 3), ("acc5", 2)):
        # Python's built-in round is half-to-even too, so it is an independent check of np.round here.
        clipped = zip(np.clip(pred, -bound, bound).tolist(), np.clip(label, -bound, bound).tolist())
        agree = [round(p) == round(y) for p, y in clipped]
        assert metrics[name] == pytest.approx(sum(agree) / len(agree)), name
    assert metrics["mae"] == pytest.approx(sum(abs(p - y) for p, y in zip(pred, label)) / label.size)
    assert metrics["corr"] == pytest.approx(pearsonr(pred, label).statistic)


def test_constant_predictions_give_nan_corr_with_warning() -> None:
    label = np.array([1.0, -1.0, 2.0])
    with pytest.warns(UndefinedCorrelationWarning, match="predictions"):
        metrics = msa_metrics(np.full(3, 0.5), label)
    assert math.isnan(metrics["corr"])
    assert metrics["mae"] == pytest.approx((0.5 + 1.5 + 1.5) / 3)
    assert metrics["acc2_has0"] == pytest.approx(2 / 3)
    assert issubclass(UndefinedCorrelationWarning, RuntimeWarning)


def test_constant_labels_and_single_sample() -> None:
    with pytest.warns(UndefinedCorrelationWarning, match="labels"):
        metrics = msa_metrics(np.array([0.1, 0.9]), np.array([1.0, 1.0]))
    assert math.isnan(metrics["corr"]) and metrics["acc2_non0"] == 1.0
    with pytest.warns(UndefinedCorrelationWarning):
        single = msa_metrics(np.array([-1.0]), np.array([-1.2]))
    assert single["acc7"] == 1.0 and single["mae"] == pytest.approx(0.2)


def test_all_zero_labels_give_nan_non0() -> None:
    with pytest.warns(UndefinedMetricWarning) as record:
        metrics = msa_metrics(np.array([0.3, -0.2, 0.0]), np.zeros(3))
    assert math.isnan(metrics["acc2_non0"]) and math.isnan(metrics["f1_non0"])
    assert metrics["acc2_has0"] == pytest.approx(2 / 3)  # 0.3 and 0.0 are non-negative
    assert metrics["acc7"] == 1.0  # all round to (-)0
    messages = " ".join(str(w.message) for w in record)
    assert "every label is 0" in messages and "Pearson" in messages  # the labels are constant too


@pytest.mark.parametrize(
    ("pred", "label", "message"),
    [
        (np.array([]), np.array([]), "empty"),
        (np.array([1.0, 2.0]), np.array([1.0]), "2 predictions for 1 labels"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "predictions contain 1 non-finite"),
        (np.array([1.0, 2.0]), np.array([np.inf, 2.0]), "labels contain 1 non-finite"),
    ],
)
def test_bad_input_raises_kebr_error(pred: np.ndarray, label: np.ndarray, message: str) -> None:
    with pytest.raises(KebrError, match=message):
        msa_metrics(pred, label)


def test_format_table_row() -> None:
    row = format_table_row(msa_metrics(HAND_PRED, HAND_LABEL))
    # Corr 9.8 / sqrt(105.288) = 0.95506... -> "0.955"
    assert row == {
        "Acc-2": "60.00/100.00",
        "F1": "60.00/100.00",
        "Acc-7": "40.00",
        "Acc-5": "60.00",
        "MAE": "0.460",
        "Corr": "0.955",
    }
    metrics = dict.fromkeys(METRIC_NAMES, 0.85126)  # 85.126 -> "85.13", 0.85126 -> "0.851"
    metrics["corr"] = math.nan
    row = format_table_row(metrics)
    assert row["Acc-2"] == "85.13/85.13" and row["Acc-7"] == "85.13"
    assert row["MAE"] == "0.851" and row["Corr"] == "nan"


def test_aggregate_mean_and_sample_std_ignoring_nan() -> None:
    runs = [
        {"acc7": 0.4, "corr": 0.5},
        {"acc7": 0.6, "corr": math.nan},
        {"acc7": 0.5, "corr": 0.7},
    ]
    summary = aggregate(runs)
    assert list(summary) == ["acc7", "corr"]
    # acc7: mean 0.5, deviations 0.1, 0.1, 0 -> sample variance 0.02 / 2 = 0.01 -> std 0.1
    assert summary["acc7"] == pytest.approx((0.5, 0.1))
    # corr (NaN left out): mean 0.6, deviations 0.1, 0.1 -> sample variance 0.02 / 1 -> std sqrt(0.02)
    assert summary["corr"] == pytest.approx((0.6, math.sqrt(0.02)))

    assert aggregate([{"mae": 0.7}]) == {"mae": (0.7, 0.0)}
    only_nan = aggregate([{"corr": math.nan}, {"corr": math.nan}])["corr"]
    assert math.isnan(only_nan[0]) and math.isnan(only_nan[1])


def test_aggregate_feeds_format_table_row() -> None:
    runs = [msa_metrics(HAND_PRED, HAND_LABEL), msa_metrics(HAND_LABEL, HAND_LABEL)]
    row = format_table_row(aggregate(runs))
    # acc7 0.4 and 1.0 -> mean 70%, sample std |0.4 - 1.0| / sqrt(2) = 42.43%; MAE 0.46 and 0 -> 0.230±0.325
    assert row["Acc-7"] == "70.00±42.43"
    assert row["MAE"] == "0.230±0.325"
    assert row["Acc-2"] == "80.00±28.28/100.00±0.00"


def test_aggregate_population_std_is_mmsas() -> None:
    """std="population" is MMSA's np.std (ddof = 0): deviations 0.1, 0.1, 0 → variance 0.02 / 3."""
    runs = [{"acc7": 0.4}, {"acc7": 0.6}, {"acc7": 0.5}]
    assert aggregate(runs, std="population")["acc7"] == pytest.approx((0.5, math.sqrt(0.02 / 3)))
    assert aggregate(runs, std="sample")["acc7"] == pytest.approx((0.5, 0.1))
    assert aggregate([{"mae": 0.7}], std="population") == {"mae": (0.7, 0.0)}
    with pytest.raises(KebrError, match="std convention"):
        aggregate(runs, std="ddof1")


def test_aggregate_rejects_bad_runs() -> None:
    with pytest.raises(KebrError, match="no runs"):
        aggregate([])
    with pytest.raises(KebrError, match="Run 1"):
        aggregate([{"mae": 0.5}, {"corr": 0.5}])


@pytest.mark.parametrize("source, sizes", [
    (MOSI_SAMPLE, (174, 108)),
    pytest.param(MOSI_LABELS, (1284, 686), marks=needs_full_mosi),
], ids=["sample", "full"])
def test_mosi_test_split(source: Path, sizes: tuple[int, int]) -> None:
    train, test = _mosi_split(source, "train"), _mosi_split(source, "test")
    assert (train.size, test.size) == sizes
    # docs/design.md §7: 18 test labels sit exactly on x.5 (where the rounding rule matters); the sample keeps them all.
    assert sum(1 for y in test.tolist() if abs(y) % 1 == 0.5) == 18

    # Perfect predictions.
    perfect = msa_metrics(test, test)
    assert all(perfect[name] == 1.0 for name in METRIC_NAMES if name not in ("mae", "corr"))
    assert perfect["mae"] == 0.0 and perfect["corr"] == pytest.approx(1.0)

    # Predicting the train mean for everything: a constant, so Corr is NaN with a warning.
    train_mean = math.fsum(train.tolist()) / len(train)
    with pytest.warns(UndefinedCorrelationWarning):
        baseline = msa_metrics(np.full(test.size, train_mean), test)
    assert math.isnan(baseline["corr"])
    assert baseline["mae"] == pytest.approx(math.fsum(abs(y - train_mean) for y in test.tolist()) / len(test))
    sign_class = train_mean >= 0  # every prediction falls in this has0 class
    assert baseline["acc2_has0"] == pytest.approx(sum((y >= 0) == sign_class for y in test.tolist()) / test.size)

    # Nudging every label up by 1e-6 flips exactly the halves that round down to even (0.5 -> 0,
    # 2.5 -> 2, -1.5 -> -2); the other halves and everything else keep their Acc-7 class.
    nudged = msa_metrics(test + 1e-6, test)
    flipped = sum(1 for y in test.tolist() if y in (0.5, 2.5, -1.5))
    assert 0 < flipped < 18
    assert nudged["acc7"] == pytest.approx(1 - flipped / test.size)


def test_format_table_row_without_spread_prints_the_mean_only() -> None:
    row = format_table_row({k: (0.5, 0.25) for k in METRIC_NAMES}, spread=False)
    assert row["Acc-2"] == "50.00/50.00" and row["MAE"] == "0.500"


def test_seeds_caption_names_seeds_and_std_convention() -> None:
    assert seeds_caption([0, 1, 2]) == "mean ± sample std (ddof=1) over 3 seeds (0, 1, 2)"
    assert seeds_caption([3]) == "1 seed (3), no spread"
