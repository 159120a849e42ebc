"""Transcripts that come with videos: a table for many videos, or a sidecar file next to one
(docs/design.md §3).

The transcript order is manifest text or transcript table -> sidecar -> ASR; this module reads the
tables and the sidecars.

Transcript table (`--transcripts FILE`): a header row naming an `id` and a `text` column (any order,
other columns ignored), one video per row; tab-separated (fields unquoted) when the file ends in
.tsv/.tab or its header holds a tab, else CSV (quoted fields may hold commas and line breaks). An id
is the video's id in the store: its path below the input folder without extension (`sub/clip01`; a
video given as a file: its name without extension); a video extension and a leading `./` are ignored
(`clip01.mp4` is `clip01`).

Sidecar: `<stem>.txt`, `<stem>.srt` or `<stem>.vtt` next to a video. Subtitles
become plain text: cue numbers, timing lines, WebVTT headers/NOTE/STYLE/REGION blocks and inline tags
are removed (WebVTT entities like &amp; decoded), cue lines are joined with single spaces, and a cue
line identical to the one before it (roll-up captions repeat lines) is kept once.
"""

from __future__ import annotations

import csv
import html
import io
import re
from pathlib import Path

from kebr_core.errors import KebrError
from kebr_core.strict import read_user_text
from kebr_core.extract.video import VIDEO_EXTENSIONS

SIDECAR_EXTENSIONS = (".txt", ".srt", ".vtt")

_TIMING = re.compile(r"^\s*(\d+:)?\d{1,2}:\d{2}[.,]\d{1,3}\s*-->\s*(\d+:)?\d{1,2}:\d{2}[.,]\d{1,3}")
_TAG = re.compile(r"<[^>]*>")  # <i>, </b>, <c.colour>, <v Speaker>, <00:00:01.000>
_SSA_OVERRIDE = re.compile(r"\{\\[^}]*\}")  # {\an8} position codes some SRT files carry
_SPACE = re.compile(r"\s+")


def table_id(raw: str) -> str:
    """A table's id as a store id: POSIX separators, no leading ./, no video extension."""
    value = raw.strip().replace("\\", "/")
    while value.startswith("./"):
        value = value[2:]
    stem, dot, ext = value.rpartition(".")
    return stem if dot and "/" not in ext and f".{ext.lower()}" in VIDEO_EXTENSIONS else value


def read_transcript_table(path: Path) -> dict[str, str]:
    """A transcript table (see the module docstring) -> {id: text, whitespace runs collapsed}, in
    file order. Raises KebrError naming the file (and line) for anything it cannot use."""
    path = Path(path)
    content = read_user_text(path, "The transcript table")
    header = content.split("\n", 1)[0]
    tab = path.suffix.lower() in (".tsv", ".tab") or "\t" in header
    # TSV fields are not quoted (a transcript may start with a quote mark); CSV fields may be.
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if tab else ",",
                        quoting=csv.QUOTE_NONE if tab else csv.QUOTE_MINIMAL, strict=True)
    form = "id<TAB>text" if tab else "id,text"
    try:
        columns = [c.strip().lower() for c in next(reader, [])]
        if "id" not in columns or "text" not in columns:
            raise KebrError(f"The transcript table {path} needs a header row with an id and a text column ({form}).")
        repeated = [name for name in ("id", "text") if columns.count(name) > 1]
        if repeated:  # which of two text columns is meant is not ours to guess
            raise KebrError(f"The transcript table {path} names the column {repeated[0]!r} more than once in its "
                            "header; keep one of them.")
        at_id, at_text = columns.index("id"), columns.index("text")
        table: dict[str, str] = {}
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank lines
            if len(row) <= max(at_id, at_text):
                raise KebrError(f"The transcript table {path} line {line} has {len(row)} field(s), fewer than its header ({form}).")
            video_id = table_id(row[at_id])
            if not video_id:
                raise KebrError(f"The transcript table {path} line {line} has an empty id.")
            if video_id in table:
                raise KebrError(f"The transcript table {path} names the id {video_id!r} twice (lines {first_line[video_id]} and {line}).")
            table[video_id] = _SPACE.sub(" ", row[at_text]).strip()
            first_line[video_id] = line
    except csv.Error as e:
        raise KebrError(f"The transcript table {path} line {reader.line_num} is not valid {'TSV' if tab else 'CSV'} ({e}).") from None
    if not table:
        raise KebrError(f"The transcript table {path} has no rows below its header.")
    return table


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
    # Decoded by byte-order mark: Notepad's "Unicode" (UTF-16) sidecars read as text, not NUL-riddled bytes.
    raw = read_user_text(path, "The transcript", errors="replace")
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
