"""Hostile files (crafted HDF5 stores, MMSA pickles of the wrong content, videos that lie about their length)
through the real CLI in a child process, under a time and a memory limit (tests/hostile.py).

Each table row is one crafted input and the commands it is given to; every command must refuse in one
sentence naming the file (exit 1, no traceback, nothing lost or changed), within the limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile import assert_refused, run_hostile


def test_the_harness_measures_and_stops(tmp_path: Path) -> None:
    """The runner reports an ordinary refusal with its RSS, and kills a command past its time limit."""
    refused = run_hostile(["inspect", "nope.h5"], tmp_path)
    assert_refused(refused, "nope.h5 does not exist")
    assert 50 < refused.peak_rss_mb < 2000 and refused.seconds > 0
    stopped = run_hostile(["--help"], tmp_path, time_limit_s=0.3)  # importing torch alone takes longer
    assert stopped.timed_out and stopped.code == -9
    with pytest.raises(AssertionError, match="hung"):
        assert_refused(stopped, "")
