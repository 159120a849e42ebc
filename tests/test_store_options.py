"""StoreWriter's less used settings: compression (and the reader's chunk cache for it), time-based
commits (`flush_seconds`), and the one-sentence error when another process is writing the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from kebr_core.data import store as store_module
from kebr_core.data.store import FeatureStore, StoreWriter
from kebr_core.errors import KebrError
from tests.test_store import AUDIO, VISION, assert_same, make_sample


def chunk_cache_bytes(store: FeatureStore) -> int:
    """The HDF5 raw-data chunk cache of the per-process handle the reader reads frames through."""
    return store._handle().id.get_access_plist().get_cache()[2]


@pytest.mark.parametrize("compression", ["lzf", "gzip"])
def test_compressed_store_round_trips_and_reads_through_a_chunk_cache(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "c.h5"
    samples = [make_sample(i) for i in range(40)]
    with StoreWriter(path, AUDIO, VISION, compression=compression, chunk_bytes=1024) as w:
        for s in samples:
            w.add(s)
    with h5py.File(path, "r") as f:
        assert f["audio/data"].compression == compression and f["vision/data"].compression == compression
        assert f["audio/data"].shuffle and f["audio/data"].chunks[0] < f["audio/data"].shape[0]  # several chunks
    with FeatureStore(path) as store:
        # Compressed chunks are decompressed into a cache (4 MiB), so a chunk serves all its samples.
        assert chunk_cache_bytes(store) == 4 << 20
        for i in (17, 3, 39, 0, 17):  # out of order, repeated
            assert_same(store.sample(i), samples[i])
    with FeatureStore(path, rdcc_nbytes=1 << 16) as store:
        assert chunk_cache_bytes(store) == 1 << 16


def test_uncompressed_store_reads_without_a_chunk_cache(tmp_path: Path) -> None:
    path = tmp_path / "u.h5"
    with StoreWriter(path, AUDIO, VISION) as w:
        w.add(make_sample(1))
    with h5py.File(path, "r") as f:
        assert f["audio/data"].compression is None
    with FeatureStore(path) as store:
        assert chunk_cache_bytes(store) == 0


def test_unknown_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compression must be None, 'lzf' or 'gzip'"):
        StoreWriter(tmp_path / "x.h5", AUDIO, VISION, compression="zstd")
    assert not (tmp_path / "x.h5").exists()


def test_buffered_samples_are_committed_after_flush_seconds(tmp_path: Path, monkeypatch) -> None:
    """A commit happens on the first add once the oldest buffered sample has waited flush_seconds
    (a clock of our own: no sleeping), even though flush_every is far away."""
    now = [100.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: now[0])
    reported: list[list[str]] = []
    writer = StoreWriter(tmp_path / "t.h5", AUDIO, VISION, flush_every=1000, flush_seconds=2.0, on_commit=reported.append)
    writer.add(make_sample(0))
    now[0] += 1.5
    writer.add(make_sample(1))
    assert (writer.committed, writer.pending, reported) == (0, 2, [])  # the oldest has waited 1.5 s
    now[0] += 0.5
    writer.add(make_sample(2))
    assert (writer.committed, writer.pending) == (3, 0)
    assert reported == [[make_sample(i).id for i in range(3)]] and len(FeatureStore(tmp_path / "t.h5")) == 3
    now[0] += 1.9  # the clock restarts with the next buffered sample
    writer.add(make_sample(3))
    now[0] += 1.9
    writer.add(make_sample(4))
    assert (writer.committed, writer.pending) == (3, 2)
    writer.close()
    assert len(FeatureStore(tmp_path / "t.h5")) == 5


HOLD_WRITER = """
import sys
from kebr_core.data.store import StoreWriter
writer = StoreWriter(sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","))
print("open", flush=True)
sys.stdin.readline()
writer.close()
"""


def test_a_store_being_written_by_another_process_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "busy.h5"
    with StoreWriter(path, AUDIO, VISION) as w:
        w.add(make_sample(1))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, str(path), ",".join(AUDIO), ",".join(VISION)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "open"
        message = f"Store {path} is being written by another process; wait for it to finish."
        with pytest.raises(KebrError) as reading:
            FeatureStore(path)
        with pytest.raises(KebrError) as writing:
            StoreWriter(path, AUDIO, VISION)
        assert str(reading.value) == message and str(writing.value) == message
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    assert_same(FeatureStore(path).sample(0), make_sample(1))  # nothing lost
