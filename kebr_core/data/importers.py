"""Importers into the feature store: MMSA processed pickles, MMSA label.csv, and merging stores.

Every importer writes `OUT.tmp` and renames it to OUT only when everything succeeded; on any error
the temporary file is removed, so an OUT that exists is always complete. Errors a user can cause
(a file that is not what it claims, missing keys or columns, duplicate ids) raise KebrError with one
sentence. Progress goes to an optional callback `progress(done, total)`.

MMSA pickles (`unaligned_50.pkl`, `aligned_50.pkl` of MOSI/MOSEI/SIMS): a dict with splits
"train"/"valid"/"test", each a dict of arrays: raw_text (N,), id (N,), regression_labels (N,),
audio (N, La, d_a), vision (N, Lv, d_v), and in the unaligned files audio_lengths / vision_lengths
(N,). Dimensions: MOSI 5 / 20, MOSEI 74 / 35, SIMS 33 / 709. Valid frames come first (MMSA packs
them with these lengths); the frames beyond `*_lengths` are padding and are dropped. The aligned
files of some MMSA versions have no `*_lengths`: then every frame that is exactly zero in all
columns is taken for padding and dropped (aligned sequences are zero-padded to 50; a real feature
frame is never all zeros, and for face features an all-zero frame means "no face", which the store
represents by dropping the frame too). As MMSA's own loader does with -inf, non-finite values
(±inf, NaN) are set to 0; how many were replaced is reported.

MMSA label.csv (video_id,clip_id,text,label,annotation,mode[,label_by]): text-only samples with
zero-length audio and vision, id "<video_id>$_$<clip_id>", split from `mode`, text_source "import".
The store names no audio or vision feature columns.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kebr_core.data.catalog import DEFAULT, Dataset
from kebr_core.data.labels import check_labels
from kebr_core.data.mmsa_checks import (NDARRAY_NAME, BoundedReader, DeclaredSizeError, check_split_content,
                                        checked_reconstruct, declared_size_message, plain)
from kebr_core.data.store import SPLITS, FeatureStore, Sample, StoreWriter, describe_features
from kebr_core.errors import KebrError, or_list
from kebr_core.io import atomic_output, check_output
from kebr_core.strict import decimal_number, find_nul, read_csv_table

ProgressFn = Callable[[int, int], None]

MMSA_SPLITS = ("train", "valid", "test")
MMSA_REQUIRED_KEYS = ("raw_text", "id", "regression_labels", "audio", "vision")
LABEL_CSV_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")


def _no_progress(done: int, total: int) -> None:
    pass


# ── MMSA pickles ────────────────────────────────────────────────────────────────────────────────


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals an MMSA pickle may name: numpy's array, dtype and scalar rebuilders, under the
    module names of numpy 1 (`numpy.core`) and numpy 2 (`numpy._core`), and `_codecs.encode` (how
    protocol 2 stores bytes). Nothing here can run code of the file's choosing."""
    import codecs

    core = np._core if hasattr(np, "_core") else np.core  # type: ignore[attr-defined]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): NDARRAY_NAME, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for package in ("numpy.core", "numpy._core"):  # arrays are rebuilt checked (mmsa_checks.CheckedArray)
        allowed[(f"{package}.multiarray", "_reconstruct")] = checked_reconstruct(core.multiarray._reconstruct)
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, strings, numbers and numpy arrays/dtypes/scalars, nothing else.

    A pickle calls whatever global it names (`os.system`, via `__reduce__`); here every global outside
    `_numpy_globals()` is refused before anything is called."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found


class _RefusedGlobal(Exception):
    """A pickle named a global `_DataOnlyUnpickler` does not allow (args[0]: "module.name")."""


def load_data_pickle(path: Path) -> Any:
    """Load an MMSA pickle without running code from it (only data types, see `_DataOnlyUnpickler`), and
    without allocating more than its data fills (`mmsa_checks`: reads bounded by the file's size, arrays
    whose declared shape their data fills)."""
    path = Path(path)
    if not path.is_file():
        raise KebrError(f"MMSA pickle {path} does not exist.")
    try:
        with open(path, "rb") as f:
            return plain(_DataOnlyUnpickler(BoundedReader(f, path.stat().st_size)).load())
    except DeclaredSizeError as e:
        raise KebrError(declared_size_message(path, e)) from None
    except RecursionError:
        raise KebrError(f"MMSA pickle {path} nests its data too deeply to be MMSA's dict of arrays.") from None
    except _RefusedGlobal as e:
        raise KebrError(f"{path} was refused: it names {e.args[0]}, which is not plain data (an MMSA pickle holds "
                        "only dicts, lists, strings, numbers and numpy arrays), and loading it could run code.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError) as e:
        raise KebrError(f"{path} is not a readable pickle ({type(e).__name__}: {e}).") from None


def _mmsa_split(data: Any, split: str, path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of one split, checked for keys and consistent shapes; None when the split is absent."""
    part = data.get(split)
    if part is None:
        return None
    if not isinstance(part, dict):
        raise KebrError(f"MMSA pickle {path}: split {split!r} is a {type(part).__name__}, not a dict of arrays.")
    missing = [k for k in MMSA_REQUIRED_KEYS if k not in part]
    if missing:
        raise KebrError(f"MMSA pickle {path}: split {split!r} lacks the key(s) {', '.join(missing)}.")
    try:
        arrays = {k: np.asarray(part[k]) for k in (*MMSA_REQUIRED_KEYS, "audio_lengths", "vision_lengths") if k in part}
    except ValueError as e:  # ragged nesting numpy will not make an array of
        raise KebrError(f"MMSA pickle {path}: split {split!r} holds something other than arrays ({e}).") from None
    scalar = next((k for k, v in arrays.items() if v.ndim == 0), None)
    if scalar is not None:
        raise KebrError(f"MMSA pickle {path}: {split}/{scalar} is a single value, not an array with a row per sample.")
    n = len(arrays["id"])
    for key in ("audio", "vision"):
        if arrays[key].ndim != 3:
            raise KebrError(f"MMSA pickle {path}: {split}/{key} has shape {arrays[key].shape}, expected (N, L, d).")
    for key, value in arrays.items():
        if len(value) != n:
            raise KebrError(f"MMSA pickle {path}: {split}/{key} has {len(value)} rows but {split}/id has {n}.")
    return check_split_content(arrays, split, path)


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _sample_frames(frames: np.ndarray, i: int, length: int | None) -> tuple[np.ndarray, int]:
    """Sample i's frames without padding (the first `length`, else the not-all-zero ones), non-finite
    values set to 0. Returns them and how many values were replaced. Works per sample, so a
    MOSEI-sized pickle is never copied whole."""
    x = frames[i]
    x = x[: max(0, min(int(length), len(x)))] if length is not None else x[np.any(x != 0, axis=1)]
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        x = np.where(bad, np.float32(0), x)
    return x, n_bad


def import_mmsa_pickle(
    src: str | Path, out: str | Path, *, progress: ProgressFn | None = None, overwrite: bool = False,
    clip_labels: bool = False, dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Import an MMSA processed pickle into a new store at `out`.

    The pickle is read without running code from it (`load_data_pickle`). ±inf labels are refused;
    labels outside the label range of `dataset` (the `catalog.Dataset` the store is made for, recorded in
    it; None: MOSI's [-3, 3], nothing recorded) are counted (and clipped with `clip_labels`).
    Returns {"path", "samples", "splits": {split: n}, "audio_dim", "vision_dim", "lengths": "given" |
    "nonzero frames", "nonfinite_replaced", "labels_outside_range", "labels_clipped"}.
    """
    src, progress = Path(src), progress or _no_progress
    data = load_data_pickle(src)
    if not isinstance(data, dict):
        raise KebrError(f"{src} holds a {type(data).__name__}, not MMSA's dict of splits (train/valid/test).")
    splits = {s: _mmsa_split(data, s, src) for s in MMSA_SPLITS}
    splits = {s: a for s, a in splits.items() if a is not None}
    if not splits:
        raise KebrError(f"MMSA pickle {src} has none of the splits {', '.join(MMSA_SPLITS)}.")
    dims = {(a["audio"].shape[2], a["vision"].shape[2]) for a in splits.values()}
    if len(dims) != 1:
        raise KebrError(f"MMSA pickle {src}: its splits disagree on feature dimensions {sorted(dims)}.")
    d_audio, d_vision = dims.pop()
    seen: dict[str, str] = {}
    for split, arrays in splits.items():
        for sample_id in arrays["id"].tolist():
            sample_id = _str(sample_id)
            if sample_id in seen:
                raise KebrError(f"MMSA pickle {src}: id {sample_id!r} occurs twice (in {seen[sample_id]} and {split}).")
            seen[sample_id] = split
    outside = 0
    for split, arrays in splits.items():
        n = len(arrays["id"])
        shape = arrays["regression_labels"].shape
        if shape not in ((n,), (n, 1)):  # (N, 2) or more: which column is the sentiment is not ours to guess
            raise KebrError(f"MMSA pickle {src}: {split}/regression_labels has shape {shape}; kebr reads one label per "
                            f"sample, shaped ({n},) or ({n}, 1).")
        labels = arrays["regression_labels"].astype(np.float64).reshape(n)
        arrays["regression_labels"], n_out = check_labels(
            labels, [_str(i) for i in arrays["id"].tolist()], f"MMSA pickle {src} ({split})", clip=clip_labels,
            label_range=(dataset or DEFAULT).label_range)
        outside += n_out
    has_lengths = all("audio_lengths" in a and "vision_lengths" in a for a in splits.values())
    total = sum(len(a["id"]) for a in splits.values())

    extractor = {"importer": "mmsa-pickle", "file": src.name,
                 "padding": "audio_lengths/vision_lengths" if has_lengths else "all-zero frames dropped"}
    done = nonfinite = 0
    with atomic_output(out, overwrite, inputs=[src]) as tmp:
        with StoreWriter(tmp, [f"mmsa_audio_{k}" for k in range(d_audio)], [f"mmsa_vision_{k}" for k in range(d_vision)],
                         extractor=extractor, source=f"MMSA pickle {src.name}", dataset=dataset.name if dataset else "",
                         flush_every=1024, flush_seconds=math.inf) as writer:
            for split, arrays in splits.items():
                n = len(arrays["id"])
                a_len = arrays["audio_lengths"].astype(np.int64) if has_lengths else [None] * n
                v_len = arrays["vision_lengths"].astype(np.int64) if has_lengths else [None] * n
                labels = arrays["regression_labels"]
                for i, (sample_id, text) in enumerate(zip(arrays["id"].tolist(), arrays["raw_text"].tolist())):
                    nul = find_nul({"id": _str(sample_id), "raw_text": _str(text)})
                    if nul is not None:
                        raise KebrError(f"MMSA pickle {src}: {split}/{nul} of sample {i} holds a NUL character, "
                                        "which a store cannot hold.")
                    audio, bad_a = _sample_frames(arrays["audio"], i, a_len[i])
                    vision, bad_v = _sample_frames(arrays["vision"], i, v_len[i])
                    nonfinite += bad_a + bad_v
                    writer.add(Sample(id=_str(sample_id), text=_str(text).strip(), audio=audio, vision=vision,
                                      label=float(labels[i]), split=split, text_source="import"))
                    done += 1
                    if done % 256 == 0 or done == total:
                        progress(done, total)
    return {"path": str(out), "samples": total, "splits": {s: len(a["id"]) for s, a in splits.items()},
            "audio_dim": d_audio, "vision_dim": d_vision,
            "lengths": "given" if has_lengths else "nonzero frames", "nonfinite_replaced": nonfinite,
            "labels_outside_range": outside, "labels_clipped": clip_labels}


# ── MMSA label.csv ──────────────────────────────────────────────────────────────────────────────


def read_label_csv(src: str | Path) -> list[Sample]:
    """Rows of an MMSA label.csv as text-only samples (zero-length audio and vision)."""
    src = Path(src)
    if not src.is_file():
        raise KebrError(f"Label file {src} does not exist.")
    columns, rows = read_csv_table(src, "Label file")
    missing = [c for c in LABEL_CSV_COLUMNS if c not in columns]
    if missing:
        raise KebrError(f"Label file {src} lacks the column(s) {', '.join(missing)} "
                        f"(an MMSA label.csv has {','.join(LABEL_CSV_COLUMNS)}).")
    if not rows:
        raise KebrError(f"Label file {src} has a header but no rows.")

    samples, seen = [], {}
    empty = np.zeros((0, 0), dtype=np.float32)
    for line, row in rows:
        nul = find_nul(row)
        if nul is not None:
            raise KebrError(f"Label file {src} line {line}: its {nul} holds a NUL character, which a store cannot hold.")
        sample_id = f"{row['video_id'].strip()}$_${row['clip_id'].strip()}"
        if sample_id in seen:
            raise KebrError(f"Label file {src}: id {sample_id!r} occurs twice (lines {seen[sample_id]} and {line}).")
        seen[sample_id] = line
        mode = row["mode"].strip()
        if mode not in SPLITS or mode == "unlabeled":
            raise KebrError(f"Label file {src} line {line}: mode {mode!r} is not train, valid or test.")
        label = decimal_number(row["label"])
        if label is None:
            raise KebrError(f"Label file {src} line {line}: label {row['label']!r} is not a number in plain decimal (like -1.5).")
        samples.append(Sample(id=sample_id, text=row["text"].strip(), audio=empty, vision=empty,
                              label=label, split=mode, text_source="import"))
    return samples


def import_label_csv(
    src: str | Path, out: str | Path, *, progress: ProgressFn | None = None, overwrite: bool = False,
    clip_labels: bool = False, dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Import an MMSA label.csv as a text-only store. ±inf labels are refused; labels outside the range of
    `dataset` (as `import_mmsa_pickle`'s) are counted (and clipped with `clip_labels`).

    Returns {"path", "samples", "splits", "labels_outside_range", "labels_clipped"}."""
    src, progress = Path(src), progress or _no_progress
    samples = read_label_csv(src)
    labels, outside = check_labels(np.array([s.label for s in samples]), [s.id for s in samples], f"Label file {src}",
                                   clip=clip_labels, label_range=(dataset or DEFAULT).label_range)
    for sample, label in zip(samples, labels.tolist()):
        sample.label = label
    counts = {s: 0 for s in MMSA_SPLITS}
    with atomic_output(out, overwrite, inputs=[src]) as tmp:
        with StoreWriter(tmp, [], [], extractor={"importer": "label-csv", "file": src.name},
                         source=f"MMSA label.csv {src.name}", dataset=dataset.name if dataset else "",
                         flush_every=4096, flush_seconds=math.inf) as writer:
            for done, sample in enumerate(samples, start=1):
                writer.add(sample)
                counts[sample.split] += 1
                if done % 512 == 0 or done == len(samples):
                    progress(done, len(samples))
    return {"path": str(out), "samples": len(samples), "splits": counts, "labels_outside_range": outside,
            "labels_clipped": clip_labels}


@dataclass(frozen=True)
class Importer:
    """A file format `kebr import` reads: its name, what it is, the extensions "auto" knows it by, and the
    function (src, out, *, progress, overwrite, clip_labels) → summary dict that imports it."""

    name: str
    what: str
    suffixes: tuple[str, ...]
    run: Callable[..., dict[str, Any]]


# name → importer: `import_file` and the CLI's --format choices read this table (a new format is one entry).
IMPORTERS: dict[str, Importer] = {
    "mmsa-pkl": Importer("mmsa-pkl", "MMSA pickle", (".pkl", ".pickle"), import_mmsa_pickle),
    "label-csv": Importer("label-csv", "MMSA label.csv", (".csv",), import_label_csv),
}
AUTO = "auto"  # the format chosen by the file's extension
IMPORT_FORMATS = (AUTO, *IMPORTERS)  # what --format accepts


def importer_for(src: Path, fmt: str = AUTO) -> Importer:
    """The importer of `fmt`, or with "auto" the one whose extensions include src's; KebrError in one sentence
    for an unknown format or extension."""
    if fmt == AUTO:
        suffix = src.suffix.lower()
        found = [importer for importer in IMPORTERS.values() if suffix in importer.suffixes]
        if not found:
            known = or_list([f"{i.suffixes[0]} ({i.what})" for i in IMPORTERS.values()])
            raise KebrError(f"Cannot tell the format of {src} from its extension; use {known}, or name the format.")
        return found[0]
    if fmt not in IMPORTERS:
        raise KebrError(f"Unknown import format {fmt!r}; use {or_list(IMPORT_FORMATS)}.")
    return IMPORTERS[fmt]


def import_file(src: str | Path, out: str | Path, *, fmt: str = AUTO, progress: ProgressFn | None = None,
                overwrite: bool = False, clip_labels: bool = False) -> dict[str, Any]:
    """Import by format: a key of `IMPORTERS` ("mmsa-pkl", "label-csv"), or "auto" (by extension, `importer_for`)."""
    src = Path(src)
    return importer_for(src, fmt).run(src, out, progress=progress, overwrite=overwrite, clip_labels=clip_labels)


# ── merge ───────────────────────────────────────────────────────────────────────────────────────


def merge_stores(
    inputs: Sequence[str | Path], out: str | Path, *, progress: ProgressFn | None = None,
    overwrite: bool = False, block: int = 512,
) -> dict[str, Any]:
    """Concatenate stores (e.g. extraction shards) into a new store at `out`, in input order.

    Refuses (KebrError, before writing) stores with different feature columns, audio rate or video
    fps, and ids that occur in more than one input. Errors are kept unless the id is a sample in
    another input (a shard that failed where another succeeded). Returns {"path", "samples", "errors"}.
    """
    progress = progress or _no_progress
    paths = [Path(p) for p in inputs]
    if len(paths) < 2:
        raise KebrError("Merging needs at least two stores.")
    check_output(out, paths, option="Output")
    stores = [FeatureStore(p) for p in paths]
    first = stores[0]
    for store in stores[1:]:
        for key in ("audio_features", "vision_features", "audio_rate_hz", "vision_fps", "dataset"):
            theirs, mine = store.attrs.get(key), first.attrs.get(key)
            if theirs != mine:
                if key.endswith("features"):
                    theirs, mine = describe_features(theirs), describe_features(mine)
                raise KebrError(f"Cannot merge {store.path} with {first.path}: their {key.replace('_', ' ')} differ "
                                f"({theirs} vs {mine}).")
    owner: dict[str, Path] = {}
    for store in stores:
        for sample_id in store.ids:
            if sample_id in owner:
                raise KebrError(f"Cannot merge: id {sample_id!r} is in both {owner[sample_id]} and {store.path}.")
            owner[sample_id] = store.path
    errors: dict[str, str] = {}
    for store in stores:
        errors.update({k: v for k, v in store.errors().items() if k not in owner})

    total, done = len(owner), 0
    with atomic_output(out, overwrite, inputs=paths) as tmp:
        with StoreWriter(tmp, first.audio_features, first.vision_features, audio_rate_hz=first.attrs["audio_rate_hz"],
                         vision_fps=first.attrs["vision_fps"], extractor=first.attrs.get("extractor", {}),
                         source="merge of " + ", ".join(p.name for p in paths), dataset=first.attrs.get("dataset", ""),
                         flush_every=block, flush_seconds=math.inf) as writer:
            for store in stores:
                texts = store.texts
                for lo in range(0, len(store), block):
                    hi = min(lo + block, len(store))
                    audio, vision = store.read_block(lo, hi)
                    for j, i in enumerate(range(lo, hi)):
                        writer.add(Sample(store.ids[i], texts[i], audio[j], vision[j], float(store.labels[i]),
                                          store.split(i), store.text_source(i)))
                    done += hi - lo
                    progress(done, total)
                store.close()
            for sample_id, message in errors.items():
                writer.add_error(sample_id, message)
    return {"path": str(out), "samples": total, "errors": len(errors)}
