"""Upper bounds on what extracting one video may ask of the machine (issue 28: resource bombs).

A video's header and timestamps are the file's word, not a fact: a file of 1.5 kB can declare ten hours,
and sampling its two pictures at 10 fps would feed 360,000 pictures to face detection. Decoding is bounded
by the pictures and audio actually decoded (never by the header's duration) and stops at `max_duration`
seconds of them; `fps` has a ceiling. Both bounds are checked before any work (`ExtractOptions.validate`)
or while decoding (`video.iter_frames`, `video.read_audio`); a video past them fails alone, with its reason.
"""

from __future__ import annotations

from pathlib import Path

# Pictures per second kebr samples at most. Video is rarely over 60 fps; sampling above the source rate
# only repeats pictures (sample-and-hold), so a higher rate adds work and no information.
MAX_FPS = 120.0
# Seconds of a video decoded at most unless --max-duration raises it: 4 h at the default 10 fps is 144,000
# pictures and ~0.4 GB of OpenFace-sized features, well within a store sample (store_checks.MAX_SAMPLE_BYTES).
DEFAULT_MAX_DURATION_S = 4 * 3600.0
# The longest a video's last picture is held when its frame rate is implausibly low (a crafted header):
# at 0.1 fps and below, the last picture counts for 10 s.
MAX_LAST_PICTURE_S = 10.0


def past_max_duration(path: Path, what: str, seconds: float, limit: float) -> str:
    """The sentence for a video whose decoded `what` (pictures, audio) run past `limit` seconds."""
    return (f"{path}: its {what} run to {seconds:.0f} s, past the {limit:g} s that are decoded at most; "
            f"raise --max-duration to read longer videos")
