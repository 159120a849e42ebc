"""The datasets kebr knows by name, as data (MMSA keeps them the same way: `datasetCommonParams`, and one
metric function per dataset in `metricsTop.py`).

Each `Dataset` entry says what `--dataset NAME` means: its label range (what `labels.check_labels`
counts and clips, `summary.label_histogram` bins), its metric set (which multi-class accuracies
`metrics.msa_metrics` reports, and where a score turns positive), and the file names `registry.
resolve_dataset` looks for under the data directory (or the function that generates it). Adding a
dataset with MMSA's files (CH-SIMS, say) is one entry here; a new kind of input is an importer in
`importers.IMPORTERS`.

CMU-MOSI and CMU-MOSEI are scored on [-3, 3]: Acc-7 on round(clip(y, -3, 3)), Acc-5 on
round(clip(y, -2, 2)), Acc-2 at 0 (`metrics` module docstring). `DEFAULT` (mosi) is the scale of any
store not made for a dataset (a store records the entry it was made for: `dataset_of`).

A leaf module: plain data, importing nothing of kebr but `errors`, so that `labels`, `summary` and `metrics`
can all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from kebr_core.errors import KebrError


@dataclass(frozen=True)
class Dataset:
    """One dataset kebr knows by name.

    label_range: (low, high), the sentiment scale; a finite label outside it is counted (and clipped on
    request). neutral: the score at which Acc-2 splits negative from non-negative (has0: x >= neutral;
    non0: x > neutral over labels != neutral). class_accuracies: the multi-class accuracies reported,
    (metric key, bound) each: classes round(clip(x, -bound, bound)), e.g. ("acc7", 3.0).
    processed_files / label_files: MMSA's processed pickles and label.csv looked for, in order of
    preference; generate: makes the store at a path instead (the synthetic benchmark)."""

    name: str
    title: str
    label_range: tuple[float, float] = (-3.0, 3.0)
    neutral: float = 0.0
    class_accuracies: tuple[tuple[str, float], ...] = (("acc7", 3.0), ("acc5", 2.0))
    processed_files: tuple[str, ...] = ("unaligned_50.pkl", "aligned_50.pkl")
    label_files: tuple[str, ...] = ("label.csv",)
    generate: Callable[[Path], None] | None = None

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The keys `metrics.msa_metrics` returns for this dataset, in Table 1's column order."""
        return ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0", *(key for key, _ in self.class_accuracies),
                "mae", "corr")


def generate_synth_store(path: Path) -> None:
    """The synthetic benchmark's store (seed 0, MOSI-sized, 1000 unlabeled samples, audio/vision imbalance)."""
    from kebr_core.data.synth import SynthConfig, generate_synth  # torch-free, but only needed here

    generate_synth(path, SynthConfig(unlabeled=1000), dataset="synth")


# name → entry: `--dataset NAME`'s choices, their label ranges, metric sets and files. The CLI's help and
# `registry.resolve_dataset`'s errors list these names.
DATASETS: dict[str, Dataset] = {
    "mosi": Dataset("mosi", "CMU-MOSI"),
    "mosei": Dataset("mosei", "CMU-MOSEI"),
    "synth": Dataset("synth", "the synthetic benchmark", processed_files=(), label_files=(),
                     generate=generate_synth_store),
}
DEFAULT = DATASETS["mosi"]  # the scale of a store given by path (MOSI's and MOSEI's)
DATASET_HELP = ", ".join(DATASETS) + ", or the path of a labeled store."  # --dataset's help


def dataset_of(attrs: Mapping[str, Any], path: str | Path) -> Dataset:
    """The entry a store was made for: its `dataset` attribute (written when kebr imported or generated it
    for `--dataset NAME`), else DEFAULT (a store from `kebr extract`, `kebr import` or an older kebr: MOSI's
    scale). A name this kebr does not know is refused: its metrics would be computed on another scale."""
    name = attrs.get("dataset") or ""
    if not name:
        return DEFAULT
    entry = DATASETS.get(name)
    if entry is None:
        raise KebrError(f"Store {path} was made for dataset {name!r}, which this kebr does not know "
                        f"(it knows {', '.join(DATASETS)}), so it cannot score it on that dataset's scale.")
    return entry


def get_dataset(name: str) -> Dataset:
    """The entry named `name` (case-insensitive); KebrError with one sentence naming the known ones."""
    entry = DATASETS.get(name.lower())
    if entry is None:
        raise KebrError(f"Unknown dataset {name!r}: kebr knows {', '.join(DATASETS)}.")
    return entry
