"""The checks a feature store passes when it is opened: its layout, its attributes and every index it declares.

A store is a file users get from someone else, so `FeatureStore` and `StoreWriter` trust nothing in it
that these checks have not seen (issue 28, crafted stores). All of them read metadata and the small
per-sample index only (ids, splits, text sources, labels, offsets: a few bytes per sample), never frames:

- layout: `format_version` a whole number equal to the version read; every dataset of the format
  present and a dataset (not a group) whose data lies in this file (no external link, external storage
  or virtual dataset: those read other files), with the shape and kind of values the format gives it
  (per-sample rows 1-D, `*/data` 2-D numbers, offsets integers, `committed` two integers);
- attributes: feature names a list of strings, rates real numbers, text attributes valid UTF-8,
  `extractor` a JSON object;
- declared sizes: `committed` within the rows every per-sample dataset has, and within the bytes the
  file really stores for them (a crafted store can declare 10^12 rows that occupy no space); offsets
  that start at 0, never go backwards, stay within `*/data`, and whose frames the file really stores;
  no sample larger than `MAX_SAMPLE_BYTES` once read;
- strings: every id, split and text source valid UTF-8, ids unique.

Each failure is one sentence naming the store, the dataset or attribute, and the sample where there is one.
Content met later (a transcript that is not UTF-8, a frame chunk HDF5 cannot read) is reported the same way by
`decode_strings` and `frame_read_error`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from kebr_core.errors import KebrError

PER_SAMPLE_STRINGS = ("id", "text", "text_source", "split")
OFFSETS = ("audio/offsets", "vision/offsets")
FRAMES = ("audio/data", "vision/data")
ERRORS = ("errors/id", "errors/message")
REQUIRED = (*PER_SAMPLE_STRINGS, "label", *FRAMES, *OFFSETS, *ERRORS, "committed")
# One sample's frames, as float32, at most: an hour of OpenFace vision (709 values at 30 fps) is 0.3 GB.
MAX_SAMPLE_BYTES = 1 << 30
# The most a filtered (compressed) dataset can expand: deflate's limit is about 1032:1.
_MAX_COMPRESSION_RATIO = 1100


def _show(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _damaged(path: Path, what: str) -> KebrError:
    return KebrError(f"Store {path} is damaged: {what}.")


def _dataset(f: h5py.File, name: str) -> h5py.Dataset | h5py.Group | None:
    try:
        return f.get(name)
    except (KeyError, TypeError, ValueError, OSError, RuntimeError):  # a dataset where the group of `name` belongs
        return None


def check_layout(f: h5py.File, path: Path, format_version: int) -> None:
    """Raise KebrError unless f is a kebr store of `format_version` whose datasets have the format's kinds.

    Per-sample datasets (N,) and offsets (N+1,) are 1-D; strings are HDF5 strings; label is numeric;
    offsets are integers; */data (T, d) 2-D numeric; committed (2,) integers."""
    if "format_version" not in f.attrs:
        raise KebrError(f"{path} is an HDF5 file but not a kebr feature store (no format_version attribute).")
    version = _attribute(f, path, "format_version")
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
        raise _damaged(path, f"its format_version attribute is {_show(version)}, not a whole number")
    if version != format_version:
        raise KebrError(
            f"Store {path} has format_version {int(version)}, but this kebr reads format_version {format_version}; "
            f"re-create it with this version of kebr."
        )
    found = {name: _dataset(f, name) for name in REQUIRED}
    missing = [name for name, obj in found.items() if obj is None]
    if missing:
        raise KebrError(f"Store {path} is damaged: dataset(s) {', '.join(missing)} missing.")
    for name, obj in found.items():
        if not isinstance(obj, h5py.Dataset):
            raise _damaged(path, f"{name} is a {type(obj).__name__.lower()} where a dataset belongs")
        if _elsewhere(f, name, obj):  # reading it would read another file (any file, /dev/zero included)
            raise _damaged(path, f"{name} keeps its data in another file (an external link, external storage or a "
                                 "virtual dataset), which a kebr store never does")
        ndim = 2 if name in FRAMES else 1
        if obj.ndim != ndim:
            raise _damaged(path, f"{name} has shape {obj.shape}; the format gives it {ndim} dimension(s)")
        strings = name in PER_SAMPLE_STRINGS or name in ERRORS
        if strings and h5py.check_string_dtype(obj.dtype) is None:
            raise _damaged(path, f"{name} holds {obj.dtype} values, not strings")
        kinds = "iu" if name in OFFSETS or name == "committed" else "fiu"
        if not strings and obj.dtype.kind not in kinds:
            raise _damaged(path, f"{name} holds {obj.dtype} values, not {'integers' if kinds == 'iu' else 'numbers'}")
    if found["committed"].shape != (2,):
        raise _damaged(path, f"committed has shape {found['committed'].shape}, not (2,)")


def _elsewhere(f: h5py.File, name: str, ds: h5py.Dataset) -> bool:
    """Whether dataset `name` (or a group on its path) is an external link, or its data lies outside the file."""
    parts = name.split("/")
    for depth in range(1, len(parts) + 1):
        if isinstance(f.get("/".join(parts[:depth]), getlink=True), h5py.ExternalLink):
            return True
    return bool(ds.external) or ds.is_virtual


def _attribute(f: h5py.File, path: Path, key: str) -> Any:
    try:
        return f.attrs[key]
    except (OSError, TypeError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise _damaged(path, f"its {key} attribute cannot be read ({e})") from None


def _text(value: Any, path: Path, what: str) -> str:
    """A str from an HDF5 string (bytes, or str that h5py decoded with surrogate escapes); KebrError if not UTF-8."""
    try:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, str):
            value.encode("utf-8")  # a lone surrogate is how h5py hands over bytes that were not UTF-8
            return value
    except UnicodeError:
        raise _damaged(path, f"{what} is not valid UTF-8") from None
    raise _damaged(path, f"{what} is {_show(value)}, not a string")


def read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    """Root attributes as plain Python values, checked: audio_features / vision_features lists of str,
    audio_rate_hz / vision_fps float or None (NaN = unknown), extractor a dict (from its JSON), sources a
    list of str when present (left as its JSON text), other text attributes str; any other attribute as found."""
    attrs: dict[str, Any] = {}
    for key in f.attrs:
        value = _attribute(f, path, key)
        if isinstance(value, (bytes, str)):
            value = _text(value, path, f"its {key} attribute")
        elif isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
            value = [_text(v, path, f"an entry of its {key} attribute") for v in value.reshape(-1)]
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, h5py.Empty):
            value = []
        attrs[key] = value
    for key in ("audio_features", "vision_features"):
        names = attrs.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _damaged(path, f"its {key} attribute is {_show(names)}, not a list of feature names")
        attrs[key] = names
    for key in ("audio_rate_hz", "vision_fps"):
        value = attrs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _damaged(path, f"its {key} attribute is {_show(value)}, not a number")
        attrs[key] = None if value is None or math.isnan(value) else float(value)
    for key in ("created", "kebr_version", "source", "dataset"):
        if key in attrs and not isinstance(attrs[key], str):
            raise _damaged(path, f"its {key} attribute is {_show(attrs[key])}, not text")
    extractor = _json_attr(attrs, "extractor", path, dict, "a JSON object")
    attrs["extractor"] = {} if extractor is None else extractor
    sources = _json_attr(attrs, "sources", path, list, "a JSON list of sources")  # kept as its JSON text
    if sources is not None and not all(isinstance(s, str) for s in sources):
        raise _damaged(path, "its sources attribute lists something other than text")
    return attrs


def _json_attr(attrs: dict[str, Any], key: str, path: Path, kind: type, described: str) -> Any:
    if not attrs.get(key):
        return None
    try:
        value = json.loads(attrs[key]) if isinstance(attrs[key], str) else None
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, kind):
        raise _damaged(path, f"its {key} attribute is not {described}")
    return value


def _filtered(ds: h5py.Dataset) -> bool:
    return ds.id.get_create_plist().get_nfilters() > 0


def _stored_bytes(ds: h5py.Dataset) -> int:
    """Bytes the file really holds for ds; a filtered dataset counts at its largest possible expansion."""
    stored = ds.id.get_storage_size()
    return stored * _MAX_COMPRESSION_RATIO if _filtered(ds) else stored


def read_committed(f: h5py.File, path: Path) -> tuple[int, int]:
    """(N, number of errors) from `committed`, checked against the rows each dataset has and the bytes
    the file stores for them (so that reading the index cannot ask for more memory than the file holds)."""
    values = f["committed"][:2]
    n, n_errors = (int(v) for v in values)
    if n < 0 or n_errors < 0:
        raise _damaged(path, f"its committed record {values.tolist()} is negative")
    for names, count, what in (((*PER_SAMPLE_STRINGS, "label"), n, "samples"), (OFFSETS, n + 1, "offsets"),
                               (ERRORS, n_errors, "errors")):
        for name in names:
            ds = f[name]
            if ds.shape[0] < count:
                raise _damaged(path, f"it declares {count} {what}, but {name} has {ds.shape[0]} rows")
            if count * ds.dtype.itemsize > _stored_bytes(ds):
                raise _damaged(path, f"it declares {count} {what}, but the file stores only "
                                     f"{ds.id.get_storage_size()} bytes of {name}")
    return n, n_errors


def decode_strings(values: Sequence[Any], path: Path, dataset: str, ids: Sequence[str] | None = None,
                   first: int = 0) -> list[str]:
    """The rows of an HDF5 string dataset as str; KebrError naming the dataset and the sample (its id
    where `ids` is given, else its row number from `first`) at the first row that is not UTF-8."""
    out = []
    for row, value in enumerate(values, start=first):
        try:
            out.append(value.decode("utf-8") if isinstance(value, bytes) else _text(value, path, dataset))
        except (UnicodeError, KebrError):
            sample = f"sample {ids[row]!r}" if ids is not None and row < len(ids) else f"row {row}"
            raise _damaged(path, f"{dataset} of {sample} is not valid UTF-8 text") from None
    return out


def check_ids(ids: Sequence[str], path: Path) -> None:
    """Ids are unique (every writer refuses a second sample of an id)."""
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise _damaged(path, f"id {twice!r} occurs twice")


def check_frames_index(path: Path, modality: str, offsets: np.ndarray, data: h5py.Dataset, width: int,
                       ids: Sequence[str]) -> None:
    """offsets (N+1,) of */data (T, d): start at 0, never go backwards, end within T rows; the frames
    they cover are stored in the file; no sample holds more than MAX_SAMPLE_BYTES as float32."""
    rows = data.shape[0]
    backwards = np.flatnonzero(np.diff(offsets) < 0)
    if len(backwards):
        raise _damaged(path, f"{modality}/offsets give sample {ids[int(backwards[0])]!r} a negative length")
    if len(offsets) and offsets[0] != 0:
        raise _damaged(path, f"{modality}/offsets do not start at 0")
    end = int(offsets[-1]) if len(offsets) else 0
    if end > rows:
        raise _damaged(path, f"{modality}/offsets point past the {rows} frames of {modality}/data")
    if end and end * data.shape[1] * data.dtype.itemsize > _stored_bytes(data):
        raise _damaged(path, f"{modality}/offsets cover {end} frames, but the file stores only "
                             f"{data.id.get_storage_size()} bytes of {modality}/data")
    lengths = np.diff(offsets)
    if len(lengths) and int(lengths.max()) * max(width, 1) * 4 > MAX_SAMPLE_BYTES:
        i = int(lengths.argmax())
        raise _damaged(path, f"sample {ids[i]!r} has {int(lengths[i])} {modality} frames, more than the "
                             f"{MAX_SAMPLE_BYTES >> 30} GiB a sample may take")


def frame_read_error(path: Path, dataset: str, sample_id: str, error: BaseException) -> KebrError:
    """The sentence for frames HDF5 could not read (a damaged chunk): the store, the dataset and the sample."""
    return _damaged(path, f"the {dataset} frames of sample {sample_id!r} cannot be read ({error})")
