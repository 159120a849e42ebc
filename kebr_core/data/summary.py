"""What a feature store holds, as a JSON-ready dict (rendered by `kebr inspect`).

Only the per-sample index is read (ids, labels, splits, text sources, offsets) and the texts for
their word counts; no frame is read, so a summary of a large store is quick.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from kebr_core.data.catalog import dataset_of
from kebr_core.data.labels import LABEL_RANGE
from kebr_core.data.store import SPLITS, FeatureStore


def _length_stats(lengths: np.ndarray) -> dict[str, Any]:
    if len(lengths) == 0:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0, "zero": 0, "total_frames": 0}
    return {
        "min": int(lengths.min()), "mean": float(lengths.mean()), "median": float(np.median(lengths)),
        "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()),
        "zero": int((lengths == 0).sum()), "total_frames": int(lengths.sum()),
    }


def label_histogram(labels: np.ndarray, label_range: tuple[float, float] = LABEL_RANGE) -> dict[str, int]:
    """Counts of the integer sentiment classes round(clip(y, low, high)) of `label_range` (default [-3, 3]: the
    7 classes of Acc-7; round half to even, as Acc-7), NaN and ±inf skipped."""
    low, high = math.ceil(label_range[0]), math.floor(label_range[1])
    labeled = labels[np.isfinite(labels)]
    classes = np.round(np.clip(labeled, label_range[0], label_range[1])).astype(int)
    counts = np.bincount(classes - low, minlength=high - low + 1)
    return {str(k): int(counts[k - low]) for k in range(low, high + 1)}


def summarize(store: FeatureStore | str | Path, max_errors: int = 10,
              label_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Samples per split, labels, features, sequence lengths, text sources and errors of a store.

    Keys: path, file_bytes, format_version, created, kebr_version, source, dataset (the catalog entry it
    was made for, "" for none: `catalog.dataset_of`), extractor, samples, splits {split: n}, labels
    {labeled, unlabeled, infinite, outside_range (finite labels outside `label_range`; default: that
    dataset's range), mean, std, min, max, histogram {"-3".."3": n}} (statistics over finite labels),
    audio / vision {dim, features, rate_hz | fps, lengths {min, mean, median, p95, max, zero,
    total_frames}}, text {sources {source: n}, words {mean, max}, empty}, errors {count, by_message,
    examples [{id, message}]}.
    """
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    dataset = dataset_of(store.attrs, store.path)
    label_range = label_range or dataset.label_range
    labels = store.labels
    labeled = labels[np.isfinite(labels)]  # ±inf (only in stores written before kebr refused it) is no label either
    audio_lengths, vision_lengths = store.lengths()
    words = np.array([len(t.split()) for t in store.texts], dtype=np.int64)
    errors = store.errors()
    attrs = store.attrs
    return {
        "path": str(store.path),
        "file_bytes": store.path.stat().st_size,
        "format_version": attrs.get("format_version"),
        "created": attrs.get("created"),
        "kebr_version": attrs.get("kebr_version"),
        "source": attrs.get("source", ""),
        "dataset": attrs.get("dataset", ""),
        "extractor": attrs.get("extractor", {}),
        "samples": len(store),
        "splits": {s: len(store.indices(s)) for s in SPLITS},
        "labels": {
            "labeled": int(len(labeled)),
            "unlabeled": int(np.isnan(labels).sum()),
            "infinite": int(np.isinf(labels).sum()),
            "outside_range": int(((labeled < label_range[0]) | (labeled > label_range[1])).sum()),
            "mean": float(labeled.mean()) if len(labeled) else None,
            "std": float(labeled.std()) if len(labeled) else None,
            "min": float(labeled.min()) if len(labeled) else None,
            "max": float(labeled.max()) if len(labeled) else None,
            "histogram": label_histogram(labels, label_range),
        },
        "audio": {"dim": len(store.audio_features), "features": store.audio_features,
                  "rate_hz": attrs.get("audio_rate_hz"), "lengths": _length_stats(audio_lengths)},
        "vision": {"dim": len(store.vision_features), "features": store.vision_features,
                   "fps": attrs.get("vision_fps"), "lengths": _length_stats(vision_lengths)},
        "text": {
            "sources": dict(Counter(store.text_sources.tolist()).most_common()),
            "words": {"mean": float(words.mean()) if len(words) else 0.0, "max": int(words.max(initial=0))},
            "empty": int((words == 0).sum()),
        },
        "errors": {
            "count": len(errors),
            "by_message": dict(Counter(errors.values()).most_common(max_errors)),
            "examples": [{"id": k, "message": v} for k, v in list(errors.items())[:max_errors]],
        },
    }
