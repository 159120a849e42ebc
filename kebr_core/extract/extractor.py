"""One video -> one store sample: the per-video work of `kebr extract` and `kebr predict` (docs/design.md §2-3).

    extractor = Extractor(ExtractOptions(vision="mediapipe", asr="none"))
    result = extractor.process(VideoItem(id="clip01", path=Path("clip01.mp4")))   # an ItemResult

`Extractor.process` (in a worker process, or in this process with `workers=0`) decodes the audio
once with PyAV (22050 Hz for features, 16 kHz for ASR), computes the audio feature set, finds the
transcript (manifest text or transcript table -> sidecar -> ASR), samples the pictures at `fps` and
runs the vision backend. Nothing is written here: `ItemResult` carries the sample (or the reason
there is none) and what is missing from it back to the caller, which alone writes the store.

Transcripts: `text_source` is `manifest`, `table` (see kebr_core.extract.transcripts), `sidecar`, or
`asr:<backend>` (the ASR's output, possibly empty); with `asr="none"` and no other source the text is
empty and the source `asr:none`, counted as "no ASR" (nothing was listened for), not as "no speech"
(measured: silence, or an ASR that heard nothing).

Bad input never raises: a missing, empty, corrupt or undecodable file becomes `ItemResult.error`; a
video without an audio track, with silence, or without a face is still a sample (zero-length streams,
empty text) and its result says which.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from kebr_core.data.store import Sample
from kebr_core.errors import KebrError
from kebr_core.extract import audio as audio_mod
from kebr_core.extract.asr import ASR_SAMPLE_RATE, AsrBackend, check_asr_options, make_asr
from kebr_core.extract.inputs import VideoItem
from kebr_core.extract.limits import DEFAULT_MAX_DURATION_S, MAX_FPS
from kebr_core.extract.transcripts import find_sidecar, read_sidecar
from kebr_core.extract.video import VIDEO_EXTENSIONS, Decoded, DecodeProgress, MediaError, iter_frames, probe, read_audio
from kebr_core.extract.vision import VisionBackend, check_vision_backend, make_vision
from kebr_core.shards import check_part

STAGES = ("decode", "audio", "asr", "vision")  # where a video's seconds go (ItemResult.timings)


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
    shard: tuple[int, int] | None = None  # (i, n): this job's part, 0 <= i < n (`kebr_core.shards`)
    max_side: int = 640  # pictures are shrunk to this longer side before face detection
    silence_dbfs: float = -60.0  # an audio track quieter than this (RMS) counts as "no speech"
    max_duration: float = DEFAULT_MAX_DURATION_S  # seconds of a video decoded at most (kebr_core.extract.limits)

    def validate(self) -> None:
        audio_mod.get_feature_set(self.audio_features)
        check_vision_backend(self.vision, self.openface_dir)
        check_asr_options(self.asr, self.asr_model)
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise KebrError(f"--fps must be a positive number, not {self.fps}")
        if self.fps > MAX_FPS:
            raise KebrError(f"--fps {self.fps:g} is more than the {MAX_FPS:g} pictures per second kebr samples at most "
                            "(above the video's own rate, sampling only repeats pictures)")
        if not (self.max_duration > 0 and not math.isnan(self.max_duration)):
            raise KebrError(f"--max-duration must be a positive number of seconds, not {self.max_duration}")
        if self.max_side < 64:
            raise KebrError(f"--max-side must be at least 64 pixels, not {self.max_side}")
        if self.workers < 0:
            raise KebrError(f"--jobs must be 0 (in this process) or more, not {self.workers}")
        check_part(self.shard, "--shard")



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
    media_seconds: float = 0.0  # the longest stream as decoded (the header's duration only when none was)
    timings: dict[str, float] = field(default_factory=dict)



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
        self.vision: VisionBackend = make_vision(options.vision, options.fps, options.openface_dir, options.max_duration)
        self._asr: AsrBackend | None = None

    @property
    def asr(self) -> AsrBackend | None:
        if self._asr is None and self.options.asr != "none":  # loaded on first need (~0.3 s)
            self._asr = make_asr(self.options.asr, self.options.asr_model)
        return self._asr

    def process(self, item: VideoItem, progress: DecodeProgress | None = None) -> ItemResult:
        """Extract one video; every failure becomes `ItemResult.error` (the batch goes on).
        progress: called with this video's `Decoded` events (its id filled in) while its audio and its
        pictures are decoded; the pictures' events move as face detection consumes them."""
        lengths: list[float] = []  # seconds of each stream decoded to its end: the video's real length

        def report(event: Decoded) -> None:
            if event.finished:
                lengths.append(event.seconds)
            if progress is not None:
                progress(event._replace(id=item.id))

        try:
            return self._process(item, report, lengths)
        except MediaError as e:
            return ItemResult(item.id, error=str(e))
        except Exception as e:  # a backend failing on one odd file must not stop a batch of 10^5
            return ItemResult(item.id, error=f"{item.path}: {type(e).__name__}: {e}")

    def _process(self, item: VideoItem, progress: DecodeProgress, lengths: list[float]) -> ItemResult:
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
        text, source, origin = item.text, item.text_source, f"the {item.text_source}"
        if text is None:
            sidecar = find_sidecar(path)
            if sidecar is not None:
                text, source, origin = read_sidecar(sidecar), "sidecar", str(sidecar)
        if text is not None and "\x00" in text:  # the store cannot hold it (HDF5 strings end at NUL)
            raise MediaError(f"{path}: the transcript from {origin} holds a NUL character (a UTF-16 file without "
                             "a byte-order mark?); save it as UTF-8 and rerun with --retry-failed")
        need_asr = text is None and opt.asr != "none"

        # Audio: one decode, resampled for the features and (if needed) for ASR.
        y, y16 = np.zeros(0, np.float32), np.zeros(0, np.float32)
        if info.has_audio:
            rates = (audio_mod.SAMPLE_RATE, ASR_SAMPLE_RATE) if need_asr else (audio_mod.SAMPLE_RATE,)
            decoded = read_audio(path, rates, opt.max_duration, progress) or {}
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
            frames = _Timed(iter_frames(path, opt.fps, opt.max_side, self.decode_threads, opt.max_duration, progress)
                            if info.has_video else ())
            feats_v, n_no_face = self.vision.features(frames, video=path, key=item.key)
            timings["decode"] += frames.seconds
            timings["vision"] += time.perf_counter() - t - frames.seconds
        elif self.vision.name != "none":
            feats_v, n_no_face = self.vision.features((), video=path, key=item.key)
            timings["vision"] += time.perf_counter() - t
        else:
            feats_v = np.zeros((0, 0), np.float32)

        duration = max(lengths, default=0.0) or info.duration  # what was decoded, not what the header says
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

