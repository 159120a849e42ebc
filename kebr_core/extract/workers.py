"""Worker processes for extraction, results in input order, and quiet native libraries.

    executor = start_workers(options)          # before the store is opened or a model is built
    for result in ordered_results(items, options, executor, progress):   # executor None: in this process
        ...
    executor.shutdown(wait=True, cancel_futures=True)

Each worker builds one `Extractor` and extracts the videos it is sent; the caller alone writes what
comes back, in input order whatever the number of workers, so a run with 4 workers, a resumed run and
a single uninterrupted run give the same store (`kebr extract`) or the same predictions (`kebr predict`).
Progress within a video (`video.Decoded` events, a few a second) comes back from the workers on a
queue of its own; the caller sees those of the video whose result it is waiting for.

`quiet_native_stderr` is the one way kebr hides what native libraries (MediaPipe, TFLite) write to
file descriptor 2: worker processes enter it for their whole life, extraction in this process
(`workers=0`) wraps the work in it.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import queue as queue_mod
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, contextmanager
from typing import Iterator

from kebr_core.errors import KebrError
from kebr_core.extract import audio as audio_mod
from kebr_core.extract.extractor import ExtractOptions, Extractor, ItemResult
from kebr_core.extract.inputs import VideoItem
from kebr_core.extract.video import DECODE_EVENTS_PER_S, Decoded, DecodeProgress

# ---------------------------------------------------------------------------------------------------
# Native log lines

_TERMINAL: object | None = None


@contextmanager
def quiet_native_stderr(*, in_worker: bool = False) -> Iterator[None]:
    """Send what native libraries write to file descriptor 2 (MediaPipe/TFLite banners and one-time
    warnings) to /dev/null, while Python's `sys.stderr` (and so a progress bar) keeps writing where
    it did.

    in_worker: called by a worker process as it starts, to stay quiet for its whole life. The inherited
    `sys.stderr` is then neither flushed nor reused (a forked copy of its lock may be held forever): it
    is replaced by a writer of its own on the terminal.
    """
    global _TERMINAL
    try:
        python_on_fd2 = in_worker or sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # e.g. captured by a test runner: fd 2 is not Python's
        python_on_fd2 = False
    try:
        if not in_worker:
            sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to hide
        yield
        return
    previous = sys.stderr
    if python_on_fd2 and (_TERMINAL is None or in_worker):  # one writer on a copy of the terminal per
        # process, never closed: a progress thread may still hold it for a moment after sys.stderr is restored
        _TERMINAL = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        atexit.register(_TERMINAL.close)
    os.dup2(devnull, 2)
    os.close(devnull)
    if python_on_fd2:
        sys.stderr = _TERMINAL  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = previous
        os.dup2(saved, 2)
        os.close(saved)


# ---------------------------------------------------------------------------------------------------
# Worker processes

_EXTRACTOR: Extractor | None = None
_QUIET: AbstractContextManager | None = None  # held for the worker's life: collecting it would restore fd 2
_DECODING: multiprocessing.queues.Queue | None = None  # where this worker sends its `Decoded` events


class Workers(ProcessPoolExecutor):
    """The extraction worker processes (`start_workers`) and the queue on which they send `Decoded` events.

    A `multiprocessing.Queue`: a worker's put never blocks (a feeder thread writes the pipe), so a caller
    that is busy or has stopped reading never stalls a worker; at most a few events a second per worker
    wait in it."""

    def __init__(self, options: ExtractOptions, ctx: multiprocessing.context.BaseContext) -> None:
        self.decoding = ctx.Queue()
        super().__init__(options.workers, mp_context=ctx, initializer=_init_worker, initargs=(options, self.decoding))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        self.decoding.close()


def _init_worker(options: ExtractOptions, decoding: multiprocessing.queues.Queue) -> None:
    global _EXTRACTOR, _QUIET, _DECODING
    import signal

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's: it commits and stops
    _QUIET = quiet_native_stderr(in_worker=True)
    _QUIET.__enter__()
    try:  # one BLAS thread per worker: the workers are the parallelism
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    _EXTRACTOR = Extractor(options, decode_threads=1)  # one decoding thread, as one BLAS thread above
    decoding.cancel_join_thread()  # progress only: an exiting worker never waits for a caller that stopped reading
    _DECODING = decoding


def _die_with_parent() -> None:
    """Linux: end this worker when its parent dies (a SIGKILLed `kebr extract` leaves no orphans
    blocked on the task queue forever)."""
    import ctypes
    import signal

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        pass


def _work(item: VideoItem) -> ItemResult:
    assert _EXTRACTOR is not None and _DECODING is not None
    return _EXTRACTOR.process(item, _DECODING.put)


def _ready() -> bool:
    return _EXTRACTOR is not None


def start_workers(options: ExtractOptions) -> Workers:
    """Start `options.workers` worker processes and wait until each has built its Extractor. Start them
    before the store is opened (no worker holds its HDF5 handle) and before a model is built (no torch
    thread pools in the children).

    On Linux workers are forked: they inherit the imported modules and librosa's warmed-up kernels
    and start in milliseconds. Forking is unsafe once this process has run MediaPipe (its native
    thread pools do not survive a fork), so then, and on macOS/Windows, a fork server or spawn is
    used (each worker then pays ~1-2 s of imports and warm-up once).
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "mediapipe" not in sys.modules:
        audio_mod.warmup()
        ctx = multiprocessing.get_context("fork")
    elif "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
    else:  # pragma: no cover - Windows
        ctx = multiprocessing.get_context("spawn")
    ex = Workers(options, ctx)
    try:
        for f in [ex.submit(_ready) for _ in range(options.workers)]:
            f.result()
    except BrokenProcessPool:
        ex.shutdown(wait=False, cancel_futures=True)
        raise KebrError("the extraction worker processes could not start; try --workers 0 to see why") from None
    return ex


def ordered_results(
    items: list[VideoItem], options: ExtractOptions, executor: Workers | None, progress: DecodeProgress | None = None
) -> Iterator[ItemResult]:
    """Each item's result, in input order: from the workers of `executor`, or extracted in this process
    when it is None. With workers, at most 4 per worker are in flight (memory stays flat for any
    number of videos, and a slow video delays the writing of at most that many).

    progress: called, in this process, with the `Decoded` events of the video whose result comes next
    (in this process: every event; from workers: its latest event a few times a second while waiting
    for it, so the last one may be missed when its result overtakes it)."""
    if not items:
        return
    if executor is None:
        extractor = Extractor(options)
        for item in items:
            yield extractor.process(item, progress)
        return
    queue: deque[tuple[VideoItem, Future]] = deque()
    todo = iter(items)
    window = 4 * options.workers

    def refill() -> None:
        while len(queue) < window:
            item = next(todo, None)
            if item is None:
                return
            queue.append((item, executor.submit(_work, item)))

    latest: dict[str, Decoded] = {}  # the last event of each video in flight

    def receive() -> None:
        in_flight = {it.id for it, _ in queue} | {item.id}
        while True:
            try:
                event = executor.decoding.get_nowait()
            except (queue_mod.Empty, OSError, ValueError):  # nothing more now (or a closed queue)
                return
            if event.id in in_flight:  # events of a video already returned are stale
                latest[event.id] = event

    refill()
    while queue:
        item, future = queue.popleft()
        shown: Decoded | None = None
        while True:  # without `progress` too: the queue is emptied, never left to grow in the workers
            finished = progress is None or bool(wait([future], timeout=1.0 / DECODE_EVENTS_PER_S).done)
            receive()
            event = latest.get(item.id)
            # once its result is in, a video's last event is shown only to close a display already begun
            if progress is not None and event is not None and event is not shown and (not finished or shown):
                progress(event)
                shown = event
            if finished:
                break
        latest.pop(item.id, None)
        try:
            result = future.result()
        except BrokenProcessPool:  # a worker died (e.g. a native crash on a malformed file)
            raise KebrError(
                f"a worker process died while extracting {item.path}; rerun the same command to "
                "resume (finished videos are kept), or use --workers 1 to see the failing file"
            ) from None
        refill()
        yield result
