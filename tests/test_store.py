"""The HDF5 feature store: round trip, resume, crash safety (SIGKILL), and bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from kebr_core.data.store import FORMAT_VERSION, FeatureStore, Sample, StoreWriter
from kebr_core.errors import KebrError

AUDIO = [f"a{i}" for i in range(3)]
VISION = [f"v{i}" for i in range(4)]


def make_sample(i: int) -> Sample:
    """Deterministic sample i; every third has no audio, every fourth no vision (zero-length sequences)."""
    rng = np.random.default_rng(i)
    la = 0 if i % 3 == 0 else int(rng.integers(1, 30))
    lv = 0 if i % 4 == 0 else int(rng.integers(1, 12))
    return Sample(
        id=f"vid{i // 5}$_${i % 5}", text=f"sample {i} – naïve café ✓",
        audio=rng.standard_normal((la, len(AUDIO))),  # float64 on purpose: stored as float32
        vision=rng.standard_normal((lv, len(VISION))).astype(np.float32),
        label=float("nan") if i % 7 == 6 else float(rng.uniform(-3, 3)),
        split=("train", "valid", "test", "unlabeled")[i % 4],
        text_source=("manifest", "sidecar", "asr:pocketsphinx", "import")[i % 4],
    )


def assert_same(read: Sample, written: Sample) -> None:
    assert read.id == written.id and read.text == written.text
    assert read.split == written.split and read.text_source == written.text_source
    np.testing.assert_array_equal(read.audio, np.asarray(written.audio, dtype=np.float32))
    np.testing.assert_array_equal(read.vision, np.asarray(written.vision, dtype=np.float32))
    assert read.audio.dtype == np.float32 and read.vision.dtype == np.float32
    assert read.audio.shape[1] == len(AUDIO) and read.vision.shape[1] == len(VISION)
    np.testing.assert_array_equal(np.float32(read.label), np.float32(written.label))  # NaN == NaN here


def test_round_trip_with_zero_length_sequences(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    samples = [make_sample(i) for i in range(23)]
    with StoreWriter(path, AUDIO, VISION, audio_rate_hz=43.07, vision_fps=10, extractor={"audio": "kebr33"},
                     source="unit", flush_every=5) as writer:
        for s in samples:
            assert writer.add(s) is True
        assert writer.add(samples[3]) is False  # same id again: skipped
        assert samples[4].id in writer and "nope" not in writer
        writer.add_error("broken$_$1", "no audio\ntrack")

    store = FeatureStore(path)
    assert len(store) == 23
    for i, s in enumerate(samples):
        assert_same(store.sample(i), s)
    assert store.ids == [s.id for s in samples] and store.texts == [s.text for s in samples]
    audio_len, vision_len = store.lengths()
    assert audio_len.tolist() == [len(s.audio) for s in samples]
    assert vision_len.tolist() == [len(s.vision) for s in samples]
    assert audio_len[0] == 0 and vision_len[0] == 0 and store.audio(0).shape == (0, 3)
    assert store.indices("valid").tolist() == [1, 5, 9, 13, 17, 21]
    assert store.indices(["train", "test"]).tolist() == [i for i in range(23) if i % 4 in (0, 2)]
    assert store.indices().tolist() == list(range(23))
    assert store.errors() == {"broken$_$1": "no audio track"}
    assert store.audio_features == AUDIO and store.vision_features == VISION
    attrs = store.attrs
    assert attrs["format_version"] == FORMAT_VERSION and attrs["source"] == "unit"
    assert attrs["audio_rate_hz"] == pytest.approx(43.07) and attrs["vision_fps"] == 10.0
    assert attrs["extractor"] == {"audio": "kebr33"}
    audio, vision = store.read_block(2, 9)
    for j, i in enumerate(range(2, 9)):
        np.testing.assert_array_equal(audio[j], store.audio(i))
        np.testing.assert_array_equal(vision[j], store.vision(i))
    with pytest.raises(IndexError):
        store.audio(23)
    with pytest.raises(KebrError, match="Unknown split 'val'"):
        store.indices("val")
    store.close()

    # The public layout of docs/design.md §2, readable with plain h5py.
    with h5py.File(path, "r") as f:
        assert f["audio/offsets"][:].tolist() == [0, *np.cumsum(audio_len).tolist()]
        assert f["audio/data"].shape == (int(audio_len.sum()), 3) and f["audio/data"].dtype == np.float32
        assert [v.decode() for v in f["split"][:3]] == ["train", "valid", "test"]
        assert f["label"].dtype == np.float32


def test_resume_appends_and_skips_present_ids(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with StoreWriter(path, AUDIO, VISION) as writer:
        for i in range(10):
            writer.add(make_sample(i))
    with StoreWriter(path, AUDIO, VISION) as writer:
        assert len(writer) == 10 and writer.committed == 10
        added = [writer.add(make_sample(i)) for i in range(15)]
    assert added == [False] * 10 + [True] * 5
    store = FeatureStore(path)
    assert len(store) == 15
    for i in range(15):
        assert_same(store.sample(i), make_sample(i))


def test_commit_reporting(tmp_path: Path) -> None:
    """add() buffers; a commit every flush_every samples, on flush() and on close() reports ids as written."""
    reported: list[list[str]] = []
    writer = StoreWriter(tmp_path / "s.h5", AUDIO, VISION, flush_every=3, flush_seconds=1e9, on_commit=reported.append)
    for i in range(4):
        writer.add(make_sample(i))
    assert (writer.committed, writer.pending) == (3, 1)
    assert reported == [[make_sample(i).id for i in range(3)]]
    assert len(FeatureStore(tmp_path / "s.h5")) == 3  # a reader sees only committed samples
    writer.flush()
    assert (writer.committed, writer.pending) == (4, 0) and reported[-1] == [make_sample(3).id]
    writer.add(make_sample(4))
    writer.close()
    assert reported[-1] == [make_sample(4).id] and len(FeatureStore(tmp_path / "s.h5")) == 5


def test_writer_refuses_other_features_and_bad_samples(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with StoreWriter(path, AUDIO, VISION) as writer:
        writer.add(make_sample(1))
        with pytest.raises(ValueError, match="audio has shape"):
            writer.add(Sample("x", "t", np.zeros((2, 5)), np.zeros((0, 4)), 0.0, "train"))
        with pytest.raises(ValueError, match="split"):
            writer.add(Sample("y", "t", np.zeros((2, 3)), np.zeros((0, 4)), 0.0, "dev"))
    with pytest.raises(KebrError, match="holds vision features 4 columns: v0, v1, v2, …, not 2 columns"):
        StoreWriter(path, AUDIO, ["p", "q"])


def test_reader_rejects_bad_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(KebrError, match="is not an HDF5 file"):
        FeatureStore(text)
    with pytest.raises(KebrError, match="does not exist"):
        FeatureStore(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(KebrError, match="not a kebr feature store"):
        FeatureStore(other)
    old = tmp_path / "old.h5"
    with StoreWriter(old, AUDIO, VISION) as w:
        w.add(make_sample(1))
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(KebrError, match="format_version 99"):
        FeatureStore(old)
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        del f["text"]
    with pytest.raises(KebrError, match="text missing"):
        FeatureStore(old)


def test_text_only_store_has_no_feature_columns(tmp_path: Path) -> None:
    empty = np.zeros((0, 0), dtype=np.float32)
    with StoreWriter(tmp_path / "t.h5", [], []) as writer:
        writer.add(Sample("a$_$1", "hello", empty, empty, 1.5, "train"))
    store = FeatureStore(tmp_path / "t.h5")
    assert store.audio(0).shape == (0, 0) and store.vision(0).shape == (0, 0)
    assert store.lengths()[0].tolist() == [0]


# ── crash safety ────────────────────────────────────────────────────────────────────────────────

WRITER_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_store import AUDIO, VISION, make_sample
    from kebr_core.data.store import StoreWriter
    path, n, flush_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def report(ids):  # "reported as written": printed only after the commit returned
        sys.stdout.write(" ".join(ids) + "\\n")
        sys.stdout.flush()

    with StoreWriter(path, AUDIO, VISION, flush_every=flush_every, on_commit=report, chunk_bytes=2048) as w:
        for i in range(n):
            w.add(make_sample(i))
            if i % 40 == 0:
                w.add_error(f"failed{{i}}", "boom")
""")


def test_sigkilled_writer_leaves_every_reported_sample_and_rerun_completes(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT.format(tests=str(Path(__file__).parent)))
    path, n, flush_every = tmp_path / "s.h5", 3000, 3
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(n), str(flush_every)],
                            stdout=subprocess.PIPE, text=True)
    reported: list[str] = []
    while len(reported) < 150:  # kill it mid-way, while it is committing every 3 samples
        line = proc.stdout.readline()
        assert line, "the writer ended before it could be killed"
        reported += line.split()
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    reported += rest.split()
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) < n

    store = FeatureStore(path)
    # Every reported sample is there, in order; at most the one commit in flight beyond them.
    assert store.ids[: len(reported)] == reported
    assert len(store) - len(reported) <= flush_every
    for i in range(len(store)):
        assert_same(store.sample(i), make_sample(i))
    store.close()

    rerun = subprocess.run([sys.executable, str(script), str(path), str(n), "500"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    store = FeatureStore(path)
    assert store.ids == [make_sample(i).id for i in range(n)]
    for i in list(range(0, n, 97)) + list(range(len(reported) - 5, len(reported) + 10)):
        assert_same(store.sample(i), make_sample(i))
    assert sorted(store.errors()) == sorted(f"failed{i}" for i in range(0, n, 40))


def test_resume_clears_rows_whose_strings_never_reached_the_file(tmp_path: Path) -> None:
    """The state a kill during a commit can leave (seen with SIGKILL): uncommitted rows whose raw heap
    references reached the file while the strings they point to did not. Rewriting such a row makes
    HDF5 free a missing heap object ("bad heap index") unless the resumed writer clears it first."""
    path = tmp_path / "s.h5"
    with StoreWriter(path, AUDIO, VISION) as writer:
        for i in range(5):
            writer.add(make_sample(i))
        writer.add_error("failed0", "boom")
    with h5py.File(path, "r+") as f:
        for name, committed in (("id", 5), ("text", 5), ("text_source", 5), ("split", 5),
                                ("errors/id", 1), ("errors/message", 1)):
            ds = f[name]
            mask, raw = ds.id.read_direct_chunk((0,))
            rows = np.frombuffer(raw, dtype=np.uint8).reshape(ds.chunks[0], -1).copy()
            dangling = rows[committed - 1].copy()
            dangling[12:16] = np.frombuffer(np.uint32(60_000).tobytes(), np.uint8)  # no such heap object
            rows[committed: committed + 4] = dangling
            ds.id.write_direct_chunk((0,), rows.tobytes(), mask)
        f["label"].resize((9,))  # a kill can also leave grown datasets behind
        f["audio/offsets"].resize((10,))
    assert len(FeatureStore(path)) == 5
    with StoreWriter(path, AUDIO, VISION, flush_every=2) as writer:  # several commits cross the stale rows
        for i in range(12):
            writer.add(make_sample(i))
        writer.add_error("failed1", "bang")
    store = FeatureStore(path)
    assert store.ids == [make_sample(i).id for i in range(12)]
    for i in range(12):
        assert_same(store.sample(i), make_sample(i))
    assert store.errors() == {"failed0": "boom", "failed1": "bang"}
