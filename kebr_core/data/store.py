"""The HDF5 feature store: many utterances with ragged audio/vision sequences in one file (docs/design.md §2).

Layout (format_version 1; every name below is part of the public format):

    attrs        format_version, created, kebr_version, audio_features, vision_features,
                 audio_rate_hz, vision_fps (NaN = unknown), extractor (JSON text), source
    id           (N,) utf-8 vlen     unique sample id, e.g. "<video_id>$_$<clip_id>"
    text         (N,) utf-8 vlen     transcript
    text_source  (N,) utf-8 vlen     manifest | table | sidecar | asr:<backend> | import
    label        (N,) float32        sentiment in [-3, 3]; NaN = unlabeled
    split        (N,) utf-8 vlen     train | valid | test | unlabeled
    audio/data   (T_a, d_a) float32  all audio frames back to back (chunked, uncompressed by default); sample i is
    audio/offsets (N+1,) int64         data[offsets[i]:offsets[i+1]] (zero length = no audio)
    vision/data, vision/offsets      the same for vision
    errors/id, errors/message        ids that failed (extraction), with one message each; not samples
    committed    (2,) int64          [N, number of errors]: the commit record (see below)

Crash safety. `StoreWriter` buffers samples and commits them in three steps, each ended by a flush:
(1) append the frames to `*/data`, (2) append the rows of every per-sample dataset and the offsets,
(3) write `committed`. Readers trust only `committed`: rows beyond it are leftovers of a writer that
was killed before step 3, and the next writer truncates them. Two HDF5 settings make the earlier
bytes immutable between commits: the file-space strategy "none" (freed space is never reused, so
nothing a committed row points at is overwritten) and a metadata cache that never evicts (HDF5
metadata reaches the file only in our flushes, not at arbitrary moments in between). A process
killed at any point (SIGKILL included) therefore leaves a file that opens and holds every committed
sample. One more leftover is cleared on resume: HDF5 writes raw chunks before metadata, so a kill
inside a commit can leave uncommitted string rows pointing at heap objects that never reached the
file; the resumed writer zeroes those rows (`_clear_stale_vlen_rows`) before it reuses them.
Tested by killing writers with SIGKILL (tests/test_store.py). The remaining, rare window: a kill in
the middle of a flush that splits a chunk-index B-tree node (once per ~32 new chunks of a dataset).
Flushes hand data to the OS (no fsync): a killed process loses nothing committed, a power cut may.

"Reported as written" means committed: `StoreWriter.committed` counts them and `on_commit` is called
with their ids after each commit. `add` returns True when the sample is accepted (buffered); it is
committed by the next automatic commit (every `flush_every` samples or `flush_seconds` seconds),
by `flush()`, or by `close()`. `flush_every=1` makes every `add` durable before it returns.

Reading is lazy: `FeatureStore` reads the small per-sample index (ids, labels, splits, offsets) and the
texts once (packed: a few bytes per clip beyond the text, `packed_strings.py`), checks them and the
layout (`store_checks.py`: a store may come from someone else), closes the file, and opens it again on
the first frame read in each process, so DataLoader workers each get their own handle. Frames are read per sample; memory does not grow with the frames stored.

One module, though over 400 lines, because it is one cohesive thing: the file format. The layout, its
opening (`_open_h5`; what a valid file is lives in `store_checks.py`), the writer's commit protocol and
the reader that trusts only `committed` are one contract; the writer and the reader share every private
piece of it, and a change to one side is a change to the format that the other side must see in the
same file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np

from kebr_core import __version__
from kebr_core.data.packed_strings import Categories, PackedStrings
from kebr_core.data.store_checks import (check_frames_index, check_ids, check_layout, decode_strings,
                                         frame_read_error, read_attrs, read_committed)
from kebr_core.errors import KebrError

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test", "unlabeled")

_STR = h5py.string_dtype("utf-8")
_PER_SAMPLE = ("id", "text", "text_source", "label", "split")  # (N,) datasets besides the offsets
_INDEX_CHUNK = 4096  # rows per chunk of the per-sample datasets: few chunks, so the B-tree rarely splits
# Frames per chunk of */data, and no compression by default: measured with `bench/store.py --sweep`
# (random float32 features, single-process random reads): uncompressed 64 KB / 256 KB / 1 MB chunks
# read 5.6k / 11.3k / 11.9k samples/s; lzf or gzip-1 save 7–14 % of the bytes but read 0.1k–1.5k
# samples/s, because every sample read decompresses whole chunks. `compression=` still offers them.
_DATA_CHUNK_BYTES = 256 * 1024
# Free space a commit must leave: every dataset may allocate a new chunk, and metadata is written too.
_COMMIT_MARGIN_BYTES = 16 * 1024 * 1024
_MAX_METADATA_CACHE = 64 << 20  # bytes of HDF5 metadata a writer keeps before it reopens the file


@dataclass
class Sample:
    """One utterance.

    audio (La, d_a) and vision (Lv, d_v) are float32; La or Lv may be 0 (no audio / no face).
    """

    id: str
    text: str
    audio: np.ndarray
    vision: np.ndarray
    label: float = float("nan")  # NaN = unlabeled
    split: str = "unlabeled"  # train | valid | test | unlabeled
    text_source: str = "import"  # manifest | table | sidecar | asr:<backend> | import


def _valid_text_source(source: str) -> bool:
    return source in ("manifest", "table", "sidecar", "import") or (source.startswith("asr:") and len(source) > 4)


def _open_h5(path: Path, mode: str, **kw: Any) -> h5py.File:
    """h5py.File with the user-facing failures turned into one sentence."""
    if not path.exists():
        raise KebrError(f"Store {path} does not exist.")
    if path.is_dir():
        raise KebrError(f"Store {path} is a directory, not an HDF5 file.")
    if mode == "r" and not h5py.is_hdf5(str(path)):
        raise KebrError(f"{path} is not an HDF5 file (a kebr feature store is one).")
    try:
        # best-effort: lock where the file system supports it (a writer excludes readers), else go on.
        return h5py.File(path, mode, locking="best-effort", **kw)
    except OSError as e:
        if isinstance(e, BlockingIOError) or "errno = 11" in str(e) or "temporarily unavailable" in str(e):
            raise KebrError(f"Store {path} is being written by another process; wait for it to finish.") from None
        raise KebrError(f"Store {path} cannot be opened as HDF5 ({e}).") from None


def _string_chunks(f: h5py.File, name: str, n: int, path: Path,
                   ids: Sequence[str] | None = None) -> Iterator[list[str]]:
    """The first n rows of string dataset `name`, decoded and checked (`decode_strings`: a row that is not
    UTF-8 is refused, naming its sample) in chunks of _INDEX_CHUNK rows."""
    ds = f[name]
    for lo in range(0, n, _INDEX_CHUNK):
        yield decode_strings(ds[lo: min(n, lo + _INDEX_CHUNK)], path, name, ids, first=lo)


class FeatureStore:
    """Reader of a feature store. Lazy: opens the HDF5 file on first frame access in each process.

    The per-sample index (ids, labels, splits, text sources, offsets) and the texts are read and checked
    at construction (`store_checks`: a text that is not UTF-8 is refused before any command starts its
    work, and every command reads the texts anyway); frames are read per sample.
    Raises KebrError for a file that is not HDF5, has another format_version or misses datasets.
    """

    def __init__(self, path: str | Path, *, rdcc_nbytes: int | None = None):
        self.path = Path(path)
        with _open_h5(self.path, "r") as f:
            check_layout(f, self.path, FORMAT_VERSION)
            # Uncompressed chunks are read straight from the file (no chunk cache: measured 2× faster
            # for random access, bench/store.py); compressed ones need a cache to decompress into.
            compressed = any(f[f"{m}/data"].compression for m in ("audio", "vision"))
            self._rdcc_nbytes = rdcc_nbytes if rdcc_nbytes is not None else (4 << 20 if compressed else 0)
            n, n_errors = read_committed(f, self.path)
            self.attrs: dict[str, Any] = read_attrs(f, self.path)
            # Per-clip strings packed (`packed_strings`): a few bytes per clip beyond their text, not a Python
            # object each (a 200 K-clip store kept 81 MB of str before).
            self.ids = PackedStrings.build(_string_chunks(f, "id", n, self.path))
            check_ids(self.ids, self.path)
            self.labels: np.ndarray = f["label"][:n].astype(np.float32)
            self._splits = Categories.build(_string_chunks(f, "split", n, self.path, self.ids), SPLITS)
            self._text_sources = Categories.build(_string_chunks(f, "text_source", n, self.path, self.ids))
            self._audio_offsets: np.ndarray = f["audio/offsets"][: n + 1].astype(np.int64)
            self._vision_offsets: np.ndarray = f["vision/offsets"][: n + 1].astype(np.int64)
            self._texts = PackedStrings.build(_string_chunks(f, "text", n, self.path, self.ids))
            self._n_errors = n_errors
            decode_strings(f["errors/id"][:n_errors], self.path, "errors/id")  # an index too: checked now, read later
            self._check_index(f)
        self.audio_features: list[str] = self.attrs["audio_features"]
        self.vision_features: list[str] = self.attrs["vision_features"]
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _check_index(self, f: h5py.File) -> None:
        """Refuse, naming the field, an index no kebr writer produces (a foreign or edited file): splits
        outside SPLITS, offsets that go backwards (a negative length), past the frames or over frames the
        file does not hold, a sample too large to read, feature names that do not match the frames' width.
        Every command opens stores here, so none reads such a file."""
        unknown = sorted(set(self._splits.names[len(SPLITS):]))
        if unknown:
            raise KebrError(f"Store {self.path} is damaged: its split field holds {unknown[0]!r}, not one of "
                            f"{', '.join(SPLITS)}.")
        for modality, offsets in (("audio", self._audio_offsets), ("vision", self._vision_offsets)):
            data = f[f"{modality}/data"]
            names = self.attrs[f"{modality}_features"]
            if data.shape[1] != len(names):
                raise KebrError(f"Store {self.path} is damaged: {modality}/data has {data.shape[1]} columns but the "
                                f"store names {len(names)} {modality} features.")
            check_frames_index(self.path, modality, offsets, data, len(names), self.ids)

    # ── per-process handle ──────────────────────────────────────────────────────────────────────

    def _handle(self) -> h5py.File:
        # A handle inherited through fork() must not be used: each DataLoader worker opens its own.
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self._rdcc_nbytes, locking="best-effort")
            self._pid = os.getpid()
            self._audio_data = self._file["audio/data"]
            self._vision_data = self._file["vision/data"]
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_file", "_pid", "_audio_data", "_vision_data"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file, self._pid = None, None

    def close(self) -> None:
        """Close this process's handle (the next read opens it again)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ── index ───────────────────────────────────────────────────────────────────────────────────

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def texts(self) -> PackedStrings:
        """All transcripts, a sequence of str (read and checked when the store was opened)."""
        return self._texts

    @property
    def splits(self) -> np.ndarray:
        """(N,) str array of every sample's split, built on each call (`split(i)` for one sample)."""
        return self._splits.values()

    @property
    def text_sources(self) -> np.ndarray:
        """(N,) str array of where each text came from, built on each call (`text_source(i)` for one)."""
        return self._text_sources.values()

    def split(self, i: int) -> str:
        return self._splits[i]

    def text_source(self, i: int) -> str:
        return self._text_sources[i]

    def indices(self, split: str | Sequence[str] | None = None) -> np.ndarray:
        """Store indices (ascending, int64) of the samples in `split` (a name or several); None = all."""
        if split is None:
            return np.arange(len(self), dtype=np.int64)
        names = [split] if isinstance(split, str) else list(split)
        unknown = [s for s in names if s not in SPLITS]
        if unknown:
            raise KebrError(f"Unknown split {unknown[0]!r}; a split is one of {', '.join(SPLITS)}.")
        return np.flatnonzero(self._splits.where(names)).astype(np.int64)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """Audio and vision sequence lengths (N,) int64, from the offsets (no frame is read)."""
        return np.diff(self._audio_offsets), np.diff(self._vision_offsets)

    def widths(self) -> tuple[int, int]:
        """The model's audio and vision input widths (d_a, d_v): the feature counts; a text-only store,
        which names none, gets width 1 (the collate gives it one always-masked zero column)."""
        return max(len(self.audio_features), 1), max(len(self.vision_features), 1)

    # ── frames ──────────────────────────────────────────────────────────────────────────────────

    def _frames(self, offsets: np.ndarray, name: str, width: int, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for a store of {len(self)} samples")
        i = int(i) % len(self)
        start, stop = int(offsets[i]), int(offsets[i + 1])
        out = np.empty((stop - start, width), dtype=np.float32)
        if stop > start:
            self._handle()
            data = self._audio_data if name == "audio" else self._vision_data
            try:
                data.read_direct(out, np.s_[start:stop])
            except (OSError, RuntimeError, ValueError, TypeError) as e:
                raise frame_read_error(self.path, f"{name}/data", self.ids[i], e) from None
        return out

    def audio(self, i: int) -> np.ndarray:
        """Audio frames of sample i: (La, d_a) float32, La ≥ 0."""
        return self._frames(self._audio_offsets, "audio", len(self.audio_features), i)

    def vision(self, i: int) -> np.ndarray:
        """Vision frames of sample i: (Lv, d_v) float32, Lv ≥ 0."""
        return self._frames(self._vision_offsets, "vision", len(self.vision_features), i)

    def read_block(self, lo: int, hi: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Audio and vision of samples [lo, hi), one read per modality (for copying stores in bulk)."""
        out = []
        for name, offsets, width in (("audio", self._audio_offsets, len(self.audio_features)),
                                     ("vision", self._vision_offsets, len(self.vision_features))):
            start, stop = int(offsets[lo]), int(offsets[hi])
            frames = np.empty((stop - start, width), dtype=np.float32)
            if stop > start:
                self._handle()
                try:
                    (self._audio_data if name == "audio" else self._vision_data).read_direct(frames, np.s_[start:stop])
                except (OSError, RuntimeError, ValueError, TypeError) as e:
                    raise frame_read_error(self.path, f"{name}/data", self.ids[lo], e) from None
            out.append(np.split(frames, offsets[lo + 1: hi] - start) if hi > lo else [])
        return out[0], out[1]

    def text(self, i: int) -> str:
        return self._texts[i]

    def sample(self, i: int) -> Sample:
        i = int(i)
        return Sample(
            id=self.ids[i], text=self.text(i), audio=self.audio(i), vision=self.vision(i),
            label=float(self.labels[i]), split=self.split(i), text_source=self.text_source(i),
        )

    def errors(self) -> dict[str, str]:
        """{id: message} of the ids that failed and are not samples (an id retried successfully, with
        `kebr extract --retry-failed`, is a sample and no longer an error)."""
        if self._n_errors == 0:
            return {}
        with h5py.File(self.path, "r", locking="best-effort") as f:
            ids = decode_strings(f["errors/id"][: self._n_errors], self.path, "errors/id")
            messages = decode_strings(f["errors/message"][: self._n_errors], self.path, "errors/message", ids)
        samples = set(self.ids)
        return {i: m for i, m in zip(ids, messages) if i not in samples}

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, {len(self)} samples, audio {len(self.audio_features)}-d, "
                f"vision {len(self.vision_features)}-d)")


class StoreWriter:
    """Append-and-resume writer (context manager).

    Creates the file, or opens an existing store for append; `add` skips ids already present (returns
    False). A killed writer leaves a file that opens and holds every committed sample ("reported as
    written": `committed`, `on_commit`; see the module docstring). Opening an existing store with
    other feature names raises KebrError.

    flush_every / flush_seconds: commit when this many samples are buffered, or when the oldest
    buffered sample has waited this long (checked on `add`). compression: None, "lzf" or "gzip"
    (level 1) for `*/data`; chunk_bytes: target bytes per chunk of `*/data`.
    """

    def __init__(
        self,
        path: str | Path,
        audio_features: list[str],
        vision_features: list[str],
        *,
        audio_rate_hz: float | None = None,
        vision_fps: float | None = None,
        extractor: dict | None = None,
        source: str = "",
        dataset: str = "",
        flush_every: int = 256,
        flush_seconds: float = 2.0,
        on_commit: Callable[[list[str]], None] | None = None,
        compression: str | None = None,
        chunk_bytes: int = _DATA_CHUNK_BYTES,
    ):
        if compression not in (None, "lzf", "gzip"):
            raise ValueError(f"compression must be None, 'lzf' or 'gzip', not {compression!r}")
        self.path = Path(path)
        self.audio_features = [str(n) for n in audio_features]
        self.vision_features = [str(n) for n in vision_features]
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self.on_commit = on_commit
        self._pending: list[Sample] = []
        self._pending_errors: list[tuple[str, str]] = []
        self._pending_since: float | None = None
        self._resumed = self.path.exists()
        if not self._resumed:
            self._create(audio_rate_hz, vision_fps, extractor or {}, source, dataset, compression, chunk_bytes)
        self._f = self._open_for_append()

    # ── open / create ───────────────────────────────────────────────────────────────────────────

    def _create(self, audio_rate_hz, vision_fps, extractor, source, dataset, compression, chunk_bytes) -> None:
        """Build the empty layout in a side file and rename it, so a kill here leaves no half store."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_space([], [])
        tmp = self.path.with_name(self.path.name + ".creating")
        with h5py.File(tmp, "w", fs_strategy="none", locking="best-effort") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs["kebr_version"] = __version__
            f.attrs.create("audio_features", self.audio_features, dtype=_STR)
            f.attrs.create("vision_features", self.vision_features, dtype=_STR)
            f.attrs["audio_rate_hz"] = float("nan") if audio_rate_hz is None else float(audio_rate_hz)
            f.attrs["vision_fps"] = float("nan") if vision_fps is None else float(vision_fps)
            f.attrs["extractor"] = json.dumps(extractor, sort_keys=True)
            f.attrs["source"] = str(source)
            if dataset:  # the `catalog.DATASETS` entry the store was made for (`catalog.dataset_of`)
                f.attrs["dataset"] = str(dataset)
            for name in ("id", "text", "text_source", "split"):
                f.create_dataset(name, (0,), maxshape=(None,), chunks=(_INDEX_CHUNK,), dtype=_STR)
            f.create_dataset("label", (0,), maxshape=(None,), chunks=(_INDEX_CHUNK,), dtype=np.float32)
            for modality, width in (("audio", len(self.audio_features)), ("vision", len(self.vision_features))):
                g = f.create_group(modality)
                offsets = g.create_dataset("offsets", (1,), maxshape=(None,), chunks=(_INDEX_CHUNK,), dtype=np.int64)
                offsets[0] = 0
                if width == 0:  # no feature columns: every sample has zero frames; nothing to chunk
                    g.create_dataset("data", (0, 0), dtype=np.float32)
                    continue
                rows = int(np.clip(chunk_bytes // (4 * width), 16, 1 << 16))
                g.create_dataset(
                    "data", (0, width), maxshape=(None, width), chunks=(rows, width), dtype=np.float32,
                    compression=compression, compression_opts=1 if compression == "gzip" else None,
                    shuffle=compression is not None,
                )
            e = f.create_group("errors")
            for name in ("id", "message"):
                e.create_dataset(name, (0,), maxshape=(None,), chunks=(256,), dtype=_STR)
            f.create_dataset("committed", data=np.zeros(2, dtype=np.int64))
        os.replace(tmp, self.path)

    def _open_for_append(self) -> h5py.File:
        if not h5py.is_hdf5(str(self.path)):
            raise KebrError(f"{self.path} exists but is not an HDF5 file; remove it or choose another output.")
        f = self._open_file()
        try:
            check_layout(f, self.path, FORMAT_VERSION)
            attrs = read_attrs(f, self.path)
            for modality, mine in (("audio", self.audio_features), ("vision", self.vision_features)):
                theirs = attrs[f"{modality}_features"]
                if theirs != mine:
                    raise KebrError(
                        f"Store {self.path} holds {modality} features {describe_features(theirs)}, not {describe_features(mine)}; "
                        f"write to another file."
                    )
            self._n, self._n_errors = read_committed(f, self.path)
            self._truncate_uncommitted(f)
            self._ids = set(decode_strings(f["id"][: self._n], self.path, "id"))
            self._error_ids = set(decode_strings(f["errors/id"][: self._n_errors], self.path, "errors/id"))
            self._sources = json.loads(attrs["sources"]) if "sources" in attrs else [attrs.get("source", "")]
            self._audio_end = int(f["audio/offsets"][self._n])
            self._vision_end = int(f["vision/offsets"][self._n])
        except BaseException:
            f.close()
            raise
        return f

    def _open_file(self) -> h5py.File:
        f = _open_h5(self.path, "r+")
        # Metadata reaches the file only when we flush (see the module docstring).
        config = f.id.get_mdc_config()
        config.incr_mode, config.flash_incr_mode, config.decr_mode = 0, 0, 0
        config.evictions_enabled = False
        f.id.set_mdc_config(config)
        return f

    def _truncate_uncommitted(self, f: h5py.File) -> None:
        """Drop rows and frames a killed writer appended after its last commit."""
        n = self._n
        for name in _PER_SAMPLE:
            if f[name].shape[0] != n:
                f[name].resize((n,))
        for modality in ("audio", "vision"):
            offsets, data = f[f"{modality}/offsets"], f[f"{modality}/data"]
            if offsets.shape[0] != n + 1:
                offsets.resize((n + 1,))
            end = int(offsets[n])
            if data.chunks is not None and data.shape[0] != end:
                data.resize((end, data.shape[1]))
        for name in ("errors/id", "errors/message"):
            if f[name].shape[0] != self._n_errors:
                f[name].resize((self._n_errors,))
        f.flush()

    # ── writing ─────────────────────────────────────────────────────────────────────────────────

    @property
    def committed(self) -> int:
        """Samples durable in the file (a killed writer leaves exactly these)."""
        return self._n

    @property
    def pending(self) -> int:
        """Samples accepted by `add` and not yet committed."""
        return len(self._pending)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._ids

    def __len__(self) -> int:
        return self._n + len(self._pending)

    def add(self, sample: Sample) -> bool:
        """Buffer one sample; False (and nothing written) when its id is already in the store.

        Raises ValueError for a sample that does not fit the store (feature width, split, source, a NUL
        character in its id or text).
        """
        if sample.id in self._ids:
            return False
        audio = self._check_frames(sample, "audio", sample.audio, len(self.audio_features))
        vision = self._check_frames(sample, "vision", sample.vision, len(self.vision_features))
        if sample.split not in SPLITS:
            raise ValueError(f"sample {sample.id!r}: split {sample.split!r} is not one of {SPLITS}")
        if not _valid_text_source(sample.text_source):
            raise ValueError(f"sample {sample.id!r}: text_source {sample.text_source!r} is not "
                             f"manifest|table|sidecar|asr:<backend>|import")
        # HDF5 strings end at NUL: one would fail the whole commit, every rerun again (refused here instead).
        for name, value in (("id", sample.id), ("text", str(sample.text))):
            if "\x00" in value:
                raise ValueError(f"sample {sample.id!r}: its {name} holds a NUL character, which a store cannot hold")
        self._ids.add(sample.id)
        self._pending.append(Sample(sample.id, str(sample.text), audio, vision, float(sample.label),
                                    sample.split, sample.text_source))
        self._maybe_commit()
        return True

    def add_error(self, sample_id: str, message: str) -> None:
        """Record that sample_id failed, with a one-line message (committed with the next commit).

        `FeatureStore.errors()` keeps the last message of an id recorded more than once. A NUL character
        in either is written as the four characters `\\x00`.
        """
        # NUL cannot be stored (see `add`); an error must be recordable whatever the input held.
        sample_id, message = (str(v).replace("\x00", "\\x00") for v in (sample_id, message))
        self._pending_errors.append((sample_id, " ".join(message.split())))
        self._maybe_commit()

    @staticmethod
    def _check_frames(sample: Sample, modality: str, frames: np.ndarray, width: int) -> np.ndarray:
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim == 1 and frames.size == 0:
            frames = frames.reshape(0, width)
        if frames.ndim != 2 or frames.shape[1] != width:
            raise ValueError(f"sample {sample.id!r}: {modality} has shape {frames.shape}, expected (L, {width})")
        if width == 0 and len(frames):
            raise ValueError(f"sample {sample.id!r}: {modality} has {len(frames)} frames, but the store names no "
                             f"{modality} feature columns")
        return frames

    def _maybe_commit(self) -> None:
        now = time.monotonic()
        if self._pending_since is None:
            self._pending_since = now
        if len(self._pending) >= self.flush_every or now - self._pending_since >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Commit every buffered sample and error (three steps, each ended by a flush)."""
        if not self._pending and not self._pending_errors:
            return
        f, batch, errors = self._f, self._pending, self._pending_errors
        n, k = self._n, len(batch)
        self._check_space(batch, errors)

        # 1. frames, appended beyond the committed end: invisible until step 3.
        ends = {}
        for modality, end in (("audio", self._audio_end), ("vision", self._vision_end)):
            arrays = [getattr(s, modality) for s in batch]
            lengths = np.array([len(a) for a in arrays], dtype=np.int64)
            total = int(lengths.sum())
            if total:
                data = f[f"{modality}/data"]
                data.resize((end + total, data.shape[1]))
                data[end:] = np.concatenate(arrays)
            ends[modality] = end + np.cumsum(lengths)
        f.flush()

        # 2. per-sample rows and offsets.
        if k:
            columns = {
                "id": [s.id for s in batch], "text": [s.text for s in batch],
                "text_source": [s.text_source for s in batch], "split": [s.split for s in batch],
                "label": np.array([s.label for s in batch], dtype=np.float32),
            }
            for name, values in columns.items():
                f[name].resize((n + k,))
                if name != "label" and self._resumed:
                    _clear_stale_vlen_rows(f[name], n, n + k)
                f[name][n:] = values
            for modality in ("audio", "vision"):
                offsets = f[f"{modality}/offsets"]
                offsets.resize((n + k + 1,))
                offsets[n + 1:] = ends[modality]
        if errors:
            m = self._n_errors
            for j, name in enumerate(("id", "message")):
                ds = f[f"errors/{name}"]
                ds.resize((m + len(errors),))
                if self._resumed:
                    _clear_stale_vlen_rows(ds, m, m + len(errors))
                ds[m:] = [e[j] for e in errors]
        f.flush()

        # 3. the commit record: one 16-byte write.
        f["committed"][:] = [n + k, self._n_errors + len(errors)]
        f.flush()

        self._n += k
        self._n_errors += len(errors)
        self._error_ids.update(e[0] for e in errors)
        self._audio_end = int(ends["audio"][-1]) if k else self._audio_end
        self._vision_end = int(ends["vision"][-1]) if k else self._vision_end
        self._pending, self._pending_errors, self._pending_since = [], [], None
        # A cache that never evicts grows with what was written (~200 bytes a sample, mostly strings);
        # right after a commit nothing is dirty, so closing and reopening empties it safely.
        if f.id.get_mdc_size()[2] > _MAX_METADATA_CACHE:
            f.close()
            self._f = self._open_file()
        if self.on_commit is not None and k:
            self.on_commit([s.id for s in batch])

    def _check_space(self, batch: list[Sample], errors: list[tuple[str, str]]) -> None:
        """Raise OSError(ENOSPC) before a commit that might not fit on the disk, and drop what is buffered.

        HDF5 cannot recover from a write that fails half-way: a dataset whose dirty chunks cannot be
        written fails to close and crashes the process when freed. Refusing the commit up front leaves
        the store as of its last commit (a rerun resumes from there) and the file closes cleanly.
        """
        frames = sum(s.audio.nbytes + s.vision.nbytes for s in batch)
        strings = sum(len(s.id) + len(s.text) + 32 for s in batch) + sum(len(i) + len(m) for i, m in errors)
        needed = 2 * (frames + 4 * strings) + _COMMIT_MARGIN_BYTES
        free = shutil.disk_usage(self.path.parent).free
        if free < needed:
            self._pending, self._pending_errors, self._pending_since = [], [], None
            raise OSError(errno.ENOSPC, f"No space left on device ({free // 2**20} MiB free, a commit needs "
                                        f"{needed // 2**20} MiB)", str(self.path))

    def close(self) -> None:
        """Commit what is buffered and close the file."""
        if self._f is None:
            return
        try:
            self.flush()
        finally:
            self._f.close()
            self._f = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sources(self) -> list[str]:
        """The inputs this store was written from (the `source` of its creation, then each other one
        passed to `add_source`): `kebr extract` tells a resumed run from another folder's clashing ids."""
        return list(self._sources)

    def add_source(self, source: str) -> None:
        """Record one more input of this store (attribute `sources`, JSON; written with the next commit)."""
        if source not in self._sources:
            self._sources.append(source)
            self._f.attrs["sources"] = json.dumps(self._sources)

    @property
    def error_ids(self) -> set[str]:
        """Ids recorded by `add_error` (committed ones and buffered ones)."""
        return self._error_ids | {e[0] for e in self._pending_errors}

    def __del__(self) -> None:
        # A writer dropped without close() still commits what it accepted (best effort).
        if getattr(self, "_f", None) is not None:
            try:
                self.close()
            except Exception:
                pass


def _clear_stale_vlen_rows(ds: h5py.Dataset, start: int, stop: int) -> None:
    """Zero the raw heap references of rows [start, stop) of a vlen-string dataset, bypassing HDF5.

    A writer killed during a commit can leave rows beyond the committed end whose raw chunk reached
    the file while the global-heap objects it references did not (HDF5 flushes raw data before
    metadata). Overwriting such a row makes HDF5 free the old, missing heap object and fail ("bad heap
    index"), so a resumed writer zeroes those bytes first (zero = no heap object). Committed rows
    (< start) are left untouched.
    """
    rows_per_chunk = ds.chunks[0]
    for chunk_start in range(start // rows_per_chunk * rows_per_chunk, stop, rows_per_chunk):
        if ds.id.get_chunk_info_by_coord((chunk_start,)).byte_offset is None:
            continue  # never allocated: HDF5 fills it with zeros
        filter_mask, raw = ds.id.read_direct_chunk((chunk_start,))
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(rows_per_chunk, -1).copy()
        lo, hi = max(start, chunk_start) - chunk_start, min(stop, chunk_start + rows_per_chunk) - chunk_start
        if rows[lo:hi].any():
            rows[lo:hi] = 0
            ds.id.write_direct_chunk((chunk_start,), rows.tobytes(), filter_mask)


def describe_features(names: list[str]) -> str:
    """A short description of feature columns for messages: '33 columns: a0, a1, a2, …' (no brackets)."""
    if not names:
        return "no columns"
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return f"{len(names)} columns: {shown}"
