"""Test media made here, offline: real speech (espeak-ng) over frames of a real face photo.

Importable by any test (`from tests.media import make_clip`, or `import media` with tests/ on the
path). Pictures come from `skimage.data.astronaut()` (Eileen Collins, 512×512, public domain): a
320×320 window that drifts a few pixels per frame, so the face moves a little as in a real video.
Encoding is done by PyAV (H.264 + AAC in MP4/MKV); nothing needs a system ffmpeg.

    clip = make_clip(tmp / "a.mp4")                     # SENTENCE spoken, face moving
    make_clip(tmp / "b.mp4", text=None, duration=2.0)   # face, silent audio track
    make_clip(tmp / "c.mp4", audio=False)               # no audio track
    make_clip(tmp / "d.mp4", face=False)                # no face in any frame
    make_corrupt(tmp / "e.mp4"); make_empty(tmp / "f.mov")
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

# Where the face is in the astronaut photo (x0, y0, x1, y1), pixels: MediaPipe's 478 landmarks span
# x 179-271, y 71-177 (forehead to chin); this box is her face, hairline to chin, ear to ear.
ASTRONAUT_FACE_BOX = (165, 55, 285, 195)
CROP = 320  # side of the moving window cut from the 512×512 photo
CROP_ORIGIN = (70, 10)  # its mean top-left corner (x, y): the face sits near the window's centre
SPEECH_VOICE = "en-us+m3"  # of espeak-ng's voices, the one PocketSphinx recognises best (measured)
# A sentence PocketSphinx gets (nearly) right from this voice at this rate after AAC encoding:
# measured word error rate 0.0-0.2 over rates 150-170 wpm and 0.15-0.4 s of silent padding.
SENTENCE = "i really like this movie"
SPEECH_RATE = 160  # words per minute


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@dataclass(frozen=True)
class Clip:
    path: Path
    duration: float  # seconds of video (and of audio, when there is an audio track)
    fps: float
    text: str | None  # what is spoken
    offsets: np.ndarray  # (n_frames, 2) int: top-left corner (x, y) of each frame's window


@lru_cache(maxsize=32)
def speech(text: str, voice: str = SPEECH_VOICE, rate: int = SPEECH_RATE) -> tuple[np.ndarray, int]:
    """espeak-ng speech: (n,) float32 in [-1, 1] and its sample rate (22050 Hz)."""
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    raw = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(raw)) as w:
        sr = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    y = pcm.astype(np.float32) / 32768.0
    y.setflags(write=False)
    return y, sr


@lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    from skimage import data

    img = data.astronaut()
    img.setflags(write=False)
    return img


def face_window_offsets(n_frames: int, fps: float) -> np.ndarray:
    """Top-left corners of the moving window: a slow drift of up to ±6 px in x and ±4 px in y."""
    t = np.arange(n_frames) / fps
    dx = np.round(6 * np.sin(2 * np.pi * 0.4 * t)).astype(int)
    dy = np.round(4 * np.sin(2 * np.pi * 0.3 * t + 1.0)).astype(int)
    return np.stack([CROP_ORIGIN[0] + dx, CROP_ORIGIN[1] + dy], axis=1)


def face_frame(offset: tuple[int, int], crop: tuple[int, int] = (CROP, CROP)) -> np.ndarray:
    """The (crop_w × crop_h) window of the photo whose top-left corner is `offset` (x, y)."""
    x, y = int(offset[0]), int(offset[1])
    return np.ascontiguousarray(astronaut()[y : y + crop[1], x : x + crop[0]])


def no_face_frame(k: int, rng: np.random.Generator, crop: tuple[int, int] = (CROP, CROP)) -> np.ndarray:
    """A smooth colour gradient with mild noise: no face anywhere, yet not a blank frame."""
    yy, xx = np.mgrid[0 : crop[1], 0 : crop[0]]
    base = np.stack([(xx + 3 * k) % 256, (yy + 2 * k) % 256, (xx + yy) // 3 % 256], axis=-1)
    return np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)


def write_video(
    path: Path,
    frames: list[np.ndarray] | None,
    fps: int,
    audio: np.ndarray | None,
    sample_rate: int = 22050,
    size: tuple[int, int] | None = None,
) -> None:
    """Encode RGB frames (H.264, yuv420p; scaled to `size` = (w, h) if given) and mono float audio
    (AAC) into an MP4/MKV/MOV with PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        vstream = astream = None
        if frames:
            vstream = out.add_stream("libx264", rate=fps)
            vstream.width, vstream.height = size or (frames[0].shape[1], frames[0].shape[0])
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"preset": "ultrafast", "crf": "20"}
        if audio is not None:
            astream = out.add_stream("aac", rate=sample_rate)
            astream.layout = "mono"
        if vstream is not None:
            for i, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if size is not None:
                    frame = frame.reformat(width=size[0], height=size[1])
                frame.pts = i
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        if astream is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
            block = 1024
            for start in range(0, len(pcm), block):
                chunk = pcm[start : start + block]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))


def make_clip(
    path: Path,
    text: str | None = SENTENCE,
    *,
    duration: float | None = None,
    fps: int = 25,
    audio: bool = True,
    face: bool = True,
    pad: float = 0.25,
    sample_rate: int = 22050,
    crop: tuple[int, int] = (CROP, CROP),
    size: tuple[int, int] | None = None,
) -> Clip:
    """A talking-face clip: espeak-ng saying `text` (None: a silent audio track), `pad` seconds of
    silence before and after, the astronaut's face drifting a few pixels (or, face=False, no face).

    The duration is the speech plus padding, or `duration` when given (speech is cut or padded).
    Pictures are `crop` = (w, h) windows of the photo (w <= 440, h <= 500), scaled to `size` if given.
    """
    y = np.zeros(0, np.float32)
    sr = sample_rate
    if text is not None:
        y, sr = speech(text)
    n_pad = int(round(pad * sr))
    y = np.concatenate([np.zeros(n_pad, np.float32), y, np.zeros(n_pad, np.float32)])
    if duration is not None:
        n = int(round(duration * sr))
        y = np.pad(y, (0, max(0, n - y.size)))[:n]
    n_frames = int(round(y.size / sr * fps))
    duration = n_frames / fps
    y = np.pad(y, (0, max(0, int(round(duration * sr)) - y.size)))[: int(round(duration * sr))]
    offsets = face_window_offsets(n_frames, fps)
    rng = np.random.default_rng(0)
    frames = [face_frame(o, crop) if face else no_face_frame(k, rng, crop) for k, o in enumerate(offsets)]
    write_video(path, frames, fps, y if audio else None, sr, size)
    return Clip(Path(path), duration, float(fps), text, offsets)


def make_corrupt(path: Path, like: Path | None = None) -> Path:
    """A file that is not a decodable video: random bytes behind a plausible MP4 box header, or,
    with `like`, the first 2 kB of a real video (its header promises data that is not there)."""
    path = Path(path)
    if like is not None:
        data = Path(like).read_bytes()[:2048]
    else:
        data = b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(1).bytes(4096)
    path.write_bytes(data)
    return path


def make_empty(path: Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words / number of reference words (lower-cased, punctuation-free)."""

    def words(s: str) -> list[str]:
        return "".join(c if c.isalnum() or c in " '" else " " for c in s.lower()).split()

    ref, hyp = words(reference), words(hypothesis)
    row = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, start=1):
        prev, row = row, np.empty_like(row)
        row[0] = i
        for j, h in enumerate(hyp, start=1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (r != h))
    return float(row[-1]) / max(1, len(ref))
