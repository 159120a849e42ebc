"""Checks of sentiment labels coming from files (MMSA pickles and label.csv, extraction manifests).

Labels live on their dataset's range (`catalog.Dataset.label_range`; [-3, 3] for CMU-MOSI/MOSEI and any
store given by path, `LABEL_RANGE`); NaN means unlabeled. ±inf is never a label: it is refused with
the ids named. A finite label outside the range is kept (or clipped on request) and counted, so the
caller can warn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kebr_core.data.catalog import DEFAULT
from kebr_core.errors import KebrError

LABEL_RANGE = DEFAULT.label_range  # (-3.0, 3.0): the scale of a store not named by a dataset


def check_labels(labels: np.ndarray, ids: Sequence[str], source: str, *, clip: bool = False,
                 label_range: tuple[float, float] = LABEL_RANGE) -> tuple[np.ndarray, int]:
    """labels (N,) of samples ids (N,) read from `source` → (labels, n_outside).

    Raises KebrError naming the ids whose label is ±inf. n_outside counts finite labels outside
    `label_range` (the dataset's; default LABEL_RANGE); with `clip` they are clipped onto it (a copy is
    returned; NaN stays NaN).
    """
    labels = np.asarray(labels, dtype=np.float64)
    infinite = np.flatnonzero(np.isinf(labels))
    if len(infinite):
        shown = ", ".join(repr(str(ids[i])) for i in infinite[:5]) + (" …" if len(infinite) > 5 else "")
        raise KebrError(f"{source}: {len(infinite)} label(s) are infinite (ids {shown}); a label is a number in "
                        f"[{label_range[0]:g}, {label_range[1]:g}], or empty/NaN for an unlabeled sample.")
    finite = labels[np.isfinite(labels)]
    n_outside = int(((finite < label_range[0]) | (finite > label_range[1])).sum())
    if clip and n_outside:
        labels = np.where(np.isnan(labels), labels, np.clip(labels, *label_range))
    return labels, n_outside


def outside_range_warning(n_outside: int, clipped: bool, label_range: tuple[float, float] = LABEL_RANGE) -> str:
    """The warning a command prints for `n_outside` labels outside `label_range` (default [-3, 3]; "" when
    there are none)."""
    if not n_outside:
        return ""
    low, high = label_range
    if clipped:
        return f"{n_outside} label(s) outside [{low:g}, {high:g}] were clipped onto it."
    return (f"{n_outside} label(s) lie outside [{low:g}, {high:g}] (the sentiment scale); they were kept as they are "
            f"— import or extract with --clip-labels to clip them.")
