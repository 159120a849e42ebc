"""A store's per-clip strings held in a few bytes per clip beyond their text (issue 30).

A list of N Python str costs ~50 bytes of object header per string and 8 for the pointer; worse, decoding
HDF5's variable-length strings row by row frees one bytes object per kept str, and the freed objects sit
between the kept ones, so the allocator cannot give their pages back. Opening a 200 K-clip store that way
kept 81 MB (measured: /proc/self/status VmRSS before and after `FeatureStore(...)`, AMD EPYC).

`PackedStrings` holds one UTF-8 buffer (uint8) and int64 offsets (N+1,) and makes a str only when one is
asked for; `Categories` holds one small-int code per clip for a field with a few distinct values (a split,
a text source). Both are filled chunk by chunk, so no list of N objects is ever built.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence, overload

import numpy as np


class PackedStrings(Sequence[str]):
    """N strings: buffer (B,) uint8 UTF-8, offsets (N+1,) int64; string i is buffer[offsets[i]:offsets[i+1]]."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray):
        self.buffer, self.offsets = buffer, offsets

    @classmethod
    def build(cls, chunks: Iterable[Sequence[str]]) -> "PackedStrings":
        """Pack the strings of `chunks` (each a short list: only one chunk's objects live at a time)."""
        parts: list[bytes] = []
        lengths: list[np.ndarray] = []
        for chunk in chunks:
            encoded = [s.encode("utf-8") for s in chunk]
            parts.append(b"".join(encoded))
            lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        offsets = np.zeros(1 + sum(len(x) for x in lengths), dtype=np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        return cls(np.frombuffer(b"".join(parts), dtype=np.uint8).copy(), offsets)

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes + self.offsets.nbytes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"string {i} of {n}")
        return self.buffer[self.offsets[j]: self.offsets[j + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        whole = self.buffer.tobytes() if len(self.buffer) < (64 << 20) else None  # one copy beats N array slices
        for lo, hi in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist()):
            yield (whole[lo:hi] if whole is not None else self.buffer[lo:hi].tobytes()).decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedStrings):
            return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.buffer, other.buffer)
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    def __add__(self, other: Sequence[str]) -> list[str]:  # as a list of str would: `store.ids + more`
        return [*self, *other]

    def __radd__(self, other: Sequence[str]) -> list[str]:
        return [*other, *self]

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {self.nbytes} bytes)"


class Categories:
    """N values out of a few names: codes (N,) uint8 (int32 past 256 names), names[codes[i]] is value i."""

    def __init__(self, codes: np.ndarray, names: Sequence[str]):
        self.codes, self.names = codes, tuple(names)

    @classmethod
    def build(cls, chunks: Iterable[Sequence[str]], names: Sequence[str] = ()) -> "Categories":
        """Codes for the values of `chunks`; `names` fixes the first codes (e.g. SPLITS), others follow in
        order of first appearance."""
        index = {name: k for k, name in enumerate(names)}
        codes: list[np.ndarray] = []
        for chunk in chunks:
            codes.append(np.fromiter((index.setdefault(v, len(index)) for v in chunk), dtype=np.int64,
                                     count=len(chunk)))
        dtype = np.uint8 if len(index) <= 256 else np.int32
        all_codes = np.concatenate(codes).astype(dtype) if codes else np.zeros(0, dtype=dtype)
        return cls(all_codes, list(index))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> str:
        return self.names[int(self.codes[i])]

    def values(self) -> np.ndarray:
        """(N,) str array of the values (built on each call: N × the longest name × 4 bytes)."""
        return np.asarray(self.names, dtype=str)[self.codes] if self.names else np.zeros(len(self), dtype=str)

    def where(self, wanted: Sequence[str]) -> np.ndarray:
        """(N,) bool: the value is one of `wanted`."""
        wanted = set(wanted)
        codes = [k for k, name in enumerate(self.names) if name in wanted]
        return np.isin(self.codes, codes)

