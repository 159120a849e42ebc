"""Nothing typed is silently ignored (issue 32, items 4, 5, 6 and 9): strict parsing through the real CLI.

Every row of CASES is one command on tiny real files, checked by the runner of tests/test_bad_input.py:
the exit code, the one sentence naming the file and the problem, no traceback, nothing outside the
row's outputs changed byte for byte. The numbers in the case names are the issue's items.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import tests.test_bad_input as bad_input
from kebr_cli.main import app
from kebr_core import runs
from kebr_core.data.store import FeatureStore
from kebr_core.errors import KebrError
from tests.conftest import TINY_BERT, write_tiny_store
from tests.test_bad_input import EXTRACT_FAST, FAST, Case, manifest, tone_clip

runner = CliRunner()
EVAL_FAST = ["--epochs", "1", "--seeds", "1", "--freeze-encoder", *FAST]


# ── 4. a NUL in a transcript: one failed item, the rest committed; UTF-16 sidecars decoded ──────────


def _sidecars(tmp: Path, *, a: bytes, b: bytes) -> list[str]:
    """Two clips with .txt sidecars holding the given bytes."""
    videos = tmp / "videos"
    tone_clip(videos / "a.mp4")
    tone_clip(videos / "b.mp4", hz=450)
    (videos / "a.txt").write_bytes(a)
    (videos / "b.txt").write_bytes(b)
    return ["extract", str(videos), "-o", str(tmp / "x.h5"), *EXTRACT_FAST]


def _store_holds(ids: list[str], texts: list[str], failed: dict[str, str]) -> Callable[[Path, str], None]:
    def check(tmp: Path, output: str) -> None:
        store = FeatureStore(tmp / "x.h5")
        assert store.ids == ids and store.texts == texts
        errors = store.errors()
        assert set(errors) == set(failed), errors
        for item, fragment in failed.items():
            assert fragment in errors[item], errors[item]
    return check


def _manifest_with_nul(tmp: Path) -> list[str]:
    tone_clip(tmp / "Raw" / "v1" / "1.mp4")
    tone_clip(tmp / "Raw" / "v2" / "1.mp4", hz=450)
    path = manifest(tmp / "label.csv", [("v1", "1", "1.0"), ("v2", "1", "0.5"), ("v3", "1\x002", "0.5")])
    path.write_text(path.read_text().replace("v2,1,a fine movie", "v2,1,a fine\x00movie"))
    return ["extract", "--manifest", str(path), "--root", str(tmp / "Raw"), "-o", str(tmp / "x.h5"), *EXTRACT_FAST]


def _table_with_nul(tmp: Path) -> list[str]:
    tone_clip(tmp / "videos" / "a.mp4")
    tone_clip(tmp / "videos" / "b.mp4", hz=450)
    (tmp / "t.csv").write_text("id,text\na,a good film\nb,a bad\x00film\n")
    return ["extract", str(tmp / "videos"), "--transcripts", str(tmp / "t.csv"), "-o", str(tmp / "x.h5"), *EXTRACT_FAST]


NUL = [
    Case("4 extract: a UTF-16 sidecar with a BOM (Windows Notepad) is read as text",
         lambda t: _sidecars(t, a="a great movie".encode("utf-16"), b=b"\xfe\xff" + "très bien".encode("utf-16-be")),
         0, "kebr extract", may_create=("x.h5",),
         check=_store_holds(["a", "b"], ["a great movie", "très bien"], {})),
    Case("4 extract: a sidecar with a NUL (UTF-16 without a BOM) is one failed item, the rest committed",
         lambda t: _sidecars(t, a=b"a great movie", b="a bad movie".encode("utf-16-le")),
         0, "b.txt holds a NUL character", may_create=("x.h5",),
         check=_store_holds(["a"], ["a great movie"], {"b": "b.txt holds a NUL character"})),
    Case("4 extract --manifest: a NUL in a row is one failed item, the rest committed", _manifest_with_nul,
         0, "line 3: its text holds a NUL character", may_create=("x.h5",),
         check=_store_holds(["v1$_$1"], ["a fine movie"], {"v2$_$1": "line 3: its text holds a NUL character",
                                                            "v3$_$1\\x002": "line 4: its clip_id holds a NUL character"})),
    Case("4 extract --transcripts: a NUL in the table's text is one failed item, the rest committed", _table_with_nul,
         0, "the transcript from the table holds a NUL character", may_create=("x.h5",),
         check=_store_holds(["a"], ["a good film"], {"b": "holds a NUL character"})),
]


# ── 5. --pretrained and the options typed ───────────────────────────────────────────────────────────


def _pretrained(tmp: Path) -> Path:
    """A tiny pretraining run with --layers 1 --ffn linear (1 epoch)."""
    write_tiny_store(tmp / "tiny.h5", n=20)
    r = runner.invoke(app, ["pretrain", str(tmp / "tiny.h5"), "-o", str(tmp / "pre"), "--epochs", "1", "--layers", "1",
                            "--ffn", "linear", *FAST])
    assert r.exit_code == 0, r.output
    return tmp / "pre"


def _eval_pretrained(*extra: str) -> Callable[[Path], list[str]]:
    return lambda t: ["eval", "-d", str(_pretrained(t).parent / "tiny.h5"), "--pretrained", str(t / "pre"),
                      "-o", str(t / "ev"), *EVAL_FAST, *extra]


def _int8_weights(tmp: Path) -> list[str]:
    args = _eval_pretrained()(tmp)
    weights = tmp / "pre" / "final" / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if k.startswith("fusion."))
    state[name] = state[name].to(dtype=__import__("torch").int8)
    save_file(state, str(weights))
    return args


PRETRAINED = [
    Case("5 eval --pretrained: typed --layers and --ffn that differ from the checkpoint are refused, each named",
         _eval_pretrained("--layers", "2", "--ffn", "mlp"), 1,
         "--layers 2 (the checkpoint has 1), --ffn mlp (the checkpoint has linear)", may_create=("ev/",)),
    Case("5 eval --pretrained: a --set of the architecture is refused too",
         _eval_pretrained("--set", "model.shared_layers=false"), 1,
         "--set model.shared_layers false (the checkpoint has true)", may_create=("ev/",)),
    Case("5 eval --pretrained: a typed option equal to the checkpoint's is fine; the rest is taken with a note",
         _eval_pretrained("--layers", "1"), 0,
         "note: fine-tuning the architecture of", may_create=("ev/", "results-table.csv", runs.RESULTS_TABLE_LOCK),
         check=lambda t, out: ("model.ffn=linear" in out and "model.layers=1" not in out
                               and json.loads((t / "ev" / "config.json").read_text())["model"]["ffn"] == "linear")
         or pytest.fail(out)),
    Case("9 eval --pretrained: int8 weights for a float parameter are refused naming the tensor", _int8_weights, 1,
         "is stored as int8, not as floating point numbers", may_create=("ev/",)),
]


# ── 6. config files: unknown sections and keys ──────────────────────────────────────────────────────


def _config(name: str, text: str, *extra: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / name).write_text(text)
        return ["pretrain", str(write_tiny_store(tmp / "tiny.h5", n=20)), "-o", str(tmp / "run"), "--config",
                str(tmp / name), *FAST, *extra]
    return setup


KEBR_RUN_CONFIG = json.dumps({"stage": "pretrain", "data": {"samples": 20}, "store": "x.h5", "train": {"epochs": 3}})

CONFIGS = [
    Case("6 --config: a misspelt section [trian]", _config("c.toml", "[trian]\nepochs = 3\n"), 1,
         "c.toml: unknown section or key 'trian'"),
    Case("6 --config: a setting outside its section", _config("c.toml", "epochs = 3\n[train]\nlr = 1e-3\n"), 1,
         "c.toml: unknown section or key 'epochs' (a config file holds only the sections model, mcc, train; "
         "epochs belongs in the train section)"),
    Case("6 --config: an unknown key inside a section (already refused)", _config("c.toml", "[train]\nepoch = 3\n"), 1,
         "c.toml: unknown setting 'train.epoch'"),
    Case("6 --config: a JSON file with an unknown top-level key", _config("c.json", '{"trian": {"epochs": 3}}'), 1,
         "c.json: unknown section or key 'trian'"),
    Case("6 --config: a config.json kebr wrote replays, its descriptive keys ignored",
         _config("config.json", KEBR_RUN_CONFIG, "--print-config"), 0, '"epochs": 3'),
]


# ── 9. the smaller ones ─────────────────────────────────────────────────────────────────────────────


def _label_csv(text: str, encoding: str = "utf-8") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        (tmp / "label.csv").write_bytes(text.encode(encoding))
        return ["import", str(tmp / "label.csv"), "-o", str(tmp / "s.h5")]
    return setup


HEADER = "video_id,clip_id,text,label,annotation,mode"


def _pickle_labels(shape: tuple[int, ...]) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        n = shape[0]
        split = {"raw_text": np.array(["a b"] * n), "id": np.array([f"v$_${i}" for i in range(n)]),
                 "regression_labels": np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 10,
                 "audio": np.ones((n, 2, 3), np.float32), "vision": np.ones((n, 2, 4), np.float32)}
        (tmp / "m.pkl").write_bytes(pickle.dumps({"train": split}))
        return ["import", str(tmp / "m.pkl"), "-o", str(tmp / "s.h5")]
    return setup


def _edited_store(edit: Callable[[h5py.File], None]) -> Callable[[Path], list[str]]:
    """A tiny store changed behind kebr's back (a foreign writer, a hand edit)."""
    def setup(tmp: Path) -> list[str]:
        path = write_tiny_store(tmp / "odd.h5", n=40)
        with h5py.File(path, "r+") as f:
            edit(f)
        return ["inspect", str(path)]
    return setup


def _rename_splits(f: h5py.File) -> None:
    f["split"][:24] = ["training"] * 24  # the old summary counted 40 samples whose splits summed to 16


def _negative_length(f: h5py.File) -> None:
    offsets = f["audio/offsets"][:]
    offsets[3] = offsets[4] + 5  # sample 3 gets length offsets[4] - offsets[3] = -5
    f["audio/offsets"][:] = offsets


SMALLER = [
    Case("9 import: a label.csv with two label columns", _label_csv(f"{HEADER},label\nv,1,hi,0.5,Positive,train,2\n"),
         1, "label.csv names the column 'label' more than once in its header"),
    Case("9 extract --transcripts: a table with two text columns",
         lambda t: (t / "t.csv").write_text("id,text,text\na,good,bad\n") and
         ["extract", str(tone_clip(t / "videos" / "a.mp4").parent), "--transcripts", str(t / "t.csv"), "-o",
          str(t / "x.h5"), *EXTRACT_FAST], 1, "t.csv names the column 'text' more than once in its header"),
    Case("9 import: a label 1_0 (Python's syntax, not a number in a CSV)",
         _label_csv(f"{HEADER}\nv,1,hi,1_0,Positive,train\n"), 1,
         "label.csv line 2: label '1_0' is not a number in plain decimal"),
    Case("9 import: a label in Arabic-Indic digits", _label_csv(f"{HEADER}\nv,1,hi,\u0661,Positive,train\n"), 1,
         "is not a number in plain decimal"),
    Case("9 import: a label.csv saved as UTF-16 by Notepad reads as text",
         _label_csv(f"{HEADER}\nv,1,hi,-1.5,Positive,train\n", encoding="utf-16"), 0, "wrote", may_create=("s.h5",),
         check=lambda t, out: FeatureStore(t / "s.h5").labels.tolist() == [-1.5] or pytest.fail("wrong label")),
    Case("9 extract --manifest: a label 1_0", lambda t: ["extract", "--manifest", str(manifest(t / "label.csv", [
        ("v1", "1", "1_0")])), "--root", str(t), "-o", str(t / "x.h5"), *EXTRACT_FAST], 1,
        "label.csv line 2: label '1_0' is not a number in plain decimal"),
    Case("9 pretrain --set train.epochs=1_0", lambda t: ["pretrain", str(write_tiny_store(t / "tiny.h5", n=20)), "-o",
                                                       str(t / "run"), "--set", "train.epochs=1_0", *FAST], 1,
         "--set train.epochs=1_0: train.epochs must be an integer in plain decimal"),
    Case("9 pretrain --set mcc.g=0_1", lambda t: ["pretrain", str(write_tiny_store(t / "tiny.h5", n=20)), "-o",
                                                str(t / "run"), "--set", "mcc.g=0_1", *FAST], 1,
         "mcc.g must be a number in plain decimal"),
    Case("9 pretrain --lr 1_0", lambda t: ["pretrain", str(write_tiny_store(t / "tiny.h5", n=20)), "-o", str(t / "run"),
                                          "--lr", "1_0", *FAST], 2, "not a number in plain decimal"),
    Case("9 extract --shard 1_0/2_0", lambda t: ["extract", str(t), "-o", str(t / "x.h5"), "--shard", "1_0/2_0"], 1,
         "--shard must look like i/n (e.g. 0/4), not '1_0/2_0'"),
    Case("9 synth --audio-len 3_0-300", lambda t: ["synth", "-o", str(t / "s.h5"), "--audio-len", "3_0-300"], 1,
         "--audio-len takes a frame range MIN-MAX, e.g. 30-300, not '3_0-300'"),
    Case("9 import: MMSA labels shaped (N, 2) are refused naming the shape", _pickle_labels((3, 2)), 1,
         "train/regression_labels has shape (3, 2); kebr reads one label per sample"),
    Case("9 import: MMSA labels shaped (N, 1) are fine", _pickle_labels((3, 1)), 0, "wrote", may_create=("s.h5",),
         check=lambda t, out: np.allclose(FeatureStore(t / "s.h5").labels, [0, 0.1, 0.2]) or pytest.fail("labels")),
    Case("9 inspect: a store with an unknown split name", _edited_store(_rename_splits), 1,
         "odd.h5 is damaged: its split field holds 'training'"),
    Case("9 inspect: a store with a negative length", _edited_store(_negative_length), 1,
         "odd.h5 is damaged: audio/offsets give sample 's003' a negative length"),
    Case("9 pretrain: a store with an unknown split name (every command opens stores the same way)",
         lambda t: ["pretrain", _edited_store(_rename_splits)(t)[1], "-o", str(t / "run"), *FAST], 1,
         "its split field holds 'training'"),
]

CASES = NUL + PRETRAINED + CONFIGS + SMALLER


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_strict_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_input.test_bad_input(case, tmp_path, monkeypatch)


# ── cases that need more than one command, or no command ────────────────────────────────────────────


def test_a_nul_sidecar_does_not_block_reruns_and_its_fix_is_retried(tmp_path: Path) -> None:
    """Before: the commit failed for every video, and every rerun again. Now the rerun goes through, and the
    fixed file (saved as UTF-16 with a BOM, as Notepad does) is extracted by --retry-failed."""
    args = _sidecars(tmp_path, a=b"a great movie", b="a bad movie".encode("utf-16-le"))
    assert runner.invoke(app, args).exit_code == 0
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0 and "1 id(s) failed in an earlier run" in " ".join(rerun.output.split())
    (tmp_path / "videos" / "b.txt").write_bytes("a bad movie".encode("utf-16"))
    retry = runner.invoke(app, [*args, "--retry-failed"])
    assert retry.exit_code == 0, retry.output
    store = FeatureStore(tmp_path / "x.h5")
    assert sorted(zip(store.ids, store.texts)) == [("a", "a great movie"), ("b", "a bad movie")]
    assert store.errors() == {}


def test_the_store_writer_refuses_a_nul_before_the_commit(tmp_path: Path) -> None:
    """A NUL reaching the writer is refused on `add` (the commit would fail for the whole batch), and an error
    message or id holding one is recorded with the NUL written out."""
    from kebr_core.data.store import Sample, StoreWriter

    empty = np.zeros((0, 0), np.float32)
    with StoreWriter(tmp_path / "s.h5", [], []) as writer:
        writer.add(Sample("ok", "fine", empty, empty))
        with pytest.raises(ValueError, match="its text holds a NUL character"):
            writer.add(Sample("bad", "a\x00b", empty, empty))
        writer.add_error("x\x00y", "broken\x00file")
    store = FeatureStore(tmp_path / "s.h5")
    assert store.ids == ["ok"] and store.errors() == {"x\\x00y": "broken\\x00file"}


@pytest.mark.parametrize("text, value", [
    ("1", 1.0), ("-1.5", -1.5), (" +2e-5 ", 2e-5), (".5", 0.5), ("3.", 3.0), ("1E3", 1000.0), ("nan", None),
    ("-inf", -np.inf), ("1_0", None), ("0x10", None), ("1,5", None), ("", None), ("\u0661", None), ("1e", None),
    ("--1", None), ("1.2.3", None), ("١٢", None), ("infinity", np.inf),
])
def test_decimal_number_accepts_plain_decimal_only(text: str, value: float | None) -> None:
    from kebr_core.strict import decimal_number

    got = decimal_number(text)
    if text == "nan":
        assert got is not None and np.isnan(got)
    else:
        assert got == value
    assert decimal_number("inf", allow_non_finite=False) is None


def test_decimal_integer_and_seeds() -> None:
    from kebr_core.config import parse_seeds
    from kebr_core.strict import decimal_integer

    assert [decimal_integer(t) for t in ("7", "-3", "+12", "1_0", "1.0", "٣", "")] == [7, -3, 12, None, None, None, None]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("1111, 1112") == [1111, 1112]
    with pytest.raises(KebrError, match="takes a count"):
        parse_seeds("1_0")


@pytest.mark.parametrize("encode", [
    lambda s: s.encode("utf-8-sig"), lambda s: s.encode("utf-16"), lambda s: b"\xfe\xff" + s.encode("utf-16-be"),
], ids=["utf-8 BOM", "utf-16 LE BOM", "utf-16 BE BOM"])
def test_a_lexicon_with_a_byte_order_mark_keeps_its_first_word(tmp_path: Path, encode) -> None:
    from kebr_core.lexicon import load_lexicon

    path = tmp_path / "lex.txt"
    path.write_bytes(encode("great\t3.2\t0.6\t[3]\nawful\t-3.4\t0.5\t[-3]\n"))
    lexicon = load_lexicon(path)
    assert lexicon == {"great": pytest.approx(3.2 * 0.75), "awful": pytest.approx(-3.4 * 0.75)}


def test_a_utf32_file_is_refused_in_one_sentence(tmp_path: Path) -> None:
    from kebr_core.lexicon import load_lexicon

    path = tmp_path / "lex.txt"
    path.write_bytes("great\t3.2\n".encode("utf-32"))
    with pytest.raises(KebrError, match=r"lex.txt is UTF-32 text; save it as UTF-8"):
        load_lexicon(path)


def test_a_typed_text_model_differing_from_the_checkpoint_is_refused(tmp_path: Path) -> None:
    """The issue's own example: --text-model X with a checkpoint pretrained on another encoder."""
    _pretrained(tmp_path)
    other = TINY_BERT.replace("hidden=32", "hidden=16")
    r = runner.invoke(app, ["eval", "-d", str(tmp_path / "tiny.h5"), "--pretrained", str(tmp_path / "pre"), "-o",
                            str(tmp_path / "ev"), *EVAL_FAST, "--text-model", other])
    assert r.exit_code == 1
    assert f"--text-model {other} (the checkpoint has {TINY_BERT})" in " ".join(r.output.split())


def test_a_sample_the_store_cannot_hold_is_one_failed_item_whatever_its_source(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's safety net: a text source without its own check (an ASR that emits a NUL) reaches the
    writer, which refuses it on `add`; that video fails alone and the others are committed."""
    from dataclasses import replace

    from kebr_core.extract.extractor import Extractor

    real = Extractor.process

    def process(self, item, progress=None):  # progress: the decoding events (extract/video.py)
        result = real(self, item, progress)
        if item.id == "b":
            result.sample = replace(result.sample, text="heard\x00noise")
        return result

    monkeypatch.setattr(Extractor, "process", process)
    args = _sidecars(tmp_path, a=b"a great movie", b=b"a bad movie")
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    store = FeatureStore(tmp_path / "x.h5")
    assert store.ids == ["a"] and list(store.errors()) == ["b"]
    assert "its text holds a NUL character" in store.errors()["b"]
