"""Sidecar transcripts: `<stem>.txt`, `<stem>.srt` or `<stem>.vtt` next to a video (docs/design.md §3).

The transcript order is manifest text -> sidecar -> ASR; this module is the middle step. Subtitles
become plain text: cue numbers, timing lines, WebVTT headers/NOTE/STYLE/REGION blocks and inline tags
are removed (WebVTT entities like &amp; decoded), cue lines are joined with single spaces, and a cue
line identical to the one before it (roll-up captions repeat lines) is kept once.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

SIDECAR_EXTENSIONS = (".txt", ".srt", ".vtt")

_TIMING = re.compile(r"^\s*(\d+:)?\d{1,2}:\d{2}[.,]\d{1,3}\s*-->\s*(\d+:)?\d{1,2}:\d{2}[.,]\d{1,3}")
_TAG = re.compile(r"<[^>]*>")  # <i>, </b>, <c.colour>, <v Speaker>, <00:00:01.000>
_SSA_OVERRIDE = re.compile(r"\{\\[^}]*\}")  # {\an8} position codes some SRT files carry
_SPACE = re.compile(r"\s+")


def find_sidecar(video: Path) -> Path | None:
    """The first of `<stem>.txt`, `.srt`, `.vtt` beside `video` that exists (extension case-insensitive)."""
    video = Path(video)
    for ext in SIDECAR_EXTENSIONS:
        for candidate in (video.with_suffix(ext), video.with_suffix(ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def read_sidecar(path: Path) -> str:
    """The transcript in a sidecar file as one line of text (whitespace runs collapsed to one space)."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8-sig", errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".srt":
        return subtitles_to_text(raw, vtt=False)
    if suffix == ".vtt":
        return subtitles_to_text(raw, vtt=True)
    return _SPACE.sub(" ", raw).strip()


def subtitles_to_text(raw: str, vtt: bool) -> str:
    """SRT / WebVTT content -> the spoken text of its cues, in order."""
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[str]] = [[]]
    for line in lines:  # blocks are separated by blank lines in both formats
        if line.strip():
            blocks[-1].append(line.strip())
        elif blocks[-1]:
            blocks.append([])
    words: list[str] = []
    previous = None
    for block in blocks:
        if not block:
            continue
        head = block[0]
        if vtt and (head.startswith("WEBVTT") or head.split(" ")[0] in ("NOTE", "STYLE", "REGION")):
            continue
        timing_at = next((i for i, line in enumerate(block) if _TIMING.match(line)), None)
        if timing_at is None:
            continue  # not a cue (stray text, a bare number): subtitles only speak inside cues
        for line in block[timing_at + 1 :]:
            text = _SPACE.sub(" ", _SSA_OVERRIDE.sub("", _TAG.sub("", line))).strip()
            if vtt:
                text = html.unescape(text)  # WebVTT escapes &amp; &lt; &gt; &nbsp;
            if text and text != previous:
                words.append(text)
            previous = text
    return " ".join(words)
