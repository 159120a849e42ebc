"""Decoding with PyAV: a video's audio track as mono float32 and its pictures sampled at a fixed fps.

PyAV bundles FFmpeg, so every container/codec FFmpeg reads works without a system ffmpeg. Decoding
errors become `MediaError` with one sentence; the pipeline records it for that video and goes on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from kebr_core.extract.limits import MAX_LAST_PICTURE_S, past_max_duration
from kebr_core.optional import OptionalModule

av = OptionalModule("av", "av", "Reading audio and video")  # PyAV: imported when media are first read or written

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")


class MediaError(Exception):
    """A media file that cannot be used (missing, empty, corrupt, no streams); the message is one sentence."""


@dataclass(frozen=True)
class MediaInfo:
    """What a container holds. `duration` is in seconds (0.0 when the container does not say)."""

    duration: float
    has_audio: bool
    has_video: bool
    width: int = 0
    height: int = 0
    video_fps: float = 0.0


class Decoded(NamedTuple):
    """Progress within one video's decode: `seconds` of its `what` ("audio" or "pictures") decoded so far,
    of about `expected` seconds. `expected` is the header's duration, an estimate only (the decode is
    bounded by what the file holds, never by it): at most the --max-duration bound, raised to `seconds`
    when the stream runs past it or the header declares nothing, and equal to `seconds` in the last event
    (`finished`), whatever the header said. `id`: the video's, filled in by `Extractor.process`."""

    what: str
    seconds: float
    expected: float
    finished: bool = False
    id: str = ""


DecodeProgress = Callable[[Decoded], None]
# Events per second at most: a bar moves smoothly and a worker's events cost the parent nothing.
DECODE_EVENTS_PER_S = 4.0


class DecodeMeter:
    """Turns the seconds decoded of one stream into `Decoded` events: the first at once, then at most
    DECODE_EVENTS_PER_S a second, and the last (`finish`) always. The seconds reported never go back
    (a crafted file's timestamps may)."""

    def __init__(self, report: DecodeProgress | None, what: str, declared: float, max_seconds: float) -> None:
        self.report, self.what = report, what
        self.expected = min(declared, max_seconds) if declared > 0 else 0.0
        self.seconds = 0.0  # the most reported so far
        self._last = -math.inf

    def __call__(self, seconds: float) -> None:
        now = time.monotonic()
        if self.report is not None and now - self._last >= 1.0 / DECODE_EVENTS_PER_S:
            self._last = now
            self.seconds = max(self.seconds, seconds)
            self.report(Decoded(self.what, self.seconds, max(self.expected, self.seconds)))

    def finish(self, seconds: float) -> None:
        if self.report is not None:
            self.seconds = max(self.seconds, seconds)
            self.report(Decoded(self.what, self.seconds, self.seconds, finished=True))


def _declared_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """The duration the header declares for `stream` (the container's when the stream has none); 0.0 if none."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else 0.0


def _open(path: Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is an empty (zero-length) file")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path} cannot be opened as a video ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def probe(path: Path) -> MediaInfo:
    """Read the container header only (no decoding)."""
    with _open(path) as container:
        return _info(container)


def _info(container: av.container.InputContainer) -> MediaInfo:
    duration = container.duration / av.time_base if container.duration else 0.0
    v = container.streams.video[0] if container.streams.video else None
    return MediaInfo(
        duration=float(duration),
        has_audio=bool(container.streams.audio),
        has_video=v is not None,
        width=v.codec_context.width if v is not None else 0,
        height=v.codec_context.height if v is not None else 0,
        video_fps=float(v.average_rate) if v is not None and v.average_rate else 0.0,
    )


def read_audio(path: Path, rates: tuple[int, ...] = (22050,), max_seconds: float = math.inf,
               progress: DecodeProgress | None = None) -> dict[int, np.ndarray] | None:
    """Decode the first audio stream once, down-mixed to mono and resampled to every rate in `rates`.

    Returns {rate: (n_samples,) float32 in [-1, 1]}, or None when the file has no audio stream.
    One decode feeds several FFmpeg resamplers, so features (22050 Hz) and ASR (16 kHz) share it.
    MediaError once more than `max_seconds` of audio were decoded (counted in decoded samples, not
    taken from the header). `progress`: `Decoded("audio", ...)` events while decoding (`DecodeMeter`).
    """
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resamplers = {r: av.AudioResampler(format="flt", layout="mono", rate=r) for r in rates}
        chunks: dict[int, list[np.ndarray]] = {r: [] for r in rates}

        def take(rate: int, frames: list[av.AudioFrame]) -> None:
            for f in frames:
                # packed float, mono: shape (1, n)
                chunks[rate].append(f.to_ndarray().reshape(-1))

        decoded = 0.0  # seconds of audio decoded so far
        meter = DecodeMeter(progress, "audio", _declared_seconds(container, stream), max_seconds)
        try:
            for frame in container.decode(stream):
                meter(decoded)
                decoded += frame.samples / frame.sample_rate if frame.sample_rate else 0.0
                if decoded > max_seconds:
                    raise MediaError(past_max_duration(path, "audio", decoded, max_seconds))
                frame.pts = None  # the resampler re-times; stale pts from odd files only cause warnings
                for r, res in resamplers.items():
                    take(r, res.resample(frame))
            for r, res in resamplers.items():
                take(r, res.resample(None))  # flush the resampler's delay line
        except av.FFmpegError as e:
            raise MediaError(f"{path}: the audio track cannot be decoded ({_reason(e)})") from None
        # AAC and other block codecs pad the last frame; the stream's declared duration (an MP4 edit
        # list) says where the signal ends, so the padding does not become extra feature frames.
        # (Matroska declares none: there up to one codec frame of padding, < 50 ms, stays.)
        declared = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
        out = {}
        for r, c in chunks.items():
            y = np.concatenate(c).astype(np.float32, copy=False) if c else np.zeros(0, np.float32)
            out[r] = y[: int(round(declared * r))] if declared else y
        meter.finish(min(declared, decoded) if declared else decoded)
        return out


def iter_frames(path: Path, fps: float, max_side: int | None = 640, threads: int = 0,
                max_seconds: float = math.inf, progress: DecodeProgress | None = None) -> Iterator[np.ndarray]:
    """Yield RGB pictures (H, W, 3) uint8 sampled at `fps`: the picture shown at t = 0, 1/fps, 2/fps, ...

    A decoded picture with presentation time t_i is on screen over [t_i, t_{i+1}); the last one for one
    source frame period. Each target time takes the picture on screen then, so a clip of duration D
    gives ceil(D * fps) pictures whatever the source frame rate (sample-and-hold, no interpolation).
    Only the pictures that are used are converted to RGB (and shrunk so the longer side is at most
    `max_side`: landmark models work at ~200 px, and conversion of HD frames dominates otherwise).
    `threads`: FFmpeg decoding threads, 0 = as many as cores (one process); extraction workers use 1,
    since the workers are the parallelism and a second decoding thread each would oversubscribe the cores.
    Bounded by the pictures decoded, not the header: MediaError when a decoded picture's time passes
    `max_seconds`, and the last picture is held for at most MAX_LAST_PICTURE_S (a crafted frame rate of
    1e-6 fps would otherwise hold it for days). `progress`: `Decoded("pictures", t, ...)` events as the
    consumer takes the pictures (`DecodeMeter`), the last at the end of the last picture.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    with _open(path) as container:
        if not container.streams.video:
            return
        stream = container.streams.video[0]
        if threads == 1:
            stream.thread_type = "NONE"
        else:
            stream.thread_type = "AUTO"
            stream.thread_count = threads
        tb = float(stream.time_base) if stream.time_base else 0.0
        period = min(1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / 25.0, MAX_LAST_PICTURE_S)
        start = None
        k = 0  # next target index
        prev: av.VideoFrame | None = None
        prev_t = 0.0
        size: tuple[int, int] | None = None
        meter = DecodeMeter(progress, "pictures", _declared_seconds(container, stream), max_seconds)

        def convert(frame: av.VideoFrame) -> np.ndarray:
            nonlocal size
            if size is None:
                w, h = frame.width, frame.height
                scale = min(1.0, max_side / max(w, h)) if max_side else 1.0
                # even sizes keep FFmpeg's swscale on its fast paths
                size = (max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2))
            if (frame.width, frame.height) == size:
                return frame.to_ndarray(format="rgb24")
            return frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()

        try:
            for frame in container.decode(stream):
                t = frame.pts * tb if frame.pts is not None and tb else (prev_t + period if prev is not None else 0.0)
                if start is None:
                    start = t
                t -= start  # clips cut from longer videos may start at a non-zero pts
                if t > max_seconds:
                    raise MediaError(past_max_duration(path, "pictures", t, max_seconds))
                meter(max(t, 0.0))
                if prev is not None:
                    rgb = None
                    while k / fps < t - 1e-9:  # targets before this picture belong to the previous one
                        rgb = convert(prev) if rgb is None else rgb
                        yield rgb
                        k += 1
                prev, prev_t = frame, t
            if prev is not None:
                rgb = None
                end = min(prev_t + period, max_seconds)
                while k / fps < end - 1e-9:
                    rgb = convert(prev) if rgb is None else rgb
                    yield rgb
                    k += 1
                meter.finish(end)
        except av.FFmpegError as e:
            raise MediaError(f"{path}: the video track cannot be decoded ({_reason(e)})") from None


def expected_frames(duration: float, fps: float) -> int:
    """Pictures `iter_frames` yields for a clip of `duration` seconds: ceil(duration * fps)."""
    return int(math.ceil(duration * fps - 1e-9))
