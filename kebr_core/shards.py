"""Embarrassingly parallel work spread over independent jobs: `kebr eval --seed-shard i/n` runs its share of
the seeds, `kebr ablate --shard i/n` its share of the configurations (docs: README "Many machines").

The k-th item (from 0, in the order the command lists them) belongs to shard k mod n, as `kebr extract
--shard i/n` numbers its shards (0 <= i < n). Every job writes only the files of its own items (seed-S/,
runs/<configuration>/); files several jobs share are written atomically with the same content
(config.json) or changed under a lock (`locked`: best-model/, a pretraining run two configurations share).
Summaries (results.json, ablation.json) are written only when a job aggregates every item: a plain run,
which reuses the finished items and runs the missing ones, or `--collect`, which only aggregates.

Jobs into one output claim what they work on (`claimed`: a lock on one byte per item, all of them for a
plain run), so two plain runs, or a plain run and a shard, are refused at once instead of both training
the same seeds and interleaving their files; shards with their own items run side by side.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from kebr_core.errors import KebrError



def check_shard(shard: tuple[int, int] | None, option: str) -> None:
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise KebrError(f"{option} {shard[0]}/{shard[1]} is invalid: use i/n with 0 <= i < n (e.g. 0/4 .. 3/4).")


def in_shard(position: int, shard: tuple[int, int] | None) -> bool:
    """Whether the item at `position` (from 0) belongs to `shard` (i, n); every item when shard is None."""
    return shard is None or position % shard[1] == shard[0]


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
