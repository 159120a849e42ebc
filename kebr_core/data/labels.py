"""Checks of sentiment labels coming from files (MMSA pickles and label.csv, extraction manifests).

Labels live on [-3, 3] (CMU-MOSI/MOSEI); NaN means unlabeled. ±inf is never a label: it is refused
with the ids named. A finite label outside [-3, 3] is kept (or clipped on request) and counted, so
the caller can warn.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kebr_core.errors import KebrError

LABEL_RANGE = (-3.0, 3.0)


def check_labels(labels: np.ndarray, ids: Sequence[str], source: str, *, clip: bool = False) -> tuple[np.ndarray, int]:
    """labels (N,) of samples ids (N,) read from `source` → (labels, n_outside).

    Raises KebrError naming the ids whose label is ±inf. n_outside counts finite labels outside
    LABEL_RANGE; with `clip` they are clipped onto it (a copy is returned; NaN stays NaN).
    """
    labels = np.asarray(labels, dtype=np.float64)
    infinite = np.flatnonzero(np.isinf(labels))
    if len(infinite):
        shown = ", ".join(repr(str(ids[i])) for i in infinite[:5]) + (" …" if len(infinite) > 5 else "")
        raise KebrError(f"{source}: {len(infinite)} label(s) are infinite (ids {shown}); a label is a number in "
                        f"[{LABEL_RANGE[0]:g}, {LABEL_RANGE[1]:g}], or empty/NaN for an unlabeled sample.")
    finite = labels[np.isfinite(labels)]
    n_outside = int(((finite < LABEL_RANGE[0]) | (finite > LABEL_RANGE[1])).sum())
    if clip and n_outside:
        labels = np.where(np.isnan(labels), labels, np.clip(labels, *LABEL_RANGE))
    return labels, n_outside


def outside_range_warning(n_outside: int, clipped: bool) -> str:
    """The warning a command prints for `n_outside` labels outside [-3, 3] ("" when there are none)."""
    if not n_outside:
        return ""
    low, high = LABEL_RANGE
    if clipped:
        return f"{n_outside} label(s) outside [{low:g}, {high:g}] were clipped onto it."
    return (f"{n_outside} label(s) lie outside [{low:g}, {high:g}] (the sentiment scale); they were kept as they are "
            f"— import or extract with --clip-labels to clip them.")
