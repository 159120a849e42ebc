"""Hostile files (crafted HDF5 stores, MMSA pickles of the wrong content, videos that lie about their length)
through the real CLI in a child process, under a time and a memory limit (tests/hostile.py).

Each table row is one crafted input and the commands it is given to; every command must refuse in one
sentence naming the file (exit 1, no traceback, nothing lost or changed), within the limits. Every crafted
store is given to `kebr inspect`; `pretrain` and `eval` (slower: each imports the trainer) run on every
store too, marked slow.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from tests.conftest import TINY_BERT, write_tiny_store
from tests.hostile import assert_refused, run_hostile
from tests.media import make_ten_hour_clip

STR = h5py.string_dtype("utf-8")
FAST = ["--text-model", TINY_BERT, "--batch-size", "8", "--epochs", "1"]


def test_the_harness_measures_and_stops(tmp_path: Path) -> None:
    """The runner reports an ordinary refusal with its RSS, and kills a command past its time limit."""
    refused = run_hostile(["inspect", "nope.h5"], tmp_path)
    assert_refused(refused, "nope.h5 does not exist")
    assert 50 < refused.peak_rss_mb < 2000 and refused.seconds > 0
    stopped = run_hostile(["--help"], tmp_path, time_limit_s=0.3)  # importing torch alone takes longer
    assert stopped.timed_out and stopped.code == -9
    with pytest.raises(AssertionError, match="hung"):
        assert_refused(stopped, "")


# ── class 1: crafted HDF5 stores ─────────────────────────────────────────────────────────────────────

_TEMPLATE: dict[str, Path] = {}


def _fresh(tmp: Path) -> Path:
    """A copy of one valid 40-sample store (written once per test session) at tmp/crafted.h5."""
    if "store" not in _TEMPLATE:
        import tempfile

        _TEMPLATE["store"] = write_tiny_store(Path(tempfile.mkdtemp(prefix="kebr-hostile-")) / "t.h5", n=40)
    return Path(shutil.copy(_TEMPLATE["store"], tmp / "crafted.h5"))


def _replace(f: h5py.File, name: str, data: object, **kwargs: object) -> None:
    del f[name]
    f.create_dataset(name, data=data, **kwargs)


def _strings_with(f: h5py.File, name: str, row: int, value: bytes) -> None:
    """Dataset `name` with row `row` replaced by raw bytes (HDF5 keeps them; they need not be UTF-8)."""
    values = list(f[name][:])
    values[row] = value
    _replace(f, name, np.array(values, dtype=object), dtype=STR, maxshape=(None,), chunks=(4096,))


def _offsets(modality: str, edit: Callable[[np.ndarray], None]) -> Callable[[h5py.File], None]:
    def craft(f: h5py.File) -> None:
        offsets = f[f"{modality}/offsets"][:]
        edit(offsets)
        f[f"{modality}/offsets"][:] = offsets
    return craft


def _set(index: int | slice, value: int) -> Callable[[np.ndarray], None]:
    def edit(a: np.ndarray) -> None:
        a[index] = value
    return edit


def _group_for(name: str) -> Callable[[h5py.File], None]:
    def craft(f: h5py.File) -> None:
        del f[name]
        f.create_group(name)
    return craft


def _attr(key: str, value: object, **kwargs: object) -> Callable[[h5py.File], None]:
    def craft(f: h5py.File) -> None:
        if kwargs:
            f.attrs.create(key, value, **kwargs)
        else:
            f.attrs[key] = value
    return craft


def _one_d_audio(f: h5py.File) -> None:
    _replace(f, "audio/data", f["audio/data"][:].reshape(-1))


def _sparse_frames(f: h5py.File) -> None:
    """audio/data declared 10^12 rows (HDF5 allocates none of them) and one sample spanning 10^12 - 1000."""
    f["audio/data"].resize((10**12, f["audio/data"].shape[1]))
    offsets = f["audio/offsets"][:]
    offsets[-1] = 10**12
    f["audio/offsets"][:] = offsets


def _sparse_index(f: h5py.File) -> None:
    """Every per-sample dataset declared 10^9 rows (none stored) and committed saying so."""
    n = 10**9
    for name in ("id", "text", "text_source", "split", "label", "audio/offsets", "vision/offsets"):
        f[name].resize((n + 1,))
    f["committed"][0] = n


def _duplicate_id(f: h5py.File) -> None:
    _strings_with(f, "id", 7, b"s003")


def _errors_not_utf8(f: h5py.File) -> None:
    f["errors/id"].resize((1,))
    f["errors/message"].resize((1,))
    f["errors/id"][0] = b"bad\xff"
    f["errors/message"][0] = b"it failed"
    f["committed"][1] = 1


def _text_not_utf8(f: h5py.File) -> None:
    _strings_with(f, "text", 3, b"a great \xc3\x28 movie")


def _external_link(f: h5py.File, name: str) -> None:
    """`name` becomes a link to the same object in another (valid) store beside this one."""
    other = Path(f.filename).with_name("other.h5")
    shutil.copy(_TEMPLATE["store"], other)
    del f[name]
    f[name] = h5py.ExternalLink(other.name, "/" + name)


def _external_storage(f: h5py.File) -> None:
    shape = f["audio/data"].shape
    del f["audio/data"]
    f.create_dataset("audio/data", shape, dtype=np.float32, external=[("/dev/zero", 0, shape[0] * shape[1] * 4)])


@dataclass
class StoreCase:
    name: str
    craft: Callable[[h5py.File], None]
    fragment: str  # in the sentence, after "Store <path> is damaged: " (or whatever it says)


STORES = [
    StoreCase("id not UTF-8", lambda f: _strings_with(f, "id", 3, b"s\xff03"), "id of row 3 is not valid UTF-8"),
    StoreCase("text not UTF-8", _text_not_utf8, "text of sample 's003' is not valid UTF-8"),
    StoreCase("split not UTF-8", lambda f: _strings_with(f, "split", 5, b"tr\xe9in"),
              "split of sample 's005' is not valid UTF-8"),
    StoreCase("text_source not UTF-8", lambda f: _strings_with(f, "text_source", 0, b"\xff"),
              "text_source of sample 's000' is not valid UTF-8"),
    StoreCase("an error id not UTF-8", _errors_not_utf8, "errors/id of row 0 is not valid UTF-8"),
    StoreCase("a duplicate id", _duplicate_id, "id 's003' occurs twice"),
    StoreCase("negative offset", _offsets("audio", _set(5, -7)), "audio/offsets give sample 's004' a negative length"),
    StoreCase("offset past the end", _offsets("vision", _set(-1, 10**6)), "vision/offsets point past the"),
    StoreCase("offsets of 1e12", _offsets("audio", _set(slice(20, None), 10**12)), "audio/offsets point past the"),
    StoreCase("offsets not starting at 0", _offsets("audio", _set(0, 3)), "audio/offsets"),
    StoreCase("1e12 frames declared, none stored", _sparse_frames, "audio/offsets cover 1000000000000 frames, but the "
              "file stores only"),
    StoreCase("1e9 samples declared, none stored", _sparse_index, "it declares 1000000000 samples, but the file stores"),
    StoreCase("committed past the rows", lambda f: f["committed"].__setitem__(0, 500), "it declares 500 samples, but id has 40 rows"),
    StoreCase("committed negative", lambda f: f["committed"].__setitem__(0, -1), "committed record [-1, 0] is negative"),
    StoreCase("committed of one number", lambda f: _replace(f, "committed", np.array([40])), "committed has shape (1,)"),
    StoreCase("committed as text", lambda f: _replace(f, "committed", np.array(["40", "0"], dtype=object), dtype=STR),
              "committed holds object values, not integers"),
    StoreCase("a group where id belongs", _group_for("id"), "id is a group where a dataset belongs"),
    StoreCase("a group where audio/data belongs", _group_for("audio/data"), "audio/data is a group where a dataset belongs"),
    StoreCase("a group where committed belongs", _group_for("committed"), "committed is a group where a dataset belongs"),
    StoreCase("a dataset where the audio group belongs", lambda f: (_group_for("audio")(f), None)[1] or
              (f.__delitem__("audio"), f.create_dataset("audio", data=np.zeros(3))), "audio/data, audio/offsets missing"),
    StoreCase("format_version a string", _attr("format_version", "1"), "format_version attribute is '1', not a whole number"),
    StoreCase("format_version an array", _attr("format_version", np.array([1, 1])),
              "format_version attribute is [1, 1], not a whole number"),
    StoreCase("format_version a float", _attr("format_version", 1.5), "format_version attribute is 1.5"),
    StoreCase("more feature names than columns", _attr("audio_features", [f"a{i}" for i in range(9)], dtype=STR),
              "audio/data has 7 columns but the store names 9 audio features"),
    StoreCase("feature names a single string", _attr("vision_features", "v0"),
              "vision_features attribute is 'v0', not a list of feature names"),
    StoreCase("feature names a number", _attr("vision_features", 5), "vision_features attribute is 5"),
    StoreCase("feature name not UTF-8", _attr("audio_features", np.array([b"a\xff"] * 7, dtype=object), dtype=STR),
              "an entry of its audio_features attribute is not valid UTF-8"),
    StoreCase("1-D audio data", _one_d_audio, "audio/data has shape"),
    StoreCase("3-D vision data", lambda f: _replace(f, "vision/data", f["vision/data"][:][:, :, None]),
              "vision/data has shape"),
    StoreCase("frames as text", lambda f: _replace(f, "vision/data", np.array([["x"] * 5], dtype=object), dtype=STR),
              "vision/data holds object values, not numbers"),
    StoreCase("labels as text", lambda f: _replace(f, "label", np.array(["1.5"] * 40, dtype=object), dtype=STR),
              "label holds object values, not numbers"),
    StoreCase("offsets as floats", lambda f: _replace(f, "audio/offsets", f["audio/offsets"][:].astype(np.float64)),
              "audio/offsets holds float64 values, not integers"),
    StoreCase("rate a string", _attr("audio_rate_hz", "fast"), "audio_rate_hz attribute is 'fast', not a number"),
    StoreCase("extractor not JSON", _attr("extractor", "{not json"), "extractor attribute is not a JSON object"),
    StoreCase("extractor a JSON list", _attr("extractor", "[1, 2]"), "extractor attribute is not a JSON object"),
    StoreCase("sources not a JSON list", _attr("sources", '{"a": 1}'), "sources attribute is not a JSON list"),
    StoreCase("created an array", _attr("created", np.arange(3)), "created attribute is [0, 1, 2], not text"),
    StoreCase("audio/data an external link", lambda f: _external_link(f, "audio/data"),
              "audio/data keeps its data in another file"),
    StoreCase("the vision group an external link", lambda f: _external_link(f, "vision"),
              "vision/data keeps its data in another file"),
    StoreCase("audio/data stored in /dev/zero", _external_storage, "audio/data keeps its data in another file"),
]


def _crafted(tmp: Path, case: StoreCase) -> Path:
    path = _fresh(tmp)
    with h5py.File(path, "r+") as f:
        case.craft(f)
    return path


@pytest.mark.parametrize("case", STORES, ids=[c.name for c in STORES])
def test_a_crafted_store_is_refused_when_opened(case: StoreCase, tmp_path: Path) -> None:
    """The library refuses every crafted store where it opens it, in one sentence naming the store; the
    texts and errors, read lazily, are read here too (every command that uses them meets the same check)."""
    from kebr_core.data.store import FeatureStore
    from kebr_core.errors import KebrError

    store = _crafted(tmp_path, case)
    with pytest.raises(KebrError) as refused:
        opened = FeatureStore(store)
        opened.texts, opened.errors()
    message = str(refused.value)
    assert message.startswith(f"Store {store} is damaged: ") or message.startswith(f"Store {store} "), message
    assert case.fragment in message and "\n" not in message


# Through the CLI in a child process: a few here, every case in the slow run (each start imports torch).
QUICK = ("id not UTF-8", "1e12 frames declared, none stored", "1e9 samples declared, none stored",
         "a group where audio/data belongs", "format_version an array", "1-D audio data")


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c.name in QUICK else pytest.mark.slow) for c in STORES],
                         ids=[c.name for c in STORES])
def test_a_crafted_store_is_refused_by_inspect(case: StoreCase, tmp_path: Path) -> None:
    store = _crafted(tmp_path, case)
    result = run_hostile(["inspect", store.name], tmp_path, time_limit_s=60, rss_limit_mb=1500)
    assert_refused(result, f"Store {store.name}")
    assert_refused(result, case.fragment)


COMMANDS = {
    "pretrain": lambda store: ["pretrain", store.name, "-o", "run", *FAST],
    "eval": lambda store: ["eval", "-d", store.name, "-o", "ev", "--seeds", "1", "--freeze-encoder", *FAST],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", STORES, ids=[c.name for c in STORES])
def test_a_crafted_store_is_refused_by_training(case: StoreCase, command: str, tmp_path: Path) -> None:
    store = _crafted(tmp_path, case)
    result = run_hostile(COMMANDS[command](store), tmp_path, time_limit_s=120, rss_limit_mb=2000)
    assert_refused(result, case.fragment)


# ── class 5 and the pickle bombs of class 3: MMSA pickles ────────────────────────────────────────────


def _mmsa(**changes: object) -> dict:
    """An MMSA unaligned pickle's dict: a train split of two samples, with `changes` to its arrays."""
    train = {"raw_text": np.array(["a fine movie", "dull"], dtype=object), "id": np.array(["v$_$1", "v$_$2"], dtype=object),
             "regression_labels": np.array([1.5, -0.5], np.float32), "audio": np.ones((2, 3, 5), np.float32),
             "vision": np.zeros((2, 4, 20), np.float32), "audio_lengths": np.array([3, 2]),
             "vision_lengths": np.array([4, 1])}
    train.update(changes)
    return {"train": train}


class _DeclaredArray:
    """Pickles as numpy pickles an array, but declares `shape` while holding the data of `items`."""

    def __init__(self, shape: tuple[int, ...], dtype: str, items: object) -> None:
        self.state = (1, shape, np.dtype(dtype), False, items)

    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state


def _pickled(data: object) -> bytes:
    return pickle.dumps(data, protocol=4)


def _nested(depth: int) -> bytes:
    """A pickle of a list nested `depth` deep (EMPTY_LIST ×depth, APPEND ×(depth-1)), no recursion to make it."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


@dataclass
class PickleCase:
    name: str
    blob: Callable[[], bytes]
    fragment: str


PICKLES = [
    PickleCase("labels as text", lambda: _pickled(_mmsa(regression_labels=np.array(["1.5", "x"]))),
               "train/regression_labels holds <U3 values, not numbers"),
    PickleCase("a label that is text", lambda: _pickled(_mmsa(regression_labels=np.array([1.0, "x"], dtype=object))),
               "train/regression_labels of sample 1 ('v$_$2') holds text, not numbers"),
    PickleCase("dicts inside the audio", lambda: _pickled(_mmsa(audio=np.full((2, 3, 5), {}, dtype=object))),
               "train/audio of sample 0 ('v$_$1') holds a dict, not numbers"),
    PickleCase("a NUL in a text", lambda: _pickled(_mmsa(raw_text=np.array(["ok", "bad\x00text"], dtype=object))),
               "train/raw_text of sample 1 ('v$_$2') holds a NUL character"),
    PickleCase("a NUL in an id", lambda: _pickled(_mmsa(id=np.array(["v$_$1", "v\x00"], dtype=object))),
               "train/id of sample 1 holds a NUL character"),
    PickleCase("an id not UTF-8", lambda: _pickled(_mmsa(id=np.array([b"v1", b"v\xff"], dtype=object))),
               "train/id of sample 1 is not valid UTF-8 text"),
    PickleCase("an id that is a dict", lambda: _pickled(_mmsa(id=np.array([{"a": 1}, {"b": 2}], dtype=object))),
               "train/id of sample 0 is a dict, not text"),
    PickleCase("an id that is a number", lambda: _pickled(_mmsa(id=5)), "train/id is a single value"),
    PickleCase("labels with zero columns", lambda: _pickled(_mmsa(regression_labels=np.zeros((2, 0)))),
               "train/regression_labels has shape (2, 0)"),
    PickleCase("a negative length", lambda: _pickled(_mmsa(audio_lengths=np.array([3, -1]))),
               "train/audio_lengths of sample 1 ('v$_$2') is -1, not a frame count"),
    PickleCase("a NaN length", lambda: _pickled(_mmsa(vision_lengths=np.array([1.0, np.nan]))),
               "train/vision_lengths of sample 1 ('v$_$2') is nan"),
    PickleCase("an object array declaring 14.9 GiB", lambda: _pickled(_mmsa(audio=_DeclaredArray((2_000_000_000,), "O", [1.0, 2.0]))),
               "declares an array of 2,000,000,000 object items but holds the data of 2"),
    PickleCase("a float array declaring 16 GB", lambda: _pickled(_mmsa(vision=_DeclaredArray((2, 1_000_000_000), "f8", b"\0" * 16))),
               "declares an array of 2,000,000,000 float64 items but holds the data of 2"),
    PickleCase("bytes declaring 16 GiB", lambda: b"\x80\x04\x8e" + (16 << 30).to_bytes(8, "little") + b"abc",
               "is not a readable pickle"),
    PickleCase("lists nested 100,000 deep", lambda: _nested(100_000), "nests its data too deeply"),
]


@pytest.mark.parametrize("case", PICKLES, ids=[c.name for c in PICKLES])
def test_a_hostile_pickle_is_refused_when_read(case: PickleCase, tmp_path: Path) -> None:
    from kebr_core.data.importers import import_file
    from kebr_core.errors import KebrError

    (tmp_path / "x.pkl").write_bytes(case.blob())
    with pytest.raises(KebrError) as refused:
        import_file(tmp_path / "x.pkl", tmp_path / "x.h5")
    assert case.fragment in str(refused.value) and str(tmp_path / "x.pkl") in str(refused.value)
    assert not (tmp_path / "x.h5").exists()


PICKLES_QUICK = ("dicts inside the audio", "an id not UTF-8", "an object array declaring 14.9 GiB")


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c.name in PICKLES_QUICK else pytest.mark.slow)
                                  for c in PICKLES], ids=[c.name for c in PICKLES])
def test_a_hostile_pickle_is_refused_by_import(case: PickleCase, tmp_path: Path) -> None:
    (tmp_path / "x.pkl").write_bytes(case.blob())
    result = run_hostile(["import", "x.pkl", "-o", "x.h5"], tmp_path, time_limit_s=60, rss_limit_mb=1000)
    assert_refused(result, "x.pkl")
    assert_refused(result, case.fragment)


def test_the_checked_unpickler_still_reads_object_arrays_of_arrays(tmp_path: Path) -> None:
    """Arrays inside object arrays (ragged data some MMSA versions hold) come back as plain ndarrays."""
    from kebr_core.data.importers import load_data_pickle

    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.ones((2, 3)), np.zeros((1, 3))
    (tmp_path / "r.pkl").write_bytes(pickle.dumps({"train": {"audio": ragged}}, protocol=2))
    loaded = load_data_pickle(tmp_path / "r.pkl")["train"]["audio"]
    assert type(loaded) is np.ndarray and all(type(x) is np.ndarray for x in loaded)
    np.testing.assert_array_equal(loaded[0], np.ones((2, 3)))


# ── class 3, videos: --fps and a video whose pictures run for ten hours ──────────────────────────────


def test_decoding_stops_at_max_duration_whatever_the_timestamps_say(tmp_path: Path) -> None:
    from kebr_core.extract.video import MediaError, iter_frames, probe, read_audio
    from tests.test_bad_input import tone_clip

    video = make_ten_hour_clip(tmp_path / "long.mp4")
    assert probe(video).duration > 35000  # the header says ten hours
    with pytest.raises(MediaError, match=r"its pictures run to 36000 s, past the 60 s .* raise --max-duration"):
        sum(1 for _ in iter_frames(video, 10.0, max_seconds=60))
    clip = tone_clip(tmp_path / "tone.mp4", seconds=0.6)  # audio counted in decoded samples
    with pytest.raises(MediaError, match="its audio run to"):
        read_audio(clip, max_seconds=0.2)
    assert len(read_audio(clip, max_seconds=60)[22050]) == round(0.6 * 22050)
    assert sum(1 for _ in iter_frames(clip, 10.0, max_seconds=60)) == 6  # an ordinary clip: ceil(0.6 s × 10 fps)


def test_fps_has_a_ceiling_also_where_a_checkpoint_sets_it() -> None:
    from kebr_core.errors import KebrError
    from kebr_core.extract.extractor import ExtractOptions

    with pytest.raises(KebrError, match=r"--fps 1e\+06 is more than the 120 pictures per second"):
        ExtractOptions(fps=1e6, vision="none", asr="none").validate()
    ExtractOptions(fps=120, vision="none", asr="none").validate()


def test_extract_refuses_fps_past_the_ceiling(tmp_path: Path) -> None:
    result = run_hostile(["extract", ".", "-o", "x.h5", "--fps", "1000000"], tmp_path, time_limit_s=60)
    assert_refused(result, "--fps", code=2)
    assert "≤ 120" in result.output


@pytest.mark.slow
def test_extract_of_a_ten_hour_video_fails_that_video_quickly(tmp_path: Path) -> None:
    """Before the bound, mediapipe was fed 360,000 pictures of a 1.5 kB file (a hang)."""
    make_ten_hour_clip(tmp_path / "videos" / "long.mp4")
    result = run_hostile(["extract", "videos", "-o", "x.h5", "--asr", "none", "--max-duration", "600"], tmp_path,
                         time_limit_s=120, rss_limit_mb=2000)
    assert_refused(result, "nothing could be extracted", may_create=("x.h5",))  # the store records the failure
    reason = "its pictures run to 36000 s, past the 600 s that are decoded at most; raise --max-duration"
    assert reason in " ".join(result.output.split())
    from kebr_core.data.store import FeatureStore

    assert reason in FeatureStore(tmp_path / "x.h5").errors()["long"]


def test_an_openface_csv_claiming_ten_hours_is_refused_before_any_row_is_picked(tmp_path: Path) -> None:
    """Two rows 36000 s apart would be 720,000 rows of 709 values (2 GB) at 10 fps (the last row is held
    for the median gap, so the CSV spans 72000 s)."""
    from kebr_core.extract.video import MediaError
    from kebr_core.extract.vision import OPENFACE_FEATURES, read_openface_csv

    def csv(gap: float) -> Path:
        path = tmp_path / f"clip{gap:g}.csv"
        header = ", ".join(["frame", "face_id", "timestamp", "confidence", "success", *OPENFACE_FEATURES])
        rows = [", ".join(str(v) for v in [k + 1, 0, t, 0.9, 1] + [0.5] * 709) for k, t in enumerate([0.0, gap])]
        path.write_text("\n".join([header, *rows]) + "\n")
        return path

    with pytest.raises(MediaError, match="its timestamps run to 72000 s, past the 14400 s"):
        read_openface_csv(csv(36000.0), 10.0, max_seconds=14400)
    features, _ = read_openface_csv(csv(30.0), 10.0, max_seconds=60)  # within the bound: as before
    assert features.shape == (600, 709)
