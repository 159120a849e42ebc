"""`kebr import | merge | inspect | synth` through the real CLI: results, bad input, the synth generator."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.data.store import FeatureStore
from kebr_core.data.synth import SENTIMENT_WORDS, FEELING_WORDS, read_latents
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import split_words

from tests.conftest import MOSI_SAMPLE  # noqa: E402
runner = CliRunner()


def kebr(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with Rich's line wrapping undone."""
    return " ".join(text.split())


def assert_one_sentence_failure(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    message = result.stderr.strip()
    assert message.startswith("error: ") and len(message.splitlines()) == 1 and message.endswith(".")
    for fragment in fragments:
        assert fragment in message


def test_import_inspect_and_merge(tmp_path: Path) -> None:
    out = tmp_path / "mosi.h5"
    result = kebr("import", MOSI_SAMPLE, "-o", out)  # 328 real MOSI rows
    assert result.exit_code == 0, result.output
    assert "328 samples (train 174, valid 46, test 108)" in flat(result.stdout)

    result = kebr("inspect", out, "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["samples"] == 328 and summary["splits"] == {"train": 174, "valid": 46, "test": 108, "unlabeled": 0}
    assert summary["text"]["sources"] == {"import": 328} and summary["audio"]["dim"] == 0
    assert sum(summary["labels"]["histogram"].values()) == 328
    labels = FeatureStore(out).labels
    assert summary["labels"]["histogram"]["-3"] == int((np.round(labels) == -3).sum())

    result = kebr("inspect", out)
    assert result.exit_code == 0
    for text in ("samples per split", "174", "labels: 328 labeled", "sequence lengths", "text sources: import 328"):
        assert text in flat(result.stdout)

    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert kebr("synth", "-o", a, "--n", 20, "--seed", 1).exit_code == 0
    assert kebr("synth", "-o", b, "--n", 10, "--seed", 2).exit_code == 0
    # same generator → same ids: merging refuses and names the id
    result = kebr("merge", a, b, "-o", tmp_path / "ab.h5")
    assert_one_sentence_failure(result, "id 'synth000000' is in both")
    assert not (tmp_path / "ab.h5").exists() and not (tmp_path / "ab.h5.tmp").exists()
    result = kebr("merge", a, out, "-o", tmp_path / "ab.h5")
    assert_one_sentence_failure(result, "audio features differ")
    with h5py.File(b, "r+") as f:  # rename b's ids so the shards are disjoint
        f["id"][:] = [f"other{i}" for i in range(10)]
    result = kebr("merge", a, b, "-o", tmp_path / "ab.h5")
    assert result.exit_code == 0, result.output
    assert FeatureStore(tmp_path / "ab.h5").ids == FeatureStore(a).ids + [f"other{i}" for i in range(10)]


def write_pickle_without_vision(path: Path) -> None:
    n = 2
    split = {"raw_text": np.array(["a", "b"]), "id": np.array(["v$_$1", "v$_$2"]), "regression_labels": np.zeros(n),
             "audio": np.ones((n, 4, 5), np.float32), "audio_lengths": [4, 4], "vision_lengths": [0, 0]}
    path.write_bytes(pickle.dumps({"train": split}))


def test_bad_inputs_fail_with_one_sentence_and_leave_no_output(tmp_path: Path) -> None:
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("just text")
    assert_one_sentence_failure(kebr("inspect", not_h5), str(not_h5), "is not an HDF5 file")

    old = tmp_path / "old.h5"
    assert kebr("synth", "-o", old, "--n", 8).exit_code == 0
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = 0
    assert_one_sentence_failure(kebr("inspect", old), "format_version 0")

    cases = []
    pkl = tmp_path / "unaligned_50.pkl"
    write_pickle_without_vision(pkl)
    cases.append((pkl, "lacks the key(s) vision"))
    no_mode = tmp_path / "nomode.csv"
    no_mode.write_text("video_id,clip_id,text,label\nv,1,hi,0.5\n")
    cases.append((no_mode, "lacks the column(s) mode"))
    dup = tmp_path / "dup.csv"
    dup.write_text("video_id,clip_id,text,label,mode\nv,1,hi,0.5,train\nv,1,hey,0.1,test\n")
    cases.append((dup, "id 'v$_$1' occurs twice"))
    for src, fragment in cases:
        out = tmp_path / f"{src.stem}.h5"
        assert_one_sentence_failure(kebr("import", src, "-o", out), str(src), fragment)
        assert not out.exists() and not Path(str(out) + ".tmp").exists()

    result = kebr("merge", not_h5, old, "-o", tmp_path / "m.h5")
    assert_one_sentence_failure(result, "is not an HDF5 file")
    assert not (tmp_path / "m.h5").exists()

    existing = tmp_path / "exists.h5"
    assert kebr("synth", "-o", existing, "--n", 4).exit_code == 0
    assert_one_sentence_failure(kebr("synth", "-o", existing, "--n", 4), "already exists")
    assert kebr("synth", "-o", existing, "--n", 6, "--force").exit_code == 0
    assert len(FeatureStore(existing)) == 6


def read_all(path: Path) -> tuple:
    store = FeatureStore(path)
    frames = [np.concatenate([store.audio(i).ravel(), store.vision(i).ravel()]) for i in range(len(store))]
    return store.ids, store.texts, store.labels, store.splits.tolist(), np.concatenate(frames)


def test_synth_is_deterministic_by_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = kebr("synth", "-o", tmp_path / f"{name}.h5", "--n", 64, "--unlabeled", 16, "--seed", seed,
                      "--audio-dim", 9, "--vision-dim", 6)
        assert result.exit_code == 0, result.output
    a, b, c = (read_all(tmp_path / f"{n}.h5") for n in "abc")
    assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3]
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[4], b[4])
    assert a[1] != c[1] and not np.array_equal(a[2], c[2])

    store = FeatureStore(tmp_path / "a.h5")
    assert len(store) == 80 and len(store.audio_features) == 9 and len(store.vision_features) == 6
    assert [int((store.splits == s).sum()) for s in ("train", "valid", "test", "unlabeled")] == [37, 7, 20, 16]
    assert np.isnan(store.labels[store.indices("unlabeled")]).all()
    labeled = store.labels[store.indices(["train", "valid", "test"])]
    assert np.isfinite(labeled).all() and labeled.min() >= -3 and labeled.max() <= 3


def test_synth_texts_and_label_follow_the_documented_formula(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    result = kebr("synth", "-o", out, "--n", 200, "--label-noise", 0, "--text-strength", 2,
                  "--audio-strength", 1, "--vision-strength", 0.5)
    assert result.exit_code == 0, result.output
    store, latent = FeatureStore(out), read_latents(out)
    lexicon = load_lexicon()
    assert all(w in lexicon for w in SENTIMENT_WORDS + FEELING_WORDS)
    for text, t in zip(store.texts, latent[:, 0]):
        hits = [w for w in split_words(text) if w in lexicon]
        assert len(hits) <= 1  # one sentiment word (or none in a neutral sentence), nothing else in the lexicon
        assert t == pytest.approx(lexicon[hits[0]] if hits else 0.0)
    t, a, v = latent.T
    np.testing.assert_allclose(store.labels, np.clip((2 * t + a + 0.5 * v) / 3.5, -3, 3), atol=1e-5)


def test_stronger_audio_raises_the_audio_label_correlation(tmp_path: Path) -> None:
    corr = {}
    for strength in (0.2, 3.0):
        out = tmp_path / f"s{strength}.h5"
        result = kebr("synth", "-o", out, "--n", 300, "--audio-strength", strength, "--seed", 5)
        assert result.exit_code == 0, result.output
        store = FeatureStore(out)
        k = len(store.audio_features) // 8  # the steady columns
        audio_mean = np.array([store.audio(i)[:, :k].mean() for i in range(len(store))])
        corr[strength] = np.corrcoef(audio_mean, store.labels)[0, 1]
    assert corr[3.0] > corr[0.2] + 0.3, corr
    assert corr[3.0] > 0.8


def test_synth_signal_noise_and_length_knobs_set_how_easy_each_stream_is(tmp_path: Path) -> None:
    """Per-stream β/σ and lengths follow the documented formula: the steady columns' mean over a sample's
    frames is β_m·m/3 + noise of std σ_m/√(L·k); the label shares stay those of the strengths."""
    out = tmp_path / "s.h5"
    result = kebr("synth", "-o", out, "--n", 400, "--text-strength", 0, "--vision-strength", 1, "--label-noise", 0,
                  "--audio-signal", 1.0, "--audio-noise", 0.0, "--vision-signal", 0.2, "--vision-noise", 2.0,
                  "--audio-len", "5-8", "--vision-len", "40-40", "--audio-dim", 16, "--vision-dim", 16)
    assert result.exit_code == 0, result.output
    assert "signal/noise audio 1/0, vision 0.2/2" in " ".join(result.output.split())
    store, latent = FeatureStore(out), read_latents(out)
    _, a, v = latent.T
    np.testing.assert_allclose(store.labels, np.clip((a + v) / 2, -3, 3), atol=1e-5)
    audio_lengths, vision_lengths = store.lengths()
    assert audio_lengths.min() >= 5 and audio_lengths.max() <= 8 and (vision_lengths == 40).all()
    k = 2  # 16 // 8 steady columns
    for i in range(0, 400, 37):  # noiseless audio: every steady value is exactly β_a·a/3; noise-only columns are 0
        np.testing.assert_allclose(store.audio(i)[:, :k], 1.0 * a[i] / 3, rtol=1e-5, atol=1e-6)
        assert (store.audio(i)[:, 2 * k:] == 0).all()
    vision_mean = np.array([store.vision(i)[:, :k].mean() for i in range(len(store))])
    residual = vision_mean - 0.2 * v / 3
    assert residual.std() == pytest.approx(2.0 / np.sqrt(40 * k), rel=0.15)


def test_synth_latent_correlation_makes_audio_and_vision_share_their_latent(tmp_path: Path) -> None:
    corr = {}
    for rho in (0.0, 0.5, 1.0):
        out = tmp_path / f"r{rho}.h5"
        assert kebr("synth", "-o", out, "--n", 600, "--latent-correlation", rho).exit_code == 0
        _, a, v = read_latents(out).T
        assert a.min() >= -3 and a.max() <= 3 and abs(a.mean()) < 0.3 and a.std() == pytest.approx(6 / np.sqrt(12), rel=0.1)
        corr[rho] = np.corrcoef(a, v)[0, 1]
    assert abs(corr[0.0]) < 0.1 and 0.35 < corr[0.5] < 0.65 and corr[1.0] == pytest.approx(1.0)
    bad = kebr("synth", "-o", tmp_path / "bad.h5", "--latent-correlation", 1.5)  # a usage error, as other ranges
    assert bad.exit_code == 2 and "--latent-correlation" in bad.output and "1.5" in bad.output
    assert_one_sentence_failure(kebr("synth", "-o", tmp_path / "bad.h5", "--audio-len", "30..300"), "--audio-len takes")
