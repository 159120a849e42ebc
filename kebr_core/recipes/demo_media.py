"""Talking-face clips made offline: real speech (espeak-ng) over frames of a real face photo.

`kebr demo` uses these to run the whole pipeline, from videos to a prediction, with no user data and
no downloads; the tests make their media with the same functions (tests/media.py).

The picture is a window of NASA's public-domain portrait of astronaut Eileen Collins (the photo
scikit-image ships as `skimage.data.astronaut()`); `kebr_core/assets/face.jpg` holds the part of it the
moving window can cover. The window drifts a few pixels per frame, so the face moves a little as in a
real video. Speech comes from espeak-ng's library as the `espeakng-loader` wheel ships it (kebr_core.speech);
encoding is done by PyAV (H.264 + AAC in MP4/MKV). Nothing needs a system package.

    make_clip(out / "a.mp4", "i really loved this movie")     # speech, face drifting
    make_clip(out / "b.mp4", None, duration=2.0)              # face, silent audio track
    make_clip(out / "c.mp4", audio=False)                     # no audio track
    make_clip(out / "d.mp4", face=False)                      # no face in any frame
    make_demo_clips(out / "clips", quick=True)                # a labeled set + MMSA label.csv
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from kebr_core import speech as tts
from kebr_core.errors import KebrError
from kebr_core.optional import OptionalModule

av = OptionalModule("av", "av", "Making the demo clips")  # PyAV: imported when media are first read or written

ASSET = Path(__file__).parents[1] / "assets" / "face.jpg"
# Where assets/face.jpg sits in the 512×512 astronaut photo: its top-left corner (x, y). All offsets
# below are in the photo's coordinates, so a caller holding the whole photo gets the same windows.
ASSET_ORIGIN = (64, 6)
CROP = 320  # side of the moving window
CROP_ORIGIN = (70, 10)  # its mean top-left corner (x, y): the face sits near the window's centre
SPEECH_VOICE = "en-us+m3"  # of espeak-ng's voices, the one PocketSphinx recognises best (measured)
SPEECH_RATE = 160  # words per minute
SPEECH_PITCH = 50  # espeak-ng's default pitch (0-99)

# A photo and the (x, y) position of its top-left corner in the astronaut photo's coordinates.
Photo = tuple[np.ndarray, tuple[int, int]]


@lru_cache(maxsize=64)
def speech(text: str, voice: str = SPEECH_VOICE, rate: int = SPEECH_RATE, pitch: int = SPEECH_PITCH) -> tuple[np.ndarray, int]:
    """espeak-ng saying `text`: (n,) float32 in [-1, 1] and its sample rate (22050 Hz). Read-only array."""
    y, sr = tts.synthesize(text, voice, rate, pitch)
    y.setflags(write=False)
    return y, sr


@lru_cache(maxsize=1)
def face_photo() -> Photo:
    """The bundled part of the astronaut photo, (328, 332, 3) uint8, and its origin in the photo."""
    with av.open(str(ASSET)) as container:
        img = next(container.decode(video=0)).to_ndarray(format="rgb24")
    img.setflags(write=False)
    return img, ASSET_ORIGIN


def face_window_offsets(n_frames: int, fps: float) -> np.ndarray:
    """(n_frames, 2) int top-left corners (x, y) of the moving window: a slow drift of up to ±6 px in
    x and ±4 px in y around CROP_ORIGIN."""
    t = np.arange(n_frames) / fps
    dx = np.round(6 * np.sin(2 * np.pi * 0.4 * t)).astype(int)
    dy = np.round(4 * np.sin(2 * np.pi * 0.3 * t + 1.0)).astype(int)
    return np.stack([CROP_ORIGIN[0] + dx, CROP_ORIGIN[1] + dy], axis=1)


def face_frame(offset: tuple[int, int], crop: tuple[int, int] = (CROP, CROP), photo: Photo | None = None) -> np.ndarray:
    """The (h, w, 3) window, crop = (w, h), whose top-left corner is `offset` (x, y) in the photo."""
    img, (ox, oy) = photo if photo is not None else face_photo()
    x, y = int(offset[0]) - ox, int(offset[1]) - oy
    w, h = crop
    if x < 0 or y < 0 or x + w > img.shape[1] or y + h > img.shape[0]:
        raise ValueError(f"the window {crop} at {tuple(offset)} leaves the photo ({img.shape[1]}×{img.shape[0]} at {(ox, oy)})")
    return np.ascontiguousarray(img[y : y + h, x : x + w])


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
    (AAC) into an MP4/MKV/MOV with PyAV. frames=None or audio=None leaves that stream out."""
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
            block = 1024  # AAC's frame size
            for start in range(0, len(pcm), block):
                frame = av.AudioFrame.from_ndarray(pcm[None, start : start + block], format="s16", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))


@dataclass(frozen=True)
class Clip:
    path: Path
    duration: float  # seconds of video (and of audio, when there is an audio track)
    fps: float
    text: str | None  # what is spoken
    offsets: np.ndarray  # (n_frames, 2) int: top-left corner (x, y) of each frame's window


def make_clip(
    path: Path,
    text: str | None = "i really like this movie",
    *,
    duration: float | None = None,
    fps: int = 25,
    audio: bool = True,
    face: bool = True,
    pad: float = 0.25,
    sample_rate: int = 22050,
    crop: tuple[int, int] = (CROP, CROP),
    size: tuple[int, int] | None = None,
    voice: str = SPEECH_VOICE,
    rate: int = SPEECH_RATE,
    pitch: int = SPEECH_PITCH,
    photo: Photo | None = None,
) -> Clip:
    """A talking-face clip: espeak-ng saying `text` (None: a silent audio track), `pad` seconds of
    silence before and after, the face drifting a few pixels (face=False: no face at all).

    The duration is the speech plus padding, or `duration` when given (speech is cut or padded).
    Pictures are `crop` = (w, h) windows of `photo` (default: the bundled face), scaled to `size`.
    """
    y = np.zeros(0, np.float32)
    sr = sample_rate
    if text is not None:
        y, sr = speech(text, voice, rate, pitch)
    n_pad = int(round(pad * sr))
    y = np.concatenate([np.zeros(n_pad, np.float32), y, np.zeros(n_pad, np.float32)])
    if duration is not None:
        n = int(round(duration * sr))
        y = np.pad(y, (0, max(0, n - y.size)))[:n]
    n_frames = int(round(y.size / sr * fps))
    duration = n_frames / fps
    n_audio = int(round(duration * sr))  # the audio track lasts exactly as long as the pictures
    y = np.pad(y, (0, max(0, n_audio - y.size)))[:n_audio]
    offsets = face_window_offsets(n_frames, fps)
    rng = np.random.default_rng(0)
    frames = [face_frame(o, crop, photo) if face else no_face_frame(k, rng, crop) for k, o in enumerate(offsets)]
    write_video(path, frames, fps, y if audio else None, sr, size)
    return Clip(Path(path), duration, float(fps), text, offsets)


# ---------------------------------------------------------------------------------------------------
# The demo's labeled clips

# (sentence, label on MOSI's scale [-3, 3]). Sentences are spoken with a prosody that follows the
# label (higher and faster when positive, lower and slower when negative), so audio carries some of
# the sentiment as in real speech, and text carries the most.
DEMO_SENTENCES: tuple[tuple[str, float], ...] = (
    ("i really loved this movie it was wonderful", 2.8),
    ("the acting was great and the story was beautiful", 2.4),
    ("what a fantastic film i enjoyed every minute", 2.6),
    ("the music was lovely and the ending made me happy", 2.0),
    ("i liked the characters they were funny", 1.4),
    ("it was a good movie with a nice cast", 1.2),
    ("the plot was pretty interesting", 0.8),
    ("i thought the film was okay", 0.4),
    ("the movie runs for about two hours", 0.0),
    ("i watched it on a tuesday with my sister", 0.0),
    ("the story takes place in a small town", 0.0),
    ("the second half was a bit slow", -0.6),
    ("the dialogue felt weak and the plot was messy", -1.4),
    ("i was bored for most of the film", -1.6),
    ("the acting was bad and the ending was stupid", -2.2),
    ("this movie was terrible and painfully boring", -2.6),
    ("i hated it it was the worst film i have seen", -3.0),
    ("what an awful and depressing waste of time", -2.8),
    ("the jokes were silly and the music was annoying", -1.8),
    ("i felt disappointed by the sequel", -1.2),
    ("the camera work was excellent", 1.8),
    ("the film has three parts", 0.0),
    ("a sweet and charming little story", 2.0),
    ("the script was dull and lame", -2.0),
)
# Held out of the labeled set: what `kebr demo` predicts at the end. Sentences with none of the
# training sentences' exact wording; all but one clearly positive or negative (|label| >= 1).
DEMO_HELDOUT: tuple[tuple[str, float], ...] = (
    ("i loved the movie it was amazing", 2.6),
    ("the film was horrible and boring", -2.4),
    ("the movie was shot in the winter", 0.0),
    ("a great film with a wonderful cast", 2.4),
    ("the story was awful and the acting was bad", -2.6),
    ("i enjoyed it and the music was beautiful", 2.2),
    ("a dull and terrible waste of time", -2.6),
)
CLEAR = 1.0  # a held-out label at least this far from 0 has a sign the demo's model should get right
VOICES = ("en-us+m3", "en-us+f3")


def annotation(label: float) -> str:
    return "Positive" if label > 0 else "Negative" if label < 0 else "Neutral"


def prosody(label: float) -> tuple[int, int]:
    """(rate in words per minute, pitch 0-99) following the label: livelier when positive."""
    return int(round(SPEECH_RATE + 8 * label)), int(round(SPEECH_PITCH + 8 * label))


@dataclass
class DemoClips:
    root: Path  # clips at <root>/<video_id>/<clip_id>.mp4
    manifest: Path  # MMSA label.csv with text, label and split
    clips: list[Path]  # the labeled clips, in manifest order
    heldout: list[Path]  # clips outside the manifest, each with a .txt transcript beside it
    heldout_labels: list[float]


def demo_splits(n: int) -> list[str]:
    """train/valid/test for n clips in label order: MOSI's proportions (58/10/31 %), at least one
    clip per split, the test and valid clips spread evenly over the label range."""
    if n < 3:
        raise KebrError(f"the demo needs at least 3 labeled clips (one per split), not {n}")
    n_valid = max(1, round(n * 229 / 2199))
    n_test = max(1, round(n * 686 / 2199))
    order = np.arange(n)
    test = set(order[1::max(1, n // n_test)][:n_test].tolist())
    rest = [i for i in order if i not in test]
    valid = set(rest[1::max(1, len(rest) // n_valid)][:n_valid])
    return ["test" if i in test else "valid" if i in valid else "train" for i in range(n)]


def make_demo_clips(root: Path, n: int | None = None, heldout: int | None = None, fps: int = 15) -> DemoClips:
    """Write n labeled clips (default all of DEMO_SENTENCES), spread evenly over the label range, as
    <root>/demo<k>/0.mp4 with an MMSA label.csv, and `heldout` more clips (default 3) with sidecar
    transcripts in <root>/heldout/. Raises KebrError when espeak-ng's library cannot be loaded."""
    root = Path(root)
    total = len(DEMO_SENTENCES)
    n = total if n is None else n
    if not 3 <= n <= total:
        raise KebrError(f"the demo has {total} sentences; ask for 3 to {total} labeled clips, not {n}")
    # Every (total/n)-th sentence of the list sorted by label: positive, neutral and negative clips.
    by_label = sorted(range(total), key=lambda i: -DEMO_SENTENCES[i][1])
    chosen = [by_label[int(k)] for k in np.linspace(0, total - 1, n).round().astype(int)]
    splits = demo_splits(n)
    rows, clips = [], []
    for k, (index, split) in enumerate(zip(chosen, splits)):
        text, label = DEMO_SENTENCES[index]
        rate, pitch = prosody(label)
        path = root / f"demo{index:02d}" / "0.mp4"
        make_clip(path, text, fps=fps, voice=VOICES[k % len(VOICES)], rate=rate, pitch=pitch)
        clips.append(path)
        rows.append({"video_id": f"demo{index:02d}", "clip_id": "0", "text": text, "label": f"{label:.1f}",
                     "annotation": annotation(label), "mode": split, "label_by": "0"})
    manifest = root / "label.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    held = DEMO_HELDOUT[: len(DEMO_HELDOUT) if heldout is None else heldout]
    held_paths = []
    for k, (text, label) in enumerate(held):
        rate, pitch = prosody(label)
        path = root / "heldout" / f"heldout{k}.mp4"
        make_clip(path, text, fps=fps, voice=VOICES[k % len(VOICES)], rate=rate, pitch=pitch)
        path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")  # a sidecar transcript
        held_paths.append(path)
    return DemoClips(root, manifest, clips, held_paths, [label for _, label in held])
