"""Embarrassingly parallel work spread over independent jobs: `kebr eval --seed-shard i/n` runs its part of
the seeds, `kebr ablate --shard i/n` its part of the configurations, `kebr extract --shard i/n` its part of
the videos (docs: README "Many machines").

The words. A *part* (i, n), 0 <= i < n, is what one of n jobs does; the user gives it as `--shard i/n` or
`--seed-shard i/n`, and `check_part` is its one validity check. Seeds and configurations, which every job
lists in the same order, are split by position: the k-th item (from 0) is in part k mod n (`in_part`,
`part_positions`). Videos are split by their id (`extract.inputs.id_in_part`: CRC-32 of the id mod n), so
that a video's part does not depend on what else the folder holds. A DDP rank's contiguous slice of the
evaluation data is another thing, `distributed.rank_slice`.

Every job writes only the files of its own items (seed-S/, runs/<configuration>/); files several jobs
share are written atomically with the same content (config.json) or changed under a lock (`locked`:
best-model/, a pretraining run two configurations share). Summaries (results.json, ablation.json) are
written only when a job aggregates every item: a plain run, which reuses the finished items and runs the
missing ones, or `--collect`, which only aggregates (`check_part_run`: neither goes with --force).

Jobs into one output claim what they work on (`claimed`: a lock on one byte per item, all of them for a
plain run), so two plain runs, or a plain run and a part, are refused at once instead of both training
the same seeds and interleaving their files; jobs with their own parts run side by side.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from kebr_core.errors import KebrError



def check_part(part: tuple[int, int] | None, option: str) -> None:
    """Refuse a part (i, n) outside 0 <= i < n, naming the option that gave it (None: the whole, fine)."""
    if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1]):
        raise KebrError(f"{option} {part[0]}/{part[1]} is invalid: use i/n with 0 <= i < n (e.g. 0/4 .. 3/4).")


def check_part_run(part: tuple[int, int] | None, option: str, *, collect: bool, force: bool, items: str) -> None:
    """The guards of a run split into parts (`kebr eval --seed-shard`, `kebr ablate --shard`) over `items`
    ("seeds", "configurations"): a valid part, not both a part and --collect, and no --force with either,
    which would remove the items other jobs finished."""
    check_part(part, option)
    if part is not None and collect:
        raise KebrError(f"{option} runs {items} and --collect runs none: give one of them.")
    if force and (part is not None or collect):
        raise KebrError(f"--force cannot go with {option} or --collect: it would remove the {items} other jobs "
                        "finished; start afresh with a plain --force run, then shard again.")


def in_part(position: int, part: tuple[int, int] | None) -> bool:
    """Whether the item at `position` (from 0) belongs to `part` (i, n); every item when part is None."""
    return part is None or position % part[1] == part[0]


def part_positions(count: int, part: tuple[int, int] | None) -> list[int] | None:
    """The positions (from 0) of `count` items that `part` holds; None (every item) when part is None."""
    return None if part is None else [k for k in range(count) if in_part(k, part)]


@contextmanager
def locked(path: Path, enabled: bool = True, agree: Callable[[bool], bool] | None = None,
           poll_s: float = 1.0) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing; POSIX fcntl, so also across machines on
    an NFS mount with locking) while the block runs; another job waits for it. enabled=False: no lock.

    agree: for a job of several processes whose rank 0 alone locks (`distributed.main_holds_lock`), called
    by every process after each try with whether it got the lock, and returning whether rank 0 did. The
    wait is then a series of short tries (`poll_s` apart) that every process takes part in, so the other
    ranks never sit in one collective call longer than a try (NCCL would time out on a long wait), and
    every rank enters the block together."""
    if agree is not None:
        fd = _open_lock(path) if enabled else None
        try:
            while not agree(fd is not None and _try_lock(fd)):
                time.sleep(poll_s)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock
        return
    if not enabled:
        yield
        return
    fd = _open_lock(path)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by another process
        return False
    return True


@contextmanager
def claimed(path: Path, items: Iterable[int] | None, what: str) -> Iterator[None]:
    """Claim `items` (positions from 0; None: all, the whole file) of the lock file `path` for this job
    while the block runs, without waiting: when another job holds any of them, KebrError at once naming
    `what`. POSIX byte-range locks (fcntl), released by the kernel when the process ends, even by kill -9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            if items is None:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # from byte 0 to beyond the end: every item
            else:
                for position in items:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, position)
        except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by another process
            raise KebrError(f"{what} is in use by another kebr job right now; wait for it to finish (or give each job "
                            "its own --out, or its own --seed-shard / --shard).") from None
        yield
    finally:
        os.close(fd)  # releases every lock this job holds on the file
