"""The per-epoch metrics schema: every column of a metrics.csv, named and explained once.

`training.epoch_row` writes the training columns, `recipes.finetune` the validation columns, by these
names; `run_readers`, `analysis` and the CLI's tables read them by name. Adding a per-epoch metric is
one `EpochMetric` here plus the line that computes it (tests/test_epoch_metrics.py checks that a real
run writes exactly the declared columns).

A pretraining run's metrics.csv (`PRETRAIN_COLUMNS`):

    epoch, loss, task_l1, mcc, cos_a, cos_v, abs_dtheta, seconds

A fine-tuning seed's (`FINETUNE_COLUMNS`): the training columns prefixed `train_`, then the validation
metrics of that epoch prefixed `valid_` (keys of `metrics.msa_metrics`):

    epoch, train_loss, …, train_abs_dtheta, seconds, valid_mae, valid_corr, valid_acc2_non0
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochMetric:
    """One per-epoch column: its name (without a stage prefix), what it means, and for a validation
    metric the direction `kebr tune` optimises it in ("minimize" or "maximize")."""

    name: str
    meaning: str
    direction: str = ""


EPOCH = "epoch"  # the first column: the epoch's number, 1-based
SECONDS = "seconds"  # the epoch's wall-clock training time (validation excluded)
TRAIN_PREFIX = "train_"  # a fine-tuning seed's training columns
VALID_PREFIX = "valid_"  # a fine-tuning seed's validation columns

# What one training epoch measures (`training.epoch_row`), in column order. Epoch means over the
# samples; the MCC terms over the samples that have text, audio and vision (MCC's `valid`).
TRAINING: tuple[EpochMetric, ...] = (
    EpochMetric("loss", "L = task_l1 + λ·mcc (Eq. 17), the objective"),
    EpochMetric("task_l1", "mean |pred − y|: the masked word's score when pretraining, the label when fine-tuning (Eq. 16)"),
    EpochMetric("mcc", "L_mcc, the mean f_i (Eq. 10–12)"),
    EpochMetric("cos_a", "mean c_a = cos(X_K, X0a) (Eq. 9)"),
    EpochMetric("cos_v", "mean c_v = cos(X_K, X0v) (Eq. 9)"),
    EpochMetric("abs_dtheta", "mean |θ_a − θ_v| in radians, the angle gap MCC closes (Eq. 12)"),
)

# What a fine-tuning epoch measures on the validation split (keys of `metrics.msa_metrics`), in order.
VALIDATION: tuple[EpochMetric, ...] = (
    EpochMetric("mae", "validation MAE: the metric the best epoch is chosen by", "minimize"),
    EpochMetric("corr", "validation Pearson r", "maximize"),
    EpochMetric("acc2_non0", "validation Acc-2 without zero labels", "maximize"),
)

# The modality balance (`run_readers.balance_table`): the training columns that describe MCC's geometry.
BALANCE: tuple[str, ...] = ("cos_a", "cos_v", "abs_dtheta")

# The per-batch sums an epoch's training metrics are made from (`training.balance_sums`, `training.epoch_row`;
# a mid-epoch checkpoint saves them, `resume.EpochPosition`), in order: Σ|pred − y|, the sample count, Σf_i,
# Σc_a, Σc_v, Σ|θ_a − θ_v| over the samples MCC is defined on, and their count.
BALANCE_SUMS: tuple[str, ...] = ("abs_err", "samples", "mcc", "cos_a", "cos_v", "abs_dtheta", "mcc_samples")

TRAINING_NAMES: tuple[str, ...] = tuple(m.name for m in TRAINING)
VALIDATION_NAMES: tuple[str, ...] = tuple(m.name for m in VALIDATION)


def training_columns(prefix: str = "") -> tuple[str, ...]:
    """The columns one training epoch writes: epoch, the `TRAINING` metrics prefixed, seconds."""
    return (EPOCH, *(prefix + name for name in TRAINING_NAMES), SECONDS)


PRETRAIN_COLUMNS: tuple[str, ...] = training_columns()
FINETUNE_COLUMNS: tuple[str, ...] = (*training_columns(TRAIN_PREFIX), *(VALID_PREFIX + n for n in VALIDATION_NAMES))

def validation_columns(valid: dict[str, float]) -> dict[str, float]:
    """The validation columns of a fine-tuning epoch's row from that epoch's `msa_metrics`."""
    return {VALID_PREFIX + name: valid[name] for name in VALIDATION_NAMES}


# What the figures read back (`run_readers`): the epoch and the training metrics; of a fine-tuning seed
# also the validation MAE. A file written before other columns existed still plots.
PRETRAIN_CURVES: tuple[str, ...] = (EPOCH, *TRAINING_NAMES)
FINETUNE_CURVES: tuple[str, ...] = (EPOCH, *(TRAIN_PREFIX + n for n in TRAINING_NAMES), VALID_PREFIX + "mae")
