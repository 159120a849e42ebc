"""Benchmark of `kebr extract` on generated talking-face clips (tests/media.py).

    .venv/bin/python bench/extract.py [--clips 6] [--seconds 5] [--size 640x480] [--fps 30]

Prints, measured in this one run on the same clips:
- end to end (the real pipeline: worker processes, store writes) with ASR and without, on 1 and 2
  workers: wall clock, the worker start-up, and CPU seconds (this process + its workers);
  real-time factors (seconds of video per second) from the wall clock and per core from CPU time;
- the ratio of the 2-worker to the 1-worker rate (wall clock, start-up left out), next to a control:
  the speed-up of two plain CPU-bound processes at the same moment (how many cores are free);
- each stage (decode, audio features, vision, ASR) run alone in this process: wall and CPU time.
Targets (issue 4): with ASR >= 3x real time on one core, without ASR >= 8x, 2 workers >= 1.7x one.
When other processes share the cores, wall-clock rates fall and the 2-worker ratio means little:
the load average is printed, and CPU-time rates are the per-core numbers that load does not change
much (shared caches aside).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import media  # noqa: E402  (tests/media.py)

from kebr_core.extract import audio as audio_mod  # noqa: E402
from kebr_core.extract.asr import ASR_SAMPLE_RATE, PocketSphinxAsr  # noqa: E402
from kebr_core.extract.extractor import ExtractOptions  # noqa: E402
from kebr_core.extract.pipeline import ExtractSummary, extract  # noqa: E402
from kebr_core.extract.video import iter_frames, read_audio  # noqa: E402

TEXT = "i really like this movie and the acting was great but the ending was a little slow"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (pool workers are reaped at shutdown)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(folder: Path, out: Path, options: ExtractOptions) -> tuple[ExtractSummary, float, float]:
    """One extraction into a fresh store -> (summary, start-up seconds, CPU seconds)."""
    out.unlink(missing_ok=True)
    started: list[float] = []
    cpu = cpu_seconds()
    summary = extract(
        folder, out, options, progress=lambda e: started.append(e.elapsed) if e.status == "start" else None
    )
    return summary, started[0], cpu_seconds() - cpu


class Clock:
    """Wall and CPU seconds of a block, accumulated."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "Clock":
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


def stages(clips: list[Path], fps: float) -> dict[str, Clock]:
    """Each stage alone, in this process, over every clip (MediaPipe runs here: do this last)."""
    from kebr_core.extract.vision import MediaPipeFaceMesh

    mesh, asr = MediaPipeFaceMesh(), PocketSphinxAsr()
    clocks = {name: Clock() for name in ("decode audio", "decode frames", "audio features", "vision", "ASR")}
    for path in clips:
        with clocks["decode audio"]:
            audio = read_audio(path, (audio_mod.SAMPLE_RATE, ASR_SAMPLE_RATE))
        with clocks["decode frames"]:
            frames = list(iter_frames(path, fps))
        with clocks["audio features"]:
            audio_mod.audio_features(audio[audio_mod.SAMPLE_RATE])
        with clocks["vision"]:
            mesh.features(frames)
        with clocks["ASR"]:
            asr.transcribe(audio[ASR_SAMPLE_RATE])
    return clocks


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def free_parallelism(n: int = 8_000_000) -> float:
    """Control: speed-up of 2 CPU-bound processes over running the same 2 tasks in a row. About 2
    on two idle cores; about 1 when other work occupies one core (then no extraction can scale)."""
    import multiprocessing

    t = time.perf_counter()
    _burn(n), _burn(n)
    alone = time.perf_counter() - t
    with multiprocessing.get_context("fork").Pool(2) as pool:
        t = time.perf_counter()
        pool.map(_burn, [n, n])
        together = time.perf_counter() - t
    return alone / together


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", default="640x480", help="video frame size WxH")
    ap.add_argument("--fps", type=int, default=30, help="frame rate of the generated clips")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "videos", Path(tmp) / "bench.h5"
        t = time.perf_counter()
        for k in range(args.clips):
            media.make_clip(
                folder / f"clip{k}.mp4", TEXT, duration=args.seconds, fps=args.fps, crop=(400, 300), size=size,
                pad=0.1 + 0.05 * k,
            )
        video_s = args.clips * args.seconds
        print(f"{args.clips} clips × {args.seconds:g} s = {video_s:g} s of video, {size[0]}x{size[1]} "
              f"@ {args.fps} fps, "
              f"H.264+AAC (made in {time.perf_counter() - t:.1f} s); vision at 10 fps; {os.cpu_count()} CPUs; "
              f"load average before: {os.getloadavg()[0]:.2f}")

        run(folder, out, ExtractOptions(workers=1, asr="none"))  # warm-up: imports, librosa's JIT, disk cache

        results = {}
        for name, opts in (
            ("1 worker, ASR", ExtractOptions(workers=1)),
            ("1 worker, no ASR", ExtractOptions(workers=1, asr="none")),
            ("2 workers, ASR", ExtractOptions(workers=2)),
            ("2 workers, no ASR", ExtractOptions(workers=2, asr="none")),
        ):
            results[name] = run(folder, out, opts)
            assert results[name][0].done == args.clips, results[name][0].failures

        print("\nend to end (×RT = seconds of video per second; 'steady' leaves out the worker start-up):")
        head = ("run", "wall", "start-up", "CPU", "×RT wall", "×RT steady", "×RT per core (CPU)")
        print("  {:<18} {:>7} {:>9} {:>7} {:>9} {:>11} {:>19}".format(*head))
        for name, (summary, startup, cpu) in results.items():
            rt, steady = video_s / summary.elapsed, video_s / (summary.elapsed - startup)
            print(f"  {name:<18} {summary.elapsed:6.2f}s {startup:8.2f}s {cpu:6.2f}s {rt:9.1f} {steady:11.1f} "
                  f"{video_s / cpu:19.1f}")
        control = free_parallelism()
        print(f"control: 2 CPU-bound processes run {control:.2f}× faster than one after the other "
              "(2.0 = two free cores)")
        for asr in ("ASR", "no ASR"):
            (s1, u1, _), (s2, u2, _) = results[f"1 worker, {asr}"], results[f"2 workers, {asr}"]
            print(f"2 workers / 1 worker, {asr}: {(s1.elapsed - u1) / (s2.elapsed - u2):.2f}× "
                  f"(wall, steady; {s1.elapsed / s2.elapsed:.2f}× with start-up)")
        print(f"load average after the pipeline runs: {os.getloadavg()[0]:.2f}")

        clips = sorted(folder.glob("*.mp4"))
        clocks = stages(clips, 10.0)
        print("\nper stage, alone in this process (×RT per core from CPU time):")
        for name, c in clocks.items():
            print(f"  {name:<15} wall {c.wall:6.2f}s  CPU {c.cpu:6.2f}s  {video_s / c.cpu:7.1f}× real time")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
