"""Test media made here, offline: real speech (espeak-ng) over frames of a real face photo.

The generator lives in the library (`kebr_core.recipes.demo_media`, which `kebr demo` uses too); this module
points it at the whole 512×512 photo from `skimage.data.astronaut()` (Eileen Collins, public domain),
so tests can locate her face in photo coordinates (ASTRONAUT_FACE_BOX), and adds broken files.
Importable by any test (`from tests.media import make_clip`, or `import media` with tests/ on the path).

    clip = make_clip(tmp / "a.mp4")                     # SENTENCE spoken, face moving
    make_clip(tmp / "b.mp4", text=None, duration=2.0)   # face, silent audio track
    make_clip(tmp / "c.mp4", audio=False)               # no audio track
    make_clip(tmp / "d.mp4", face=False)                # no face in any frame
    make_corrupt(tmp / "e.mp4"); make_empty(tmp / "f.mov")
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from kebr_core.recipes import demo_media
from kebr_core.recipes.demo_media import (  # noqa: F401  (re-exported for the tests)
    CROP,
    CROP_ORIGIN,
    SPEECH_RATE,
    SPEECH_VOICE,
    Clip,
    face_window_offsets,
    no_face_frame,
    speech,
    write_video,
)

# Where the face is in the astronaut photo (x0, y0, x1, y1), pixels: MediaPipe's 478 landmarks span
# x 179-271, y 71-177 (forehead to chin); this box is her face, hairline to chin, ear to ear.
ASTRONAUT_FACE_BOX = (165, 55, 285, 195)
# A sentence PocketSphinx gets (nearly) right from this voice at this rate after AAC encoding:
# measured word error rate 0.0-0.2 over rates 150-170 wpm and 0.15-0.4 s of silent padding.
SENTENCE = "i really like this movie"


@lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    from skimage import data

    img = data.astronaut()
    img.setflags(write=False)
    return img


def face_frame(offset: tuple[int, int], crop: tuple[int, int] = (CROP, CROP)) -> np.ndarray:
    """The (crop_w × crop_h) window of the photo whose top-left corner is `offset` (x, y)."""
    return demo_media.face_frame(offset, crop, photo=(astronaut(), (0, 0)))


def make_clip(path: Path, text: str | None = SENTENCE, **kwargs) -> Clip:
    """`kebr_core.recipes.demo_media.make_clip` over the whole astronaut photo (see its docstring for the options)."""
    return demo_media.make_clip(path, text, photo=(astronaut(), (0, 0)), **kwargs)


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


def make_ten_hour_clip(path: Path, gap_s: float = 36000.0, fps: int = 10) -> Path:
    """An MP4 of 1.5 kB: a picture at 0 s and one at `gap_s` (its header declares the ten hours too)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = 48
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i, pts in enumerate([0, int(gap_s * fps)]):
            frame = av.VideoFrame.from_ndarray(np.full((48, 48, 3), 90 + 40 * i, np.uint8), format="rgb24")
            frame.pts = pts
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_long_header_clip(path: Path, declared_s: float = 36000.0, **kwargs) -> Path:
    """A Matroska talking-face clip (`make_clip`'s options; 2 s by default) whose header declares
    `declared_s` seconds: the Segment's Duration element (ID 0x4489, an 8-byte float of milliseconds) is
    rewritten, and the pictures and audio stay those of the real clip."""
    import struct

    path = Path(path)
    assert path.suffix == ".mkv", path
    make_clip(path, **{"text": None, "duration": 2.0, **kwargs})
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # the element ID, then its size: 8 bytes
    assert at > 0, "no 8-byte Duration element"
    data[at + 3: at + 11] = struct.pack(">d", declared_s * 1000.0)
    path.write_bytes(bytes(data))
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
