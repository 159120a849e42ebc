"""What an MMSA pickle may hold, checked while it is read (issue 28: pickles with the wrong content).

`importers.load_data_pickle` already refuses every global that could run code. This module bounds and types
the data that remains:

- sizes: a pickle is read through `BoundedReader`, which never asks for more bytes than the file has left
  (an opcode may declare 16 GiB of bytes in a 20-byte file), and every numpy array is rebuilt as a
  `CheckedArray`, whose `__setstate__` refuses a declared shape the data in the file does not fill (an
  object array of 2·10⁹ items, 14.9 GiB of pointers, from a list of two). Memory is thus bounded by the
  file's own size; no option is needed to raise a limit.
- content: `check_split_content` makes sure ids and texts are strings (valid UTF-8, no NUL character,
  which an HDF5 string cannot hold) and that labels, frames and lengths are numbers, naming the split,
  the key and the first sample that is not.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from kebr_core.errors import KebrError

_TEXT_KEYS = ("id", "raw_text")
_NUMBER_KEYS = ("regression_labels", "audio", "vision", "audio_lengths", "vision_lengths")


class DeclaredSizeError(Exception):
    """An array whose declared shape its data does not fill; args: (declared items, items present, dtype)."""


class BoundedReader:
    """A binary file for `pickle.Unpickler` whose reads never ask for more than the bytes left in it."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(self._left if n is None or n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self._f.readline(self._left)
        self._left -= len(data)
        return data


class CheckedArray(np.ndarray):
    """An ndarray being unpickled: its state must fill the shape it declares (see the module docstring)."""

    def __setstate__(self, state: tuple) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise DeclaredSizeError(0, 0, "an array state numpy does not write")
        shape, dtype, data = state[-4], state[-3], state[-1]
        try:
            declared = math.prod(int(s) for s in shape)
            dtype = np.dtype(dtype)
        except (TypeError, ValueError):
            raise DeclaredSizeError(0, 0, "an array state numpy does not write") from None
        if dtype.hasobject:
            present = len(data) if isinstance(data, (list, tuple)) else -1
        else:
            present = len(data) // dtype.itemsize if isinstance(data, (bytes, bytearray)) and dtype.itemsize else -1
        if declared != present or any(int(s) < 0 for s in shape):
            raise DeclaredSizeError(declared, max(present, 0), str(dtype))
        super().__setstate__(state)


class _NdarrayName:
    """What a pickle gets for the global numpy.ndarray: usable only as `_reconstruct`'s class argument
    (calling numpy.ndarray(shape) from a pickle would allocate whatever shape it names)."""


def checked_reconstruct(reconstruct: Any) -> Any:
    """numpy's `_reconstruct(cls, shape, dtype)` as a pickle may call it: always an empty CheckedArray
    (numpy itself writes shape (0,)), whose state then brings the real shape and data."""

    def rebuild(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
        if cls is not _NdarrayName:
            raise DeclaredSizeError(0, 0, "an array of a class numpy does not write")
        return reconstruct(CheckedArray, (0,), dtype)

    return rebuild


NDARRAY_NAME = _NdarrayName


def plain(value: Any) -> Any:
    """The unpickled value with every CheckedArray turned back into a plain ndarray (a view, no copy)."""
    if isinstance(value, np.ndarray):
        array = value.view(np.ndarray) if isinstance(value, CheckedArray) else value
        if array.dtype.hasobject:
            for index, item in np.ndenumerate(array):
                if isinstance(item, (np.ndarray, dict, list, tuple)):
                    array[index] = plain(item)
        return array
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


def declared_size_message(path: Path, error: DeclaredSizeError) -> str:
    declared, present, dtype = error.args
    if not declared and not present:
        return f"MMSA pickle {path} holds {dtype}; it was refused."
    return (f"MMSA pickle {path} declares an array of {declared:,} {dtype} items but holds the data of {present:,}; "
            "it was refused before anything was allocated (a damaged or crafted file).")


def _kind(value: Any) -> str:
    """What a value is, as a sentence says it: "text", "a dict", "a list"."""
    return "text" if isinstance(value, (str, bytes, np.str_, np.bytes_)) else f"a {type(value).__name__}"


def check_split_content(arrays: dict[str, np.ndarray], split: str, path: Path) -> dict[str, np.ndarray]:
    """The split's arrays with ids and texts as str (object arrays), numbers as numeric arrays.

    KebrError naming the split, the key and the first sample when an id or text is not a string, not
    UTF-8 or holds a NUL; when a label, frame or length is not a number; when a length is negative or not
    finite."""
    out = dict(arrays)
    ids: list[str] = []
    for key in _TEXT_KEYS:
        texts = []
        for i, value in enumerate(arrays[key].reshape(-1).tolist() if arrays[key].ndim else [arrays[key].item()]):
            where = f"{split}/{key} of sample {i}" + (f" ({ids[i]!r})" if key != "id" and i < len(ids) else "")
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise KebrError(f"MMSA pickle {path}: {where} is not valid UTF-8 text.") from None
            if not isinstance(value, str):
                raise KebrError(f"MMSA pickle {path}: {where} is {_kind(value)}, not text.")
            if "\x00" in value:
                raise KebrError(f"MMSA pickle {path}: {where} holds a NUL character, which a store cannot hold.")
            texts.append(value)
        if key == "id":
            ids = texts
        out[key] = np.array(texts, dtype=object)
    for key in _NUMBER_KEYS:
        if key not in arrays:
            continue
        value = arrays[key]
        if value.dtype.kind not in "biuf":
            out[key] = value = _as_numbers(value, split, key, path, ids)
        if key.endswith("_lengths"):
            bad = np.flatnonzero(~np.isfinite(value.astype(np.float64)) | (value < 0)) if value.size else []
            if len(bad):
                i = int(bad[0])
                raise KebrError(f"MMSA pickle {path}: {split}/{key} of sample {i} ({ids[i]!r}) is {value[i].item()!r}, "
                                "not a frame count.")
    return out


def _as_numbers(value: np.ndarray, split: str, key: str, path: Path, ids: list[str]) -> np.ndarray:
    """An object array of numbers as float64; KebrError at the first sample holding anything else (text, a dict)."""
    if value.dtype.kind == "O":
        for i in range(len(value)):
            row = np.asarray(value[i], dtype=object).reshape(-1)
            wrong = next((v for v in row.tolist() if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            if wrong is not None:
                raise KebrError(f"MMSA pickle {path}: {split}/{key} of sample {i} ({ids[i]!r}) holds "
                                f"{_kind(wrong)}, not numbers.")
        try:
            return value.astype(np.float64)
        except (TypeError, ValueError):  # rows of unequal lengths: not the (N, L, d) MMSA writes
            raise KebrError(f"MMSA pickle {path}: {split}/{key} is not an array of numbers (rows of unequal "
                            "lengths?).") from None
    raise KebrError(f"MMSA pickle {path}: {split}/{key} holds {value.dtype} values, not numbers.")
