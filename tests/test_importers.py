"""Importers: MMSA pickles (MOSI/MOSEI layouts), the real MOSI label.csv, and merging stores."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest

from kebr_core.data.importers import import_label_csv, import_mmsa_pickle, merge_stores, read_label_csv
from kebr_core.data.store import FeatureStore, Sample, StoreWriter
from kebr_core.errors import KebrError

from tests.conftest import MOSI_LABELS, MOSI_SAMPLE, needs_full_mosi  # noqa: E402


def mmsa_split(rng: np.random.Generator, n: int, prefix: str, la: int, da: int, lv: int, dv: int,
               lengths: bool, pad: float) -> tuple[dict, list[tuple[np.ndarray, np.ndarray]]]:
    """One split with MMSA's keys; frames beyond the valid length hold `pad`. Returns it and the valid frames."""
    audio = np.full((n, la, da), pad, dtype=np.float32)
    vision = np.full((n, lv, dv), pad, dtype=np.float32)
    a_len = rng.integers(1, la + 1, n)
    v_len = rng.integers(0, lv + 1, n)  # 0: no face in the whole clip
    valid = []
    for i in range(n):
        audio[i, : a_len[i]] = rng.uniform(0.5, 1.5, (a_len[i], da))
        vision[i, : v_len[i]] = rng.uniform(0.5, 1.5, (v_len[i], dv))
        valid.append((audio[i, : a_len[i]].copy(), vision[i, : v_len[i]].copy()))
    part = {
        "raw_text": np.array([f"  {prefix} utterance {i}  " for i in range(n)]),
        "audio": audio, "vision": vision,
        "id": np.array([f"{prefix}vid$_${i}" for i in range(n)]),
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "classification_labels": np.zeros(n), "annotations": np.array(["Neutral"] * n),
        "text_bert": np.zeros((n, 3, 50), dtype=np.float32), "text": np.zeros((n, 50, 768), dtype=np.float32),
    }
    if lengths:
        part["audio_lengths"], part["vision_lengths"] = a_len.tolist(), v_len.tolist()
    return part, valid


def check_store(out: Path, data: dict, valid: dict) -> None:
    store = FeatureStore(out)
    i = 0
    for split in ("train", "valid", "test"):
        for j, (audio, vision) in enumerate(valid[split]):
            s = store.sample(i)
            assert s.id == data[split]["id"][j] and s.split == split and s.text_source == "import"
            assert s.text == f"{split} utterance {j}"  # stripped
            assert s.label == pytest.approx(data[split]["regression_labels"][j])
            np.testing.assert_array_equal(s.audio, np.nan_to_num(audio, neginf=0.0))
            np.testing.assert_array_equal(s.vision, vision)
            i += 1
    assert len(store) == i


def test_mosi_unaligned_pickle_drops_padding_beyond_lengths(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data, valid = {}, {}
    for split, n in (("train", 5), ("valid", 2), ("test", 3)):
        data[split], valid[split] = mmsa_split(rng, n, split, 375, 5, 500, 20, lengths=True, pad=7.0)
    data["train"]["audio"][1, 0, 2] = -np.inf  # COVAREP's -inf: set to 0, as MMSA's loader does
    valid["train"][1][0][0, 2] = -np.inf
    src, out = tmp_path / "unaligned_50.pkl", tmp_path / "mosi.h5"
    src.write_bytes(pickle.dumps(data))
    calls = []
    result = import_mmsa_pickle(src, out, progress=lambda done, total: calls.append((done, total)))
    assert result["splits"] == {"train": 5, "valid": 2, "test": 3} and result["samples"] == 10
    assert (result["audio_dim"], result["vision_dim"], result["nonfinite_replaced"]) == (5, 20, 1)
    assert calls[-1] == (10, 10)
    check_store(out, data, valid)
    store = FeatureStore(out)
    assert len(store.audio_features) == 5 and len(store.vision_features) == 20
    assert not (store.audio(0) == 7.0).any()
    assert not Path(str(out) + ".tmp").exists()


def test_mosei_aligned_pickle_without_lengths_drops_all_zero_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data, valid = {}, {}
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        data[split], valid[split] = mmsa_split(rng, n, split, 50, 74, 50, 35, lengths=False, pad=0.0)
    src, out = tmp_path / "aligned_50.pkl", tmp_path / "mosei.h5"
    src.write_bytes(pickle.dumps(data))
    result = import_mmsa_pickle(src, out)
    assert result["lengths"] == "nonzero frames" and (result["audio_dim"], result["vision_dim"]) == (74, 35)
    check_store(out, data, valid)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["valid"].pop("vision"), "split 'valid' lacks the key(s) vision"),
    (lambda d: d["train"].update(id=d["train"]["id"][:2]), "train/raw_text has 3 rows but train/id has 2"),
    (lambda d: d["test"].update(id=d["train"]["id"]), "id 'trainvid$_$0' occurs twice (in train and test)"),
    (lambda d: [d.pop(s) for s in ("train", "valid", "test")], "has none of the splits"),
])
def test_bad_pickles_raise_one_sentence_and_leave_no_output(tmp_path: Path, mutate, message: str) -> None:
    rng = np.random.default_rng(2)
    data = {s: mmsa_split(rng, 3, s, 10, 5, 10, 20, lengths=True, pad=0.0)[0] for s in ("train", "valid", "test")}
    mutate(data)
    src, out = tmp_path / "bad.pkl", tmp_path / "out.h5"
    src.write_bytes(pickle.dumps(data))
    with pytest.raises(KebrError, match=message.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")):
        import_mmsa_pickle(src, out)
    assert list(tmp_path.iterdir()) == [src]


def test_not_a_pickle(tmp_path: Path) -> None:
    src = tmp_path / "x.pkl"
    src.write_bytes(b"\x00\x01 not a pickle at all")
    with pytest.raises(KebrError, match="is not a readable pickle"):
        import_mmsa_pickle(src, tmp_path / "o.h5")
    src.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(KebrError, match="holds a list, not MMSA's dict"):
        import_mmsa_pickle(src, tmp_path / "o.h5")


@pytest.mark.parametrize("source, splits", [
    (MOSI_SAMPLE, {"train": 174, "valid": 46, "test": 108}),
    pytest.param(MOSI_LABELS, {"train": 1284, "valid": 229, "test": 686}, marks=needs_full_mosi),
], ids=["sample", "full"])
def test_real_mosi_label_csv(tmp_path: Path, source: Path, splits: dict[str, int]) -> None:
    out = tmp_path / "mosi-text.h5"
    result = import_label_csv(source, out)
    assert result["samples"] == sum(splits.values()) and result["splits"] == splits
    store = FeatureStore(out)
    assert len(store) == sum(splits.values())
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    first = store.sample(0)
    assert first.id == "03bSnISJMiM$_$11" and first.text == "A LOT OF SAD PARTS"
    assert first.label == pytest.approx(-0.5) and first.split == "train" and first.text_source == "import"
    assert store.ids == [f"{r['video_id']}$_${r['clip_id']}" for r in rows]
    np.testing.assert_allclose(store.labels, [float(r["label"]) for r in rows], rtol=0, atol=1e-6)
    audio_len, vision_len = store.lengths()
    assert audio_len.sum() == 0 and vision_len.sum() == 0
    assert store.audio_features == [] and store.vision_features == []
    assert set(store.text_sources.tolist()) == {"import"}


@pytest.mark.parametrize("content, message", [
    ("video_id,clip_id,text,label\nv,1,hi,0.5\n", r"lacks the column\(s\) mode"),
    ("video_id,clip_id,text,label,mode\nv,1,hi,0.5,train\nv,1,again,1.0,test\n",
     r"id 'v\$_\$1' occurs twice \(lines 2 and 3\)"),
    ("video_id,clip_id,text,label,mode\nv,1,hi,high,train\n", r"line 2: label 'high' is not a number"),
    ("video_id,clip_id,text,label,mode\nv,1,hi,0.5,dev\n", r"line 2: mode 'dev' is not train, valid or test"),
    ("video_id,clip_id,text,label,mode\n", "has a header but no rows"),
])
def test_bad_label_csv(tmp_path: Path, content: str, message: str) -> None:
    src = tmp_path / "label.csv"
    src.write_text(content)
    with pytest.raises(KebrError, match=message):
        read_label_csv(src)


def small_store(path: Path, ids: list[str], d_audio: int = 3, errors: dict[str, str] | None = None) -> list[Sample]:
    rng = np.random.default_rng(len(ids) + d_audio)
    samples = [Sample(i, f"text of {i}", rng.standard_normal((int(rng.integers(0, 5)), d_audio)).astype(np.float32),
                      rng.standard_normal((int(rng.integers(0, 3)), 2)).astype(np.float32), 0.25, "train", "sidecar")
               for i in ids]
    with StoreWriter(path, [f"a{k}" for k in range(d_audio)], ["v0", "v1"], audio_rate_hz=43.0) as w:
        for s in samples:
            w.add(s)
        for k, v in (errors or {}).items():
            w.add_error(k, v)
    return samples


def test_merge_concatenates_and_refuses_mismatches(tmp_path: Path) -> None:
    a = small_store(tmp_path / "a.h5", ["x1", "x2", "x3"], errors={"bad1": "no face", "y2": "decode error"})
    b = small_store(tmp_path / "b.h5", ["y1", "y2"], errors={"bad2": "no audio"})
    result = merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5", block=2)
    assert result == {"path": str(tmp_path / "all.h5"), "samples": 5, "errors": 2}
    merged = FeatureStore(tmp_path / "all.h5")
    assert merged.ids == ["x1", "x2", "x3", "y1", "y2"]
    for i, s in enumerate(a + b):
        r = merged.sample(i)
        np.testing.assert_array_equal(r.audio, s.audio)
        np.testing.assert_array_equal(r.vision, s.vision)
        assert (r.text, r.text_source, r.label) == (s.text, s.text_source, s.label)
    assert merged.errors() == {"bad1": "no face", "bad2": "no audio"}  # y2 failed in a but is a sample in b
    assert merged.attrs["audio_rate_hz"] == 43.0

    small_store(tmp_path / "c.h5", ["z1"], d_audio=4)
    with pytest.raises(KebrError, match="their audio features differ"):
        merge_stores([tmp_path / "a.h5", tmp_path / "c.h5"], tmp_path / "bad.h5")
    small_store(tmp_path / "d.h5", ["q", "x2"])
    with pytest.raises(KebrError, match=f"id 'x2' is in both {tmp_path / 'a.h5'} and {tmp_path / 'd.h5'}"):
        merge_stores([tmp_path / "a.h5", tmp_path / "d.h5"], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "bad.h5.tmp").exists()
    with pytest.raises(KebrError, match="already exists"):
        merge_stores([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "all.h5")
