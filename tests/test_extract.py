"""Tests of `kebr extract` (docs/design.md §3) on real media made here: espeak-ng speech over a drifting real
face photo, encoded with PyAV; plus a clip without audio, a silent one, one without a face, a corrupt
and an empty file. Feature values are checked against hand-derived numbers (tones of known pitch,
subtitle files with known text, a photo with a known face box), and the store against itself under
2 workers and after an interrupted run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from kebr_core.extract.audio import (
    AUDIO_RATE_HZ,
    FEATURE_SETS,
    HOP_LENGTH,
    PITCH_CLASSES,
    SAMPLE_RATE,
    audio_features,
)
from kebr_core.extract.extractor import ExtractOptions
from kebr_core.extract.inputs import id_in_part, read_manifest
from kebr_core.extract.pipeline import extract
from kebr_core.extract.transcripts import find_sidecar, read_sidecar, subtitles_to_text
from kebr_core.extract.video import expected_frames, iter_frames, read_audio
from kebr_core.extract.vision import (
    MEDIAPIPE_FEATURES,
    OPENFACE_FEATURES,
    mesh_features,
    read_openface_csv,
)

import media  # tests/media.py


SRT = """1
00:00:00,000 --> 00:00:01,200
<i>I like it</i>

2
00:00:01,200 --> 00:00:02,000
{\\an8}a lot,  really.
"""
SRT_TEXT = "I like it a lot, really."


# ── audio features ─────────────────────────────────────────────────────────────────────────────────


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_audio_feature_sets_names_dims_and_lengths():
    kebr, mmsa = FEATURE_SETS["kebr33"], FEATURE_SETS["mmsa33"]
    assert kebr.names == ("zcr", *(f"mfcc_{i}" for i in range(20)), *(f"chroma_{p}" for p in PITCH_CLASSES))
    assert mmsa.names == ("log_f0", *(f"mfcc_{i}" for i in range(20)), *(f"cqt_{p}" for p in PITCH_CLASSES))
    assert kebr.dim == mmsa.dim == 33 and kebr.names[21] == "chroma_C" and kebr.names[-1] == "chroma_B"
    assert AUDIO_RATE_HZ == 22050 / 512
    for n in (HOP_LENGTH, 11025, 22050 + 7):
        for name in FEATURE_SETS:
            out = audio_features(tone(440, n / SAMPLE_RATE), name)
            assert out.shape == (1 + n // HOP_LENGTH, 33) and out.dtype == np.float32
            assert np.isfinite(out).all()
    assert audio_features(np.zeros(HOP_LENGTH - 1, np.float32)).shape == (0, 33)  # shorter than a hop
    with pytest.raises(KebrError, match="unknown audio feature set"):
        audio_features(tone(440), "opensmile")


def test_kebr33_values_on_a_tone():
    out = audio_features(tone(440.0))
    inner = out[4:-4]  # away from the zero-padded edges of centred frames
    # A 440 Hz sine crosses zero 2 × 440 times a second: ZCR = 880 / 22050 per sample.
    assert np.allclose(inner[:, 0], 880 / 22050, atol=0.002)
    chroma = inner[:, 21:]
    assert (chroma.argmax(axis=1) == PITCH_CLASSES.index("A")).all()  # 440 Hz is A4
    assert np.allclose(chroma.max(axis=1), 1.0)  # librosa normalises each frame's chroma to max 1


def test_mmsa33_log_f0_is_the_pitch_and_zero_when_unvoiced():
    y = np.concatenate([tone(220.0, 1.0), np.zeros(SAMPLE_RATE // 2, np.float32)])
    out = audio_features(y, "mmsa33")
    voiced = out[5:35, 0]  # frames well inside the tone
    assert np.allclose(voiced, math.log(220.0), atol=0.02)
    assert (out[-10:, 0] == 0.0).all()  # silence: unvoiced → 0, never a fake pitch
    assert (out[5:35, 21:].argmax(axis=1) == PITCH_CLASSES.index("A")).all()  # 220 Hz is A3


# ── transcripts ────────────────────────────────────────────────────────────────────────────────────


def test_subtitles_to_text_exact():
    assert subtitles_to_text(SRT, vtt=False) == SRT_TEXT
    vtt = (
        "WEBVTT - made by hand\n\nNOTE a comment\nthat spans lines\n\nSTYLE\n::cue { color: red }\n\n"
        "intro\n00:00.000 --> 00:01.000 align:start\n<v Ann>Hello <c.loud>there</c></v>\n\n"
        "00:01.000 --> 00:02.500\nHello <00:00:01.500>there\nfish &amp; chips\n\n"
        "00:02.500 --> 00:03.000\nfish &amp; chips\n"
    )
    # the second cue's first line repeats the first cue (roll-up captions): kept once
    assert subtitles_to_text(vtt, vtt=True) == "Hello there fish & chips"


def test_sidecar_lookup_order_and_text(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    assert find_sidecar(video) is None
    (tmp_path / "clip.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:01.000\nfrom vtt\n")
    assert read_sidecar(find_sidecar(video)) == "from vtt"
    (tmp_path / "clip.srt").write_text(SRT)
    assert find_sidecar(video).suffix == ".srt"
    (tmp_path / "clip.txt").write_text("\ufeff  plain   text\nover two lines \n")
    assert find_sidecar(video).suffix == ".txt"
    assert read_sidecar(find_sidecar(video)) == "plain text over two lines"


# ── decoding ───────────────────────────────────────────────────────────────────────────────────────


def test_decode_lengths_match_duration(tmp_path):
    clip = media.make_clip(tmp_path / "a.mp4")  # 25 fps
    assert 1.8 < clip.duration < 3.0
    audio = read_audio(clip.path, (22050, 16000))
    for rate, y in audio.items():
        assert abs(y.size - clip.duration * rate) <= 1  # AAC's end padding trimmed by the edit list
        assert np.abs(y).max() > 0.05 and y.dtype == np.float32
    for fps in (10.0, 7.0, 25.0, 30.0):
        frames = list(iter_frames(clip.path, fps, max_side=160))
        assert len(frames) == expected_frames(clip.duration, fps) == math.ceil(clip.duration * fps - 1e-9)
        assert frames[0].shape == (160, 160, 3) and frames[0].dtype == np.uint8  # 320 px shrunk to 160
    # at the source rate every source picture comes out once: the window's drift is visible
    full = [f.astype(np.int16) for f in iter_frames(clip.path, 25.0, max_side=None)]
    expected = [media.face_frame(o).astype(np.int16) for o in clip.offsets]
    assert len(full) == len(expected)
    for k, frame in enumerate(full):  # the best match among neighbours shows the same window position
        near = range(max(0, k - 3), min(len(expected), k + 4))
        best = min(near, key=lambda j: np.abs(frame - expected[j]).mean())
        assert (clip.offsets[best] == clip.offsets[k]).all(), k
        assert np.abs(frame - expected[k]).mean() < 4.0  # H.264 at crf 20: small coding error
    # a worker's single decoding thread gives the same pictures as FFmpeg's threads
    single = [f.astype(np.int16) for f in iter_frames(clip.path, 25.0, max_side=None, threads=1)]
    assert len(single) == len(full) and all(np.array_equal(a, b) for a, b in zip(single, full))
    silent = media.make_clip(tmp_path / "b.mp4", audio=False)
    assert read_audio(silent.path) is None


# ── vision ─────────────────────────────────────────────────────────────────────────────────────────


def test_vision_feature_names():
    assert len(MEDIAPIPE_FEATURES) == len(set(MEDIAPIPE_FEATURES)) == 13 + 70 * 3
    assert MEDIAPIPE_FEATURES[:3] == ("pose_yaw", "pose_pitch", "pose_roll")
    assert MEDIAPIPE_FEATURES[13:16] == ("lm_jaw0_x", "lm_jaw0_y", "lm_jaw0_z")
    assert MEDIAPIPE_FEATURES[-3:] == ("lm_iris_l_x", "lm_iris_l_y", "lm_iris_l_z")
    assert len(OPENFACE_FEATURES) == 709 and OPENFACE_FEATURES[-1] == "AU45_c"


def test_openface_csv_resampling_and_dropped_frames(tmp_path):
    meta = ["frame", "face_id", "timestamp", "confidence", "success"]
    rows = []
    for k in range(12):  # 30 fps, 0.4 s; rows 3 and 4 lost the face
        success = 0 if k in (3, 4) else 1
        rows.append([k + 1, 0, k / 30, 0.9, success] + [float(k)] * 709)
    # a second, larger face at t = 0.2 s (row 6): FaceLandmarkVidMulti output; the larger one wins
    big = [7, 1, 6 / 30, 0.9, 1] + [100.0] * 709
    rows.append(big)
    path = tmp_path / "clip.csv"
    with open(path, "w") as f:
        f.write(", ".join(meta + list(OPENFACE_FEATURES)) + "\n")  # OpenFace writes ", " separators
        for r in rows:
            f.write(", ".join(str(v) for v in r) + "\n")
    feats, no_face = read_openface_csv(path, fps=10.0)
    # targets 0.0, 0.1, 0.2, 0.3 s take rows 0, 3 (no face: dropped), 6 (bigger face), 9
    assert no_face == 1
    assert feats.shape == (3, 709)
    assert np.array_equal(feats[:, 0], [0.0, 100.0, 9.0]) and np.array_equal(feats[:, -1], [0.0, 100.0, 9.0])
    (tmp_path / "bad.csv").write_text("frame, timestamp, success\n1, 0.0, 1\n")
    with pytest.raises(ValueError, match="not an OpenFace 2.0 CSV"):
        read_openface_csv(tmp_path / "bad.csv", 10.0)


# ── the whole pipeline ─────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    clips = {
        "speech": media.make_clip(d / "speech.mp4"),  # transcript from ASR
        "sub/side": media.make_clip(d / "sub" / "side.mp4", text="i like it a lot really"),
        "noaudio": media.make_clip(d / "noaudio.mp4", audio=False),
        "silent": media.make_clip(d / "silent.mp4", text=None, duration=2.0),
        "noface": media.make_clip(d / "noface.mkv", face=False),
    }
    (d / "sub" / "side.srt").write_text(SRT)
    (d / "noface.txt").write_text("no face here\n")
    media.make_corrupt(d / "corrupt.mp4", like=d / "speech.mp4")
    media.make_empty(d / "empty.mov")
    (d / "notes.xyz").write_text("not a video")
    return d, clips


@pytest.fixture(scope="module")
def store_w1(media_dir, tmp_path_factory):
    d, _ = media_dir
    out = tmp_path_factory.mktemp("stores") / "w1.h5"
    summary = extract(d, out, ExtractOptions(workers=1))
    return summary, out


def store_contents(path: Path) -> tuple[list, dict, dict]:
    s = FeatureStore(path)
    rows = [(x.id, x.text, x.text_source, x.split, x.audio, x.vision) for x in map(s.sample, range(len(s)))]
    return rows, s.errors(), {k: v for k, v in s.attrs.items() if k not in ("created", "sources")}


def assert_same_store(a: Path, b: Path) -> None:
    rows_a, err_a, attrs_a = store_contents(a)
    rows_b, err_b, attrs_b = store_contents(b)
    assert [r[:4] for r in rows_a] == [r[:4] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert np.array_equal(ra[4], rb[4]), ra[0]
        assert np.array_equal(ra[5], rb[5]), ra[0]
    assert err_a == err_b and attrs_a == attrs_b


def test_store_contents_counts_and_errors(store_w1, media_dir):
    summary, out = store_w1
    _, clips = media_dir
    assert (summary.total, summary.done, summary.skipped, summary.failed) == (7, 5, 0, 2)
    assert (summary.no_audio, summary.no_speech, summary.no_face) == (1, 1, 1)
    assert summary.unsupported == ["notes.xyz"] and summary.ok
    store = FeatureStore(out)
    assert store.ids == ["noaudio", "noface", "silent", "speech", "sub/side"]  # sorted paths, no extension
    assert store.audio_features == list(FEATURE_SETS["kebr33"].names)
    assert store.vision_features == list(MEDIAPIPE_FEATURES)
    assert store.attrs["audio_rate_hz"] == 22050 / 512 and store.attrs["vision_fps"] == 10.0
    assert store.attrs["extractor"]["asr_backend"].startswith("pocketsphinx-")
    errors = store.errors()
    assert set(errors) == {"corrupt", "empty"}
    assert "cannot be opened" in errors["corrupt"] and "zero-length" in errors["empty"]
    by_id = {i: store.sample(k) for k, i in enumerate(store.ids)}
    assert all((s.split, math.isnan(s.label)) == ("unlabeled", True) for s in by_id.values())

    # sequence lengths: duration × rate, within one frame
    la, lv = store.lengths()
    for k, sample_id in enumerate(store.ids):
        clip = clips[sample_id]
        dropped = summary.no_face_frames_by_id.get(sample_id, 0)
        assert abs((lv[k] + dropped) - clip.duration * 10.0) <= 1, sample_id
        if clip.path.suffix == ".mp4" and sample_id != "noaudio":
            assert abs(la[k] - clip.duration * AUDIO_RATE_HZ) <= 1, sample_id
    # MKV declares no audio duration, so AAC's last-frame padding (< 1024 samples = 2 hops) stays
    k = store.ids.index("noface")
    assert 0 <= la[k] - clips["noface"].duration * AUDIO_RATE_HZ <= 1 + 1024 / HOP_LENGTH
    assert la[store.ids.index("noaudio")] == 0 and lv[store.ids.index("noaudio")] > 0
    assert lv[store.ids.index("noface")] == 0
    assert summary.no_face_frames_by_id == {"noface": expected_frames(clips["noface"].duration, 10.0)}

    # transcripts: sidecars exact, ASR close, nothing invented for silence
    assert (by_id["sub/side"].text, by_id["sub/side"].text_source) == (SRT_TEXT, "sidecar")
    assert (by_id["noface"].text, by_id["noface"].text_source) == ("no face here", "sidecar")
    assert by_id["speech"].text_source == "asr:pocketsphinx"
    assert media.word_error_rate(media.SENTENCE, by_id["speech"].text) <= 0.5, by_id["speech"].text
    assert by_id["silent"].text == "" and by_id["silent"].audio.shape[0] > 0

    # the face is where the drifting window put it, in every frame
    v = by_id["speech"].vision
    col = {n: i for i, n in enumerate(MEDIAPIPE_FEATURES)}
    x0, y0, x1, y1 = media.ASTRONAUT_FACE_BOX
    offsets = clips["speech"].offsets[np.round(np.arange(len(v)) * 25 / 10).astype(int)]
    fx, fy = v[:, col["face_x"]] * media.CROP + offsets[:, 0], v[:, col["face_y"]] * media.CROP + offsets[:, 1]
    assert ((fx > x0) & (fx < x1) & (fy > y0) & (fy < y1)).all()
    assert np.abs(v[:, col["pose_roll"]]).max() < 10 and np.isfinite(v).all()


def test_two_workers_give_the_same_store(store_w1, media_dir, tmp_path):
    d, _ = media_dir
    out = tmp_path / "w2.h5"
    summary = extract(d, out, ExtractOptions(workers=2))
    assert (summary.done, summary.failed) == (5, 2)
    assert_same_store(store_w1[1], out)


class Stop(Exception):
    pass


def test_killed_then_resumed_run_gives_the_same_store(store_w1, media_dir, tmp_path):
    d, _ = media_dir
    out = tmp_path / "resumed.h5"
    seen = []

    def kill_after_three(event):
        seen.append(event.id)
        if event.status in ("done", "failed") and len(seen) > 3:
            raise Stop

    with pytest.raises(Stop):  # in this process (workers=0); resumed with a worker process below
        extract(d, out, ExtractOptions(workers=0), progress=kill_after_three)
    partial = FeatureStore(out)
    assert 0 < len(partial) + len(partial.errors()) < 7  # it really stopped mid-way
    summary = extract(d, out, ExtractOptions(workers=1))
    assert summary.skipped == len(partial) + len(partial.errors())
    assert summary.done + summary.failed + summary.skipped == 7
    assert_same_store(store_w1[1], out)


def test_resume_skips_before_decoding(store_w1, media_dir, tmp_path):
    d, _ = media_dir
    # same names, but every file emptied: any attempt to decode would record a failure
    copy = tmp_path / "videos"
    for path in d.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(d)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")
    out = tmp_path / "store.h5"
    shutil.copy(store_w1[1], out)
    summary = extract(copy, out, ExtractOptions(workers=2))
    assert (summary.skipped, summary.done, summary.failed) == (7, 0, 0) and summary.ok
    assert_same_store(store_w1[1], out)
    assert json.loads(FeatureStore(out).attrs["sources"]) == [str(d), str(copy)]  # the resumed run's input is recorded too


def test_manifest_input_carries_text_labels_and_splits(media_dir, tmp_path):
    d, _ = media_dir
    root = tmp_path / "Raw"
    (root / "vidA").mkdir(parents=True)
    shutil.copy(d / "speech.mp4", root / "vidA" / "3.mp4")
    manifest = tmp_path / "label.csv"
    manifest.write_text(
        "video_id,clip_id,text,label,annotation,mode,label_by\n"
        'vidA,3,"I REALLY, REALLY LIKE THIS MOVIE",2.4,Positive,train,0\n'
        "vidA,4,MISSING CLIP,-1.0,Negative,test,0\n"
    )
    items = read_manifest(manifest, root)
    assert [(i.id, i.key, i.path) for i in items] == [
        ("vidA$_$3", "vidA/3", root / "vidA" / "3.mp4"), ("vidA$_$4", "vidA/4", root / "vidA" / "4.mp4")
    ]
    from typer.testing import CliRunner

    from kebr_cli.main import app

    args = ["extract", "--manifest", str(manifest), "--root", str(root), "-o", str(tmp_path / "m.h5"),
            "--vision", "none", "--asr", "none", "--jobs", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    store = FeatureStore(tmp_path / "m.h5")
    s = store.sample(0)
    assert (s.id, s.text, s.text_source) == ("vidA$_$3", "I REALLY, REALLY LIKE THIS MOVIE", "manifest")
    assert s.split == "train"
    assert s.label == pytest.approx(2.4) and s.vision.shape == (0, 0) and s.audio.shape[1] == 33
    assert store.vision_features == [] and store.attrs["vision_fps"] is None
    assert store.attrs["source"] == f"{manifest} (clips in {root})"
    assert "does not exist" in store.errors()["vidA$_$4"]
    store.close()
    # the root defaults to Raw/ beside the manifest: a rerun finds the same clips and resumes
    result = CliRunner().invoke(app, [a for a in args if a not in ("--root", str(root))])
    assert result.exit_code == 0 and len(FeatureStore(tmp_path / "m.h5")) == 1, result.output
    result = CliRunner().invoke(app, ["extract", "-o", str(tmp_path / "m.h5")])
    assert result.exit_code == 1 and "--manifest" in result.output


def test_openface_csv_backend_in_the_pipeline(media_dir, tmp_path):
    d, clips = media_dir
    (tmp_path / "of").mkdir()
    lines = [", ".join(["frame", "face_id", "timestamp", "confidence", "success", *OPENFACE_FEATURES])]
    lines += [", ".join(map(str, [k + 1, 0, k / 25, 0.98, 1] + [0.5] * 709)) for k in range(50)]
    (tmp_path / "of" / "side.csv").write_text("\n".join(lines) + "\n")  # key "side" below d/sub
    opts = ExtractOptions(vision="openface-csv", openface_dir=tmp_path / "of", asr="none", workers=0)
    summary = extract(d / "sub", tmp_path / "of.h5", opts)
    store = FeatureStore(tmp_path / "of.h5")
    assert summary.done == 1 and store.vision_features == list(OPENFACE_FEATURES)
    assert store.vision(0).shape == (20, 709)  # 2.0 s of OpenFace rows at 10 fps
    opts = ExtractOptions(vision="openface-csv", openface_dir=tmp_path, asr="none", workers=0)  # no CSV there
    summary = extract(d / "sub", tmp_path / "of2.h5", opts)
    assert summary.failed == 1 and "no OpenFace CSV" in next(iter(summary.failures.values()))


def test_shards_partition_the_ids():
    ids = [f"video{k}$_${j}" for k in range(50) for j in range(4)]
    owners = [[i for i in range(3) if id_in_part(x, (i, 3))] for x in ids]
    assert all(len(o) == 1 for o in owners)
    counts = np.bincount([o[0] for o in owners], minlength=3)
    assert counts.min() > 40  # CRC-32 spreads 200 ids roughly evenly
    with pytest.raises(KebrError, match="shard"):
        ExtractOptions(shard=(3, 3)).validate()


def test_shard_runs_cover_every_video_once(media_dir, tmp_path):
    d, _ = media_dir
    seen: list[str] = []
    for i in range(3):
        out = tmp_path / f"shard{i}.h5"
        summary = extract(d, out, ExtractOptions(vision="none", asr="none", workers=0, shard=(i, 3)))
        store = FeatureStore(out)
        ids = store.ids + list(store.errors())
        assert summary.total == len(ids) and all(id_in_part(x, (i, 3)) for x in ids)
        seen += ids
    assert sorted(seen) == sorted(["noaudio", "noface", "silent", "speech", "sub/side", "corrupt", "empty"])


def test_bad_options_and_inputs_are_one_sentence(tmp_path):
    with pytest.raises(KebrError, match="--asr-model"):
        ExtractOptions(asr="whisper").validate()
    with pytest.raises(KebrError, match="does not exist"):
        ExtractOptions(asr="whisper", asr_model=tmp_path / "nope").validate()
    with pytest.raises(KebrError, match="openface-dir"):
        ExtractOptions(vision="openface-csv").validate()
    with pytest.raises(KebrError, match="fps"):
        ExtractOptions(fps=0).validate()
    (tmp_path / "empty").mkdir()
    with pytest.raises(KebrError, match="no videos found"):
        extract(tmp_path / "empty", tmp_path / "x.h5")
    (tmp_path / "a.flv").write_bytes(b"x")
    with pytest.raises(KebrError, match="unsupported extension"):
        extract(tmp_path / "a.flv", tmp_path / "x.h5")
    (tmp_path / "notastore.h5").write_text("hello")
    (tmp_path / "empty" / "a.mp4").write_bytes(b"")
    with pytest.raises(KebrError, match="not an HDF5 file"):
        extract(tmp_path / "empty", tmp_path / "notastore.h5")


# ── the command line ───────────────────────────────────────────────────────────────────────────────


def test_cli_extract_runs_and_fails_only_when_nothing_is_extracted(media_dir, tmp_path):
    from typer.testing import CliRunner

    from kebr_cli.main import app

    d, _ = media_dir
    runner = CliRunner()
    out = tmp_path / "cli.h5"
    # a folder with one good video (sidecar transcript), a corrupt one and an unsupported file
    videos = tmp_path / "videos"
    shutil.copytree(d / "sub", videos)
    shutil.copy(d / "corrupt.mp4", videos)
    shutil.copy(d / "notes.xyz", videos)
    report_path = tmp_path / "r.json"
    result = runner.invoke(app, ["extract", str(videos), "-o", str(out), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "corrupt" in result.output and "notes.xyz" in result.output and "done" in result.output
    store = FeatureStore(out)
    assert store.ids == ["side"] and store.text(0) == SRT_TEXT and store.vision(0).shape == (22, 223)
    store.close()  # HDF5 will not open a file for writing that this process holds open for reading
    import json

    report = json.loads(report_path.read_text())
    assert (report["done"], report["failed"], report["no_face"], report["ok"]) == (1, 1, 0, True)
    result = runner.invoke(app, ["extract", str(videos), "-o", str(out)])  # resume: nothing to do
    assert result.exit_code == 0 and len(FeatureStore(out)) == 1, result.output
    before = out.read_bytes()
    result = runner.invoke(app, ["extract", str(videos), "-o", str(out), "--fps", "5"])  # appending, other settings
    assert result.exit_code == 1 and "other settings" in result.stderr and "--fps" in result.stderr, result.output
    assert out.read_bytes() == before  # refused before anything was written

    bad = tmp_path / "bad"
    bad.mkdir()
    media.make_corrupt(bad / "x.mp4")
    media.make_empty(bad / "y.webm")
    result = runner.invoke(app, ["extract", str(bad), "-o", str(tmp_path / "bad.h5")])
    assert result.exit_code == 1
    assert "nothing could be extracted" in result.output

    result = runner.invoke(app, ["extract", str(d), "-o", str(tmp_path / "w.h5"), "--asr", "whisper"])
    assert result.exit_code == 1 and "--asr-model" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["extract", str(d), "-o", str(tmp_path / "w.h5"), "--shard", "2/2"])
    assert result.exit_code == 1 and "0 <= i < n" in result.output


# ── MediaPipe in this process ──────────────────────────────────────────────────────────────────────
# Last in the file: once MediaPipe has run in the test process, extract() no longer forks workers
# from it (see workers.start_workers) but starts them through a fork server, which is slower.


@pytest.fixture(scope="module")
def face_mesh():
    from kebr_core.extract.vision import MediaPipeFaceMesh

    mesh = MediaPipeFaceMesh()
    yield mesh
    mesh.close()


def test_landmarks_lie_on_the_astronauts_face(face_mesh):
    points = face_mesh.landmarks(media.astronaut())
    assert points.shape == (478, 3)
    x0, y0, x1, y1 = media.ASTRONAUT_FACE_BOX
    margin = 5
    assert points[:, 0].min() >= x0 - margin and points[:, 0].max() <= x1 + margin
    assert points[:, 1].min() >= y0 - margin and points[:, 1].max() <= y1 + margin
    # the face is not a speck inside the box: the landmarks span most of it
    assert np.ptp(points[:, 0]) > 0.6 * (x1 - x0) and np.ptp(points[:, 1]) > 0.6 * (y1 - y0)
    assert face_mesh.landmarks(np.full((240, 320, 3), 127, np.uint8)) is None


def test_landmarks_are_normalised_for_position_scale_and_rotation(face_mesh):
    from skimage.transform import SimilarityTransform, warp

    img = media.astronaut()
    base = mesh_features(face_mesh.landmarks(img)[None], 512, 512)[0]
    assert abs(base[0]) < 8 and abs(base[1]) < 8 and abs(base[2]) < 8  # a frontal, upright face
    for angle, scale, shift in ((15.0, 1.0, (0, 0)), (-20.0, 0.8, (30, -20)), (0.0, 1.2, (-25, 15))):
        tf = (
            SimilarityTransform(translation=(-256, -256))
            + SimilarityTransform(rotation=np.deg2rad(angle), scale=scale)
            + SimilarityTransform(translation=(256 + shift[0], 256 + shift[1]))
        )
        moved = warp(img, tf.inverse, preserve_range=True, mode="edge").astype(np.uint8)
        f = mesh_features(face_mesh.landmarks(moved)[None], 512, 512)[0]
        assert abs((f[2] - base[2]) - angle) < 2.0  # roll follows the in-plane rotation
        assert abs(f[0] - base[0]) < 3.0 and abs(f[1] - base[1]) < 3.0  # yaw, pitch unchanged
        assert abs(f[5] / base[5] - scale) < 0.04  # face_scale follows the zoom
        # normalised landmarks and expression measures hardly move (units: eye-corner distance)
        assert np.abs(f[13:] - base[13:]).max() < 0.06
        assert np.abs(f[6:13] - base[6:13]).max() < 0.03


def test_the_largest_face_is_kept_and_roll_flips_with_a_mirror(face_mesh):
    from skimage.transform import rescale

    img = media.astronaut()
    x0, y0, x1, y1 = media.ASTRONAUT_FACE_BOX
    face = img[40:280, 105:345]  # 240×240 around her face: its box is (60, 15, 180, 155) here
    small = (rescale(face, 0.8, channel_axis=2, anti_aliasing=True) * 255).astype(np.uint8)  # 192×192
    for big_left in (True, False):  # MediaPipe lists the faces in no particular order of size
        canvas = np.full((240, 460, 3), 200, np.uint8)
        bx, sx = (0, 260) if big_left else (220, 10)
        canvas[:, bx : bx + 240] = face
        canvas[24:216, sx : sx + 192] = small
        assert len(face_mesh._mesh.process(canvas).multi_face_landmarks) == 2  # both faces are found
        points = face_mesh.landmarks(canvas)
        assert bx + x0 - 105 - 5 <= points[:, 0].min() and points[:, 0].max() <= bx + x1 - 105 + 5
        assert y0 - 40 - 5 <= points[:, 1].min() and points[:, 1].max() <= y1 - 40 + 5
    base = mesh_features(face_mesh.landmarks(img)[None], 512, 512)[0]
    mirror = mesh_features(face_mesh.landmarks(np.ascontiguousarray(img[:, ::-1]))[None], 512, 512)[0]
    assert abs(base[2]) > 1.5 and abs(mirror[2] + base[2]) < 1.5  # her slight head tilt reverses
