"""The multimodal-sentiment metrics, with MMSA's conventions (docs/design.md §7, paper §4.3).

Predictions p and labels y are regression scores on the dataset's scale (`catalog.Dataset`: [-3, 3] for
CMU-MOSI/MOSEI, whose metric set is below; an entry names its range, neutral score and multi-class
accuracies). The literature's tables come from MMSA's `metricsTop.py`; its conventions are copied
exactly, because each of them moves the numbers:

- Acc-2 / F1 "has0": all samples, classes `x >= 0` vs `x < 0` for labels and predictions alike, so a
  prediction of exactly 0 is non-negative.
- Acc-2 / F1 "non0": only samples with `y != 0`, classes `x > 0` vs `x <= 0`, so there a prediction of
  exactly 0 counts as negative.
- F1 is scikit-learn's `average="weighted"` (per-class F1 weighted by the class's label support).
- Acc-7 / Acc-5: `np.round(np.clip(x, -3, 3))` (resp. [-2, 2]) equal for p and y. `np.round` rounds half
  to even: MOSI labels are averages of annotators and 18 test labels sit exactly on x.5, so
  round(2.5) = 2, round(1.5) = 2 and round(-0.5) = -0 (which equals 0).
- MAE: mean |p - y|. Corr: Pearson's r; undefined (NaN, with a warning) when p or y is constant.

Accuracies and F1 are fractions in [0, 1]; `format_table_row` turns them into the paper's Table 1
strings (percentages).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from kebr_core.data.catalog import DEFAULT, Dataset
from kebr_core.errors import KebrError

# The order of the keys of `msa_metrics` on MOSI/MOSEI's scale (and any store given by path), i.e. the order
# of the paper's Table 1 columns: acc2_has0, f1_has0, acc2_non0, f1_non0, acc7, acc5, mae, corr. Another
# dataset's metric set is its `catalog.Dataset.metric_names`.
METRIC_NAMES: tuple[str, ...] = DEFAULT.metric_names

# Table 1 columns: (column, metric keys shown "a/b", printed as a percentage?, decimals). A dataset's
# multi-class accuracies ("acc7", "acc5", an entry's "acc3") are a column each: `_column_of`.
_TABLE_COLUMNS: tuple[tuple[str, tuple[str, ...], bool, int], ...] = (
    ("Acc-2", ("acc2_has0", "acc2_non0"), True, 2),
    ("F1", ("f1_has0", "f1_non0"), True, 2),
    ("MAE", ("mae",), False, 3),
    ("Corr", ("corr",), False, 3),
)
_MULTICLASS = re.compile(r"acc(\d+)")


def _column_of(metric: str) -> tuple[str, tuple[str, ...], bool, int]:
    """The Table 1 column a metric key is shown in: (column, the column's keys, percent?, decimals)."""
    classes = _MULTICLASS.fullmatch(metric)
    if classes:
        return f"Acc-{classes[1]}", (metric,), True, 2
    for column in _TABLE_COLUMNS:
        if metric in column[1]:
            return column
    return metric, (metric,), False, 3


def metric_display(metric: str) -> tuple[str, bool, int]:
    """How tables and figures print one metric key: (label, shown as a percentage?, decimals), e.g.
    "acc2_non0" → ("Acc-2 non0", True, 2), "acc7" → ("Acc-7", True, 2), "mae" → ("MAE", False, 3); an
    unknown key prints as itself."""
    column, keys, percent, decimals = _column_of(metric)
    return (f"{column} {metric.rsplit('_', 1)[1]}" if len(keys) > 1 else column), percent, decimals


def _columns(metrics: Iterable[str]) -> list[tuple[str, tuple[str, ...], bool, int]]:
    """The Table 1 columns a metric set fills (`_column_of` each, once), in Table 1's order (`_column_rank`)."""
    columns = {column[0]: column for column in map(_column_of, metrics)}
    return sorted(columns.values(), key=lambda column: _column_rank(column[0]))


def table_headers(metrics: Iterable[str]) -> dict[str, str]:
    """column → heading of the Table 1 columns that a metric set fills (a dataset's `metric_names`), in Table
    1's order (`_column_rank`); a heading says what a two-number cell holds ("Acc-2 has0/non0")."""
    return {column: f"{column} " + "/".join(k.rsplit("_", 1)[1] for k in keys) if len(keys) > 1 else column
            for column, keys, _, _ in _columns(metrics)}


def _column_rank(column: str) -> tuple[int, int]:
    """Table 1's column order whatever order the keys come in (MMSA's CSV has Acc-5 before Acc-7): Acc-2, F1,
    the multi-class accuracies from the most classes down, MAE, Corr, anything else."""
    if column.startswith("Acc-") and column != "Acc-2":
        return 2, -int(column[4:])
    order = {"Acc-2": 0, "F1": 1, "MAE": 3, "Corr": 4}
    return order.get(column, 5), 0


# The headings of MOSI's and MOSEI's metric set (and any store not made for another dataset).
TABLE_HEADERS = table_headers(METRIC_NAMES)


class UndefinedMetricWarning(RuntimeWarning):
    """A metric is undefined on this input and was reported as NaN."""


class UndefinedCorrelationWarning(UndefinedMetricWarning):
    """Pearson's r is undefined because the predictions or the labels are constant."""


def _as_scores(values: np.ndarray, what: str) -> np.ndarray:
    """Flatten to float64 (N,), rejecting empty or non-finite input."""
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise KebrError(f"The {what} are empty: metrics need at least one sample.")
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise KebrError(
            f"The {what} contain {bad} non-finite value(s) (NaN or inf), so no metric is defined."
        )
    return scores


def _binary_scores(true_positive: np.ndarray, pred_positive: np.ndarray) -> tuple[float, float]:
    """Accuracy and weighted F1 of boolean class vectors (N,), as MMSA calls scikit-learn.

    A class that is never predicted gets F1 0 (weighted by its label support); one that never occurs
    in the labels gets weight 0. Older scikit-learn (< 1.4) warns about such classes although the
    weighted value is the same; zero_division=0 keeps that value and drops the noise.
    """
    accuracy = float(accuracy_score(true_positive, pred_positive))
    f1 = float(f1_score(true_positive, pred_positive, average="weighted", zero_division=0))
    return accuracy, f1


def _multiclass_accuracy(pred: np.ndarray, label: np.ndarray, bound: float) -> float:
    """Acc-7 (bound 3) or Acc-5 (bound 2), or any `Dataset.class_accuracies` entry: share of samples whose
    rounded, clipped scores agree."""
    pred_class = np.round(np.clip(pred, -bound, bound))  # half to even, as MMSA
    label_class = np.round(np.clip(label, -bound, bound))
    return float(np.mean(pred_class == label_class))  # -0.0 == 0.0, so the sign of zero is moot


def pearson(pred: np.ndarray, label: np.ndarray) -> float:
    """Pearson's r of two (N,) float arrays; NaN with `UndefinedCorrelationWarning` if either is constant."""
    constant = [name for name, x in (("predictions", pred), ("labels", label)) if np.ptp(x) == 0]
    if constant:
        warnings.warn(
            f"Pearson correlation is undefined because the {' and the '.join(constant)} are constant; "
            "reporting NaN.",
            UndefinedCorrelationWarning,
            stacklevel=2,
        )
        return math.nan
    return float(np.corrcoef(pred, label)[0, 1])  # as MMSA; corrcoef clips to [-1, 1]


def msa_metrics(pred: np.ndarray, label: np.ndarray, dataset: Dataset = DEFAULT) -> dict[str, float]:
    """All MSA metrics of predictions against labels, with MMSA's conventions (docs/design.md §7).

    Args:
        pred: (N,) predicted sentiment scores (any shape with N elements is flattened).
        label: (N,) gold scores on the dataset's scale.
        dataset: the `catalog.Dataset` whose metric set is computed: Acc-2 splits at its `neutral` score,
            its `class_accuracies` clip at their bounds. Default: MOSI/MOSEI's ([-3, 3], Acc-7 and Acc-5).

    Returns:
        dict with the keys of `dataset.metric_names` (default `METRIC_NAMES`), in that order: "acc2_has0",
        "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5" as fractions in [0, 1]; "mae"; "corr" (Pearson's
        r). "corr" is NaN
        (with `UndefinedCorrelationWarning`) when pred or label is constant; "acc2_non0" and "f1_non0"
        are NaN (with `UndefinedMetricWarning`) when every label is 0.

    Raises:
        KebrError: empty input, non-finite values, or pred and label of different sizes.
    """
    pred = _as_scores(pred, "predictions")
    label = _as_scores(label, "labels")
    if pred.shape != label.shape:
        raise KebrError(f"There are {pred.size} predictions for {label.size} labels; the counts must match.")

    neutral = dataset.neutral
    acc2_has0, f1_has0 = _binary_scores(label >= neutral, pred >= neutral)

    nonzero = label != neutral
    if nonzero.any():
        acc2_non0, f1_non0 = _binary_scores(label[nonzero] > neutral, pred[nonzero] > neutral)
    else:
        warnings.warn(
            "Acc-2 and F1 without zero labels are undefined because every label is 0; reporting NaN.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        acc2_non0 = f1_non0 = math.nan

    return {
        "acc2_has0": acc2_has0,
        "f1_has0": f1_has0,
        "acc2_non0": acc2_non0,
        "f1_non0": f1_non0,
        **{key: _multiclass_accuracy(pred, label, bound) for key, bound in dataset.class_accuracies},
        "mae": float(np.mean(np.abs(pred - label))),
        "corr": pearson(pred, label),
    }


def _format_value(value: float | tuple[float, float], percent: bool, decimals: int) -> str:
    """One number ("85.13") or a mean ± std pair ("85.13±0.42"); NaN prints as "nan"."""
    scale = 100.0 if percent else 1.0
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean * scale:.{decimals}f}±{std * scale:.{decimals}f}"
    return f"{value * scale:.{decimals}f}"


def format_table_row(metrics: Mapping[str, float | tuple[float, float]], spread: bool = True) -> dict[str, str]:
    """The paper's Table 1 cells for one result.

    Args:
        metrics: the output of `msa_metrics` (floats) or of `aggregate` ((mean, std) pairs).
        spread: print pairs as "mean±std"; False prints the mean alone (one seed has no spread).

    Returns:
        {"Acc-2": "has0/non0", "F1": "has0/non0", "Acc-7": ..., "Acc-5": ..., "MAE": ..., "Corr": ...} (the
        columns `table_headers` gives the metric set: an entry's "acc3" is "Acc-3"):
        accuracies and F1 as percentages with 2 decimals, MAE and Corr with 3 decimals, e.g.
        {"Acc-2": "85.13/86.59", ..., "MAE": "0.712", "Corr": "0.791"}; pairs print as "mean±std".
        `TABLE_HEADERS` names the columns for a reader (has0/non0 spelled out).
    """
    row: dict[str, str] = {}
    for column, keys, percent, decimals in _columns(metrics):
        values = [metrics[key] for key in keys]
        if not spread:
            values = [v[0] if isinstance(v, tuple) else v for v in values]
        row[column] = "/".join(_format_value(v, percent, decimals) for v in values)
    return row


# The spread over seeds: "sample" (ddof = 1, kebr's default, the unbiased variance's root, usual for a
# handful of seeds) or "population" (ddof = 0: MMSA's `np.std(values)` in run.py, for comparing with
# numbers made by MMSA). With 5 seeds the population std is √(4/5) ≈ 0.894 of the sample std.
STD_DDOF = {"sample": 1, "population": 0}


def seeds_caption(seeds: Sequence[int], std: str = "sample", pretrain_seeds: Sequence[int] = ()) -> str:
    """What a table of `aggregate` results averages, for its caption: the seeds and the std convention;
    with two or more `pretrain_seeds`, the P × F runs of a nested design.

    >>> seeds_caption([0, 1, 2])
    'mean ± sample std (ddof=1) over 3 seeds (0, 1, 2)'
    >>> seeds_caption([4])
    '1 seed (4), no spread'
    >>> seeds_caption([0, 1], pretrain_seeds=[5, 6])
    'mean ± sample std (ddof=1) over 2 pretraining × 2 fine-tuning seeds (pretraining 5, 6; fine-tuning 0, 1)'
    """
    seeds, pretrain_seeds = list(seeds), list(pretrain_seeds)
    if len(pretrain_seeds) > 1:
        return (f"mean ± {std} std (ddof={STD_DDOF[std]}) over {len(pretrain_seeds)} pretraining × {len(seeds)} "
                f"fine-tuning seeds (pretraining {', '.join(map(str, pretrain_seeds))}; fine-tuning "
                f"{', '.join(map(str, seeds))})")
    if len(seeds) == 1:
        return f"1 seed ({seeds[0]}), no spread"
    return f"mean ± {std} std (ddof={STD_DDOF[std]}) over {len(seeds)} seeds ({', '.join(str(s) for s in seeds)})"


def aggregate(runs: Sequence[Mapping[str, float]], std: str = "sample") -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each metric over runs (e.g. the paper's five seeds, §4.4).

    NaN values (an undefined Corr in one run) are left out of that metric's statistics. The std is the
    sample std (ddof=1) by default, or MMSA's population std (ddof=0) with std="population" (`STD_DDOF`);
    with a single finite value it is 0, and with none both mean and std are NaN.

    Args:
        runs: one `msa_metrics` dict per run; all must have the same keys.
        std: "sample" or "population".

    Returns:
        {metric: (mean, std)} with the keys of the first run, in its order.
    """
    if not runs:
        raise KebrError("There are no runs to aggregate: pass at least one metrics dict.")
    if std not in STD_DDOF:
        raise KebrError(f"The std convention must be one of {', '.join(STD_DDOF)}, not {std!r}.")
    keys = list(runs[0])
    for index, run in enumerate(runs[1:], start=1):
        if set(run) != set(keys):
            raise KebrError(
                f"Run {index} has metrics {sorted(run)} but run 0 has {sorted(keys)}; they must match."
            )
    table = np.array([[float(run[key]) for key in keys] for run in runs], dtype=np.float64)  # (runs, metrics)
    result: dict[str, tuple[float, float]] = {}
    for column, key in enumerate(keys):
        values = table[:, column]
        values = values[~np.isnan(values)]
        if values.size == 0:
            result[key] = (math.nan, math.nan)
        elif values.size == 1:
            result[key] = (float(values[0]), 0.0)
        else:
            result[key] = (float(values.mean()), float(values.std(ddof=STD_DDOF[std])))
    return result


def split_summary(summary: Mapping[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """`aggregate`'s {metric: (mean, std)} as {"mean": {metric: mean}, "std": {metric: std}} (the JSON files' shape)."""
    return {"mean": {k: v[0] for k, v in summary.items()}, "std": {k: v[1] for k, v in summary.items()}}
