"""Progress within one video's decode (issue 28, class 3): `video.Decoded` events, seconds decoded of about
the header's duration, from `read_audio` / `iter_frames` through `Extractor.process`, the worker processes'
queue (`workers.ordered_results`) and `kebr extract`'s progress lines. The header's duration is only the
estimate: a clip whose header declares ten hours over two seconds of pictures finishes in seconds and its
progress ends at those two seconds."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import media  # tests/media.py
from kebr_cli.main import app
from kebr_core.extract import video as video_mod
from kebr_core.extract.extractor import ExtractOptions, Extractor
from kebr_core.extract.inputs import VideoItem
from kebr_core.extract.limits import DEFAULT_MAX_DURATION_S
from kebr_core.extract.video import DECODE_EVENTS_PER_S, Decoded
from kebr_core.extract.workers import ordered_results, start_workers

runner = CliRunner()
OPTIONS = ExtractOptions(vision="mediapipe", asr="none", workers=0)


def by_stream(events: list[Decoded]) -> dict[str, list[Decoded]]:
    streams: dict[str, list[Decoded]] = {}
    for e in events:
        streams.setdefault(e.what, []).append(e)
    return streams


def test_every_picture_and_audio_frame_moves_the_seconds_up_to_the_clips_length(tmp_path: Path, monkeypatch) -> None:
    """Unthrottled (every decoded frame reports): a 2 s clip at 25 fps gives its pictures' times 0, 0.04, …
    1.96 while decoding and 2.0 (the end of its last picture) at the end; audio (AAC, 1024-sample frames
    at 22050 Hz) climbs in steps of 1024 / 22050 s to the length its header declares."""
    monkeypatch.setattr(video_mod, "DECODE_EVENTS_PER_S", math.inf)
    clip = media.make_clip(tmp_path / "a.mp4", text=None, duration=2.0)
    events: list[Decoded] = []
    result = Extractor(OPTIONS).process(VideoItem(id="a", path=clip.path), events.append)
    assert result.error is None
    streams = by_stream(events)
    assert list(streams) == ["audio", "pictures"]  # the audio is decoded first, then the pictures
    pictures = streams["pictures"]
    assert [round(e.seconds, 6) for e in pictures[:-1]] == [round(i / 25, 6) for i in range(50)]
    assert pictures[-1] == Decoded("pictures", 2.0, 2.0, finished=True, id="a")
    assert all(e.expected == pytest.approx(video_mod.probe(clip.path).duration) for e in pictures[:-1])
    audio = [e.seconds for e in streams["audio"]]
    steps = [b - a for a, b in zip(audio, audio[1:-1])]
    assert len(audio) > 40 and all(s == pytest.approx(1024 / 22050) for s in steps)
    assert streams["audio"][-1].finished and audio[-1] == pytest.approx(2.0, abs=1e-3)
    assert sum(e.finished for e in events) == 2 and all(e.id == "a" for e in events)
    assert result.media_seconds == 2.0  # the length decoded


def test_events_come_a_few_times_a_second_at_most(tmp_path: Path) -> None:
    clip = media.make_clip(tmp_path / "a.mp4", text=None, duration=3.0)
    events: list[Decoded] = []
    start = time.monotonic()
    Extractor(OPTIONS).process(VideoItem(id="a", path=clip.path), events.append)
    elapsed = time.monotonic() - start
    for stream in by_stream(events).values():  # the first at once, then one per 1/4 s at most, then the last
        assert stream[0].seconds == 0.0 and stream[-1].finished
        assert len(stream) - 2 <= DECODE_EVENTS_PER_S * elapsed + 1
        assert all(a.seconds <= b.seconds for a, b in zip(stream, stream[1:]))


def test_a_header_declaring_ten_hours_over_two_seconds_ends_at_the_two_seconds(tmp_path: Path) -> None:
    """The header's 36000 s are the estimate (at most the --max-duration bound) until the pictures run out."""
    clip = media.make_long_header_clip(tmp_path / "long.mkv")
    assert video_mod.probe(clip).duration == 36000.0
    events: list[Decoded] = []
    start = time.monotonic()
    result = Extractor(OPTIONS).process(VideoItem(id="long", path=clip), events.append)
    assert time.monotonic() - start < 60 and result.error is None
    pictures = by_stream(events)["pictures"]
    assert pictures[0] == Decoded("pictures", 0.0, DEFAULT_MAX_DURATION_S, id="long")
    assert pictures[-1] == Decoded("pictures", 2.0, 2.0, finished=True, id="long")
    assert result.sample is not None and len(result.sample.vision) == 20  # 2 s at 10 fps, not 144,000 pictures
    assert result.media_seconds == pytest.approx(2.0, abs=0.05)  # the summary's speed counts these, not 36000 s


def test_worker_processes_forward_the_events_of_the_video_being_waited_for(tmp_path: Path) -> None:
    """With a worker process, the events cross a queue: those of the video whose result comes next, in order."""
    clips = [media.make_clip(tmp_path / f"{name}.mp4", text=None, duration=6.0).path for name in ("a", "b")]
    items = [VideoItem(id=p.stem, path=p) for p in clips]
    options = ExtractOptions(vision="mediapipe", asr="none", workers=1)
    events: list[Decoded] = []
    executor = start_workers(options)
    try:
        results = list(ordered_results(items, options, executor, events.append))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    assert [r.id for r in results] == ["a", "b"] and all(r.error is None for r in results)
    assert {e.id for e in events} <= {"a", "b"} and any(e.what == "pictures" for e in events)
    ids = [e.id for e in events]
    assert ids == sorted(ids)  # a's events, then b's: never one of a video already returned
    for video in ("a", "b"):
        for stream in by_stream([e for e in events if e.id == video]).values():
            assert all(a.seconds <= b.seconds for a, b in zip(stream, stream[1:]))
            assert all(e.seconds <= 6.0 + 1e-9 for e in stream)


@pytest.mark.parametrize("jobs", ["0", "1"])
def test_kebr_extract_prints_the_seconds_decoded_of_a_long_video(tmp_path: Path, ticking_cli_clock, jobs: str) -> None:
    """Off a terminal with --verbose a stage prints a line every second (the clock here ticks 2 s a look):
    the pictures' line starts from the header's estimate (capped at --max-duration) and, in this process,
    ends at the two seconds the file holds."""
    media.make_long_header_clip(tmp_path / "videos" / "long.mkv")
    start = time.monotonic()
    r = runner.invoke(app, ["-v", "extract", str(tmp_path / "videos"), "-o", str(tmp_path / "x.h5"), "--asr", "none",
                            "--max-duration", "600", "--jobs", jobs])
    assert r.exit_code == 0, r.output
    assert time.monotonic() - start < 120
    lines = [line for line in r.stderr.splitlines() if line.startswith("long: seconds of pictures: ")]
    assert lines and all(re.match(r"long: seconds of pictures: ([012]/600 \(0%\)|2/2 \(100%\))", line) for line in lines), r.stderr
    if jobs == "0":  # every event, the last too (from a worker, the last may come after the video's result)
        assert lines[0] == "long: seconds of pictures: 0/600 (0%)" and lines[-1] == "long: seconds of pictures: 2/2 (100%)"
        assert "long: seconds of audio: 2/2 (100%)" in r.stderr


def test_the_bars_of_finished_videos_leave_nothing_behind(ticking_cli_clock) -> None:
    """A stage per video and stream: after 1000 videos the Reporter holds the run's own stage only."""
    from kebr_cli.reporter import Reporter
    from kebr_cli.extract import decoding_progress

    with Reporter() as reporter:
        on_decoded = decoding_progress(reporter, keep=("extract",))
        for k in range(1000):
            reporter("extract", k, 1000, {})
            for what in ("audio", "pictures"):
                on_decoded(Decoded(what, 0.0, 7200.0, id=f"clip{k}"))
                on_decoded(Decoded(what, 7199.5, 7199.5, finished=True, id=f"clip{k}"))
        held = [reporter._tasks, reporter._started, reporter._last, reporter._printed]
        assert all(set(stages) <= {"extract"} for stages in held)
