"""Embarrassingly parallel work spread over independent jobs: `kebr eval --seed-shard i/n` runs its share of
the seeds, `kebr ablate --shard i/n` its share of the configurations (docs: README "Many machines").

The k-th item (from 0, in the order the command lists them) belongs to shard k mod n, as `kebr extract
--shard i/n` numbers its shards (0 <= i < n). Every job writes only the files of its own items (seed-S/,
runs/<configuration>/); files several jobs share are written atomically with the same content
(config.json) or changed under a lock (`locked`: best-model/, a pretraining run two configurations share).
Summaries (results.json, ablation.json) are written only when a job aggregates every item: a plain run,
which reuses the finished items and runs the missing ones, or `--collect`, which only aggregates.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kebr_core.errors import KebrError



def check_shard(shard: tuple[int, int] | None, option: str) -> None:
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise KebrError(f"{option} {shard[0]}/{shard[1]} is invalid: use i/n with 0 <= i < n (e.g. 0/4 .. 3/4).")


def in_shard(position: int, shard: tuple[int, int] | None) -> bool:
    """Whether the item at `position` (from 0) belongs to `shard` (i, n); every item when shard is None."""
    return shard is None or position % shard[1] == shard[0]


@contextmanager
def locked(path: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing; POSIX fcntl, so also across machines on
    an NFS mount with locking) while the block runs; another job waits for it. enabled=False: no lock."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
