"""Bad input through the real CLI, as a user who makes mistakes (or who was handed a file) would give it.

Every row of CASES is one command: how to set it up in an empty folder, the exit code it must give
(2: usage error, 1: one sentence), a fragment of its message, and what it may leave behind. The runner
checks that the failure is one line without a traceback, that no file in the folder was lost or
changed (only the outputs named by the row may appear), and that no payload marker exists.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.data.store import FeatureStore, Sample, StoreWriter
from tests.conftest import TINY_BERT, write_tiny_store
from tests.paired_runs import DATA, write_eval_run

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]
MARKER = "PWNED"  # what the malicious payloads would create
EXTRACT_FAST = ["--vision", "none", "--asr", "none", "--jobs", "0"]


class Evil:
    """A pickle payload: unpickling it with the standard unpickler runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def evil_pickle(path: Path) -> Path:
    """An MMSA-looking pickle whose train split is a code-running payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"train": Evil(path.parent / MARKER), "valid": {}, "test": {}}))
    return path


def tone_clip(path: Path, hz: float = 330.0, seconds: float = 0.6) -> Path:
    """A tiny video with an audible tone (not silence) and grey pictures; needs no espeak-ng."""
    from kebr_core.recipes.demo_media import write_video

    sr = 22050
    t = np.arange(int(sr * seconds)) / sr
    write_video(path, [np.full((48, 48, 3), 90, np.uint8)] * 6, 10, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), sr)
    return path


def manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """An MMSA label.csv with rows (video_id, clip_id, label)."""
    lines = ["video_id,clip_id,text,label,annotation,mode"]
    lines += [f"{v},{c},a fine movie,{y},Positive,train" for v, c, y in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def label_csv(path: Path, labels: list[str]) -> Path:
    return manifest(path, [(f"v{i}", str(i), y) for i, y in enumerate(labels)])


def store_with_labels(path: Path, labels: list[float], prefix: str = "s") -> Path:
    """A store written directly (as older kebr versions could): labels as given, splits cycling."""
    splits = ["train", "train", "train", "valid", "test"]
    rng = np.random.default_rng(0)
    with StoreWriter(path, ["a0", "a1"], ["v0"]) as w:
        for i, y in enumerate(labels):
            w.add(Sample(f"{prefix}{i:03d}", "a great movie", rng.normal(size=(3, 2)).astype(np.float32),
                         rng.normal(size=(2, 1)).astype(np.float32), y, splits[i % 5], "import"))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Case:
    """One bad (or borderline) input. setup(tmp) makes the files and returns the arguments."""

    name: str
    setup: Callable[[Path], list[str]]
    code: int
    fragment: str
    may_create: tuple[str, ...] = ()  # outputs (files, or folders ending in /) the command may leave
    check: Callable[[Path, str], None] | None = None  # further checks: (tmp, output)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    root_skips: bool = False  # permissions do not stop root
    marks: tuple = field(default_factory=tuple)


def _tiny(tmp: Path) -> Path:
    return write_tiny_store(tmp / "tiny.h5", n=40)


# ── security ────────────────────────────────────────────────────────────────────────────────────────


def _manifest_escapes(tmp: Path) -> list[str]:
    root = tmp / "Raw"
    tone_clip(root / "v1" / "1.mp4")
    tone_clip(tmp / "secret" / "x.mp4")  # outside the root: must not be read
    rows = [("v1", "1", "1.0"), ("../secret", "x", "2.0"), (str(tmp / "secret"), "x", "0.5")]
    return ["extract", "--manifest", str(manifest(tmp / "label.csv", rows)), "--root", str(root), "-o", str(tmp / "m.h5"),
            *EXTRACT_FAST]


def _check_manifest_escapes(tmp: Path, output: str) -> None:
    store = FeatureStore(tmp / "m.h5")
    assert store.ids == ["v1$_$1"]
    errors = store.errors()
    assert set(errors) == {"../secret$_$x", f"{tmp / 'secret'}$_$x"}
    assert all("leads outside the root" in m for m in errors.values())


SECURITY = [
    Case("import: a pickle that runs code", lambda t: ["import", str(evil_pickle(t / "evil.pkl")), "-o", str(t / "e.h5")],
         1, "evil.pkl was refused: it names posix.system"),
    Case("eval: auto-import of a pickle that runs code",
         lambda t: ["eval", "-d", "mosi", "--data-dir", str(evil_pickle(t / "data" / "mosi" / "unaligned_50.pkl").parents[1]),
                    "-o", str(t / "ev"), *FAST],
         1, "unaligned_50.pkl was refused: it names posix.system"),
    Case("extract: manifest rows leading outside --root", _manifest_escapes, 0, "leads outside the root",
         may_create=("m.h5",), check=_check_manifest_escapes),
]

# ── option ranges ───────────────────────────────────────────────────────────────────────────────────


def _pretrain(*extra: str) -> Callable[[Path], list[str]]:
    return lambda t: ["pretrain", str(_tiny(t)), "-o", str(t / "run"), *FAST, *extra]


def _eval(*extra: str) -> Callable[[Path], list[str]]:
    return lambda t: ["eval", "-d", str(_tiny(t)), "-o", str(t / "ev"), *FAST, *extra]


RANGES = [
    Case("pretrain --batch-size 0", _pretrain("--batch-size", "0"), 2, "--batch-size"),
    Case("pretrain --checkpoint-every 0", _pretrain("--checkpoint-every", "0"), 2, "--checkpoint-every"),
    Case("pretrain --dropout 2", _pretrain("--dropout", "2"), 2, "--dropout"),
    Case("pretrain --dropout 1", _pretrain("--dropout", "1"), 2, "--dropout"),
    Case("pretrain --loader-workers -1", _pretrain("--loader-workers", "-1"), 2, "--loader-workers"),
    Case("pretrain --epochs 0", _pretrain("--epochs", "0"), 2, "--epochs"),
    Case("pretrain --lr -1", _pretrain("--lr", "-1"), 2, "must be a finite number > 0, not -1"),
    Case("pretrain --lr nan", _pretrain("--lr", "nan"), 2, "must be a finite number > 0, not nan"),
    Case("pretrain --lr inf", _pretrain("--lr", "inf"), 2, "not inf"),
    Case("pretrain --s -1", _pretrain("--s", "-1"), 2, "--s"),
    Case("pretrain --g 0.7 (already refused)", _pretrain("--g", "0.7"), 1, "--g must lie in (-0.5, 0.5)"),
    Case("pretrain --g nan", _pretrain("--g", "nan"), 1, "--g must lie in (-0.5, 0.5)"),
    Case("pretrain --lambda-mcc nan", _pretrain("--lambda-mcc", "nan"), 2, "--lambda-mcc"),
    Case("pretrain --layers 0", _pretrain("--layers", "0"), 2, "--layers"),
    Case("pretrain -o the input store", lambda t: ["pretrain", str(_tiny(t)), "-o", str(t / "tiny.h5"), *FAST],
         1, "is the input"),
    Case("eval --epochs -3", _eval("--epochs", "-3"), 2, "--epochs"),
    Case("eval --seeds 0", _eval("--seeds", "0"), 2, "--seeds"),
    Case("eval --lr-fusion 0", _eval("--lr-fusion", "0"), 2, "--lr-fusion"),
    Case("eval -o the input store", lambda t: ["eval", "-d", str(_tiny(t)), "-o", str(t / "tiny.h5"), *FAST],
         1, "is the input"),
    Case("synth --label-noise nan", lambda t: ["synth", "-o", str(t / "s.h5"), "--label-noise", "nan"], 2, "--label-noise"),
    Case("synth --missing-vision 2", lambda t: ["synth", "-o", str(t / "s.h5"), "--missing-vision", "2"], 2,
         "--missing-vision"),
    Case("synth --n -5", lambda t: ["synth", "-o", str(t / "s.h5"), "--n", "-5"], 2, "--n"),
    Case("extract --fps nan", lambda t: ["extract", str(t), "-o", str(t / "x.h5"), "--fps", "nan"], 2, "--fps"),
    Case("extract --jobs -1", lambda t: ["extract", str(t), "-o", str(t / "x.h5"), "--jobs", "-1"], 2, "--jobs"),
    Case("extract --shard 4/4 (already refused)", lambda t: ["extract", str(t), "-o", str(t / "x.h5"), "--shard", "4/4"],
         1, "--shard 4/4 is invalid"),
    Case("import -o the input itself", lambda t: ["import", str(label_csv(t / "l.csv", ["1"])), "-o", str(t / "l.csv"),
                                                  "--force"], 1, "is also an input"),
    Case("merge -o one of the inputs (already refused)",
         lambda t: ["merge", str(_tiny(t)), str(write_tiny_store(t / "b.h5", n=5, seed=1)), "-o", str(t / "tiny.h5")],
         1, "is also an input"),
    Case("ablate --g-values nan", lambda t: ["ablate", "-d", str(_tiny(t)), "--g-sweep", "--g-values", "0,nan",
                                             "-o", str(t / "ab")], 1, "--g-values takes comma-separated finite numbers"),
]

# ── OS errors ───────────────────────────────────────────────────────────────────────────────────────


def _blocker(tmp: Path) -> Path:
    """A file where a folder is expected: every path below it fails with ENOTDIR."""
    (tmp / "afile").write_text("not a folder")
    return tmp / "afile"


LONG = "x" * 300  # longer than NAME_MAX (255) of every common file system


def _refuse_writes(folder: str, code: int) -> Callable[[pytest.MonkeyPatch], None]:
    """A patch under which creating anything below `/<folder>/` fails with OSError(code), as a read-only
    file system (EROFS) or a folder without write permission (EACCES, as chmod gives a user who is not
    root) make it fail."""

    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        import h5py

        real_file, real_mkdir = h5py.File, Path.mkdir

        def refuse(path) -> None:
            if f"/{folder}" in str(path):
                raise OSError(code, os.strerror(code), str(path))

        def file(name, mode="r", *args, **kwargs):
            if mode != "r":
                refuse(name)
            return real_file(name, mode, *args, **kwargs)

        def mkdir(self, *args, **kwargs):
            refuse(self)
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(h5py, "File", file)
        monkeypatch.setattr(Path, "mkdir", mkdir)

    return patch


_read_only = _refuse_writes("ro", errno.EROFS)
_permission_denied = _refuse_writes("locked", errno.EACCES)


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's disk has 1 MiB free: the writer must refuse the commit, not crash inside HDF5."""
    import shutil

    from kebr_core.data import store

    real = shutil.disk_usage
    monkeypatch.setattr(store.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=2**20) if "/full" in str(p) else real(p))


def _torch_save_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def save(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", save)


def _videos(tmp: Path) -> Path:
    for i in range(2):
        tone_clip(tmp / "videos" / f"c{i}.mp4", hz=300 + 50 * i)
    return tmp / "videos"


def _partial_store_survives_full_disk(tmp: Path) -> list[str]:
    """A store with one clip extracted; a second clip arrives and the disk is full: the run fails in one
    sentence and the store (checked unchanged by the runner) keeps the first clip."""
    videos = tmp / "videos"
    tone_clip(videos / "c0.mp4")
    (tmp / "full").mkdir()
    assert runner.invoke(app, ["extract", str(videos), "-o", str(tmp / "full" / "x.h5"), *EXTRACT_FAST]).exit_code == 0
    tone_clip(videos / "c1.mp4", hz=500)
    return ["extract", str(videos), "-o", str(tmp / "full" / "x.h5"), *EXTRACT_FAST]


OS_ERRORS = [
    Case("synth below a file (ENOTDIR)", lambda t: ["synth", "-o", str(_blocker(t) / "s.h5"), "--n", "20"], 1,
         "is a file, not a folder"),
    Case("synth with a name too long", lambda t: ["synth", "-o", str(t / f"{LONG}.h5"), "--n", "20"], 1,
         "name too long for the file system"),
    Case("synth on a read-only file system", lambda t: ["synth", "-o", str(t / "ro" / "s.h5"), "--n", "20"], 1,
         "read-only file system", patch=_read_only),
    Case("synth on a full disk", lambda t: ["synth", "-o", str(t / "full" / "s.h5"), "--n", "20"], 1,
         "no space left on the device", patch=_full_disk),
    Case("import below a file", lambda t: ["import", str(label_csv(t / "l.csv", ["1"])), "-o", str(_blocker(t) / "s.h5")],
         1, "is a file, not a folder"),
    Case("import on a read-only file system", lambda t: ["import", str(label_csv(t / "l.csv", ["1"])), "-o",
                                                         str(t / "ro" / "s.h5")], 1, "read-only file system",
         patch=_read_only),
    Case("merge with a name too long", lambda t: ["merge", str(store_with_labels(t / "a.h5", [1.0], "a")),
                                                  str(store_with_labels(t / "b.h5", [2.0], "b")),
                                                  "-o", str(t / f"{LONG}.h5")], 1, "name too long"),
    Case("extract below a file", lambda t: ["extract", str(_videos(t)), "-o", str(_blocker(t) / "x.h5"), *EXTRACT_FAST],
         1, "is a file, not a folder"),
    Case("extract on a read-only file system", lambda t: ["extract", str(_videos(t)), "-o", str(t / "ro" / "x.h5"),
                                                          *EXTRACT_FAST], 1, "read-only file system", patch=_read_only),
    Case("extract on a full disk keeps what was committed", _partial_store_survives_full_disk, 1,
         "no space left on the device", patch=_full_disk,
         check=lambda t, out: FeatureStore(t / "full" / "x.h5").ids == ["c0"] or pytest.fail("the store changed")),
    Case("extract --report below a file (the store is written first)",
         lambda t: ["extract", str(_videos(t)), "-o", str(t / "x.h5"), "--report", str(_blocker(t) / "r.json"),
                    *EXTRACT_FAST], 1, "is a file, not a folder", may_create=("x.h5",),
         check=lambda t, out: (len(FeatureStore(t / "x.h5")) == 2) or pytest.fail("the store was not kept")),
    Case("pretrain below a file", lambda t: ["pretrain", str(_tiny(t)), "-o", str(_blocker(t) / "run"), *FAST], 1,
         "is a file"),
    Case("pretrain on a read-only file system", lambda t: ["pretrain", str(_tiny(t)), "-o", str(t / "ro" / "run"),
                                                           *FAST], 1, "read-only file system", patch=_read_only),
    Case("pretrain: a checkpoint write fails (full disk, as torch reports it)", _pretrain("--epochs", "1"), 1,
         "writing a checkpoint failed (is the disk full or read-only?)", may_create=("run/",), patch=_torch_save_fails,
         check=lambda t, out: "--resume" in out or pytest.fail("no resume command")),
    Case("eval below a file", lambda t: ["eval", "-d", str(_tiny(t)), "-o", str(_blocker(t) / "ev"), *FAST], 1,
         "is a file"),
    Case("eval with a name too long", lambda t: ["eval", "-d", str(_tiny(t)), "-o", str(t / LONG), *FAST], 1,
         "name too long"),
    Case("import: permission denied", lambda t: _no_write(t, ["import", str(label_csv(t / "l.csv", ["1"])), "-o",
                                                              str(t / "locked" / "s.h5")]), 1, "permission denied",
         root_skips=True),
    Case("import: permission denied (simulated, so that it runs as root too)",
         lambda t: ["import", str(label_csv(t / "l.csv", ["1"])), "-o", str(t / "locked" / "s.h5")], 1,
         "permission denied", patch=_permission_denied),
    Case("extract: permission denied", lambda t: ["extract", str(_videos(t)), "-o", str(t / "locked" / "x.h5"),
                                                  *EXTRACT_FAST], 1, "permission denied", patch=_permission_denied),
    Case("missing input store (already one sentence)", lambda t: ["inspect", str(t / "nope.h5")], 1, "does not exist"),
]


def _no_write(tmp: Path, args: list[str]) -> list[str]:
    (tmp / "locked").mkdir()
    (tmp / "locked").chmod(0o555)
    return args


# ── labels ──────────────────────────────────────────────────────────────────────────────────────────


def _check_clipped(tmp: Path, output: str) -> None:
    assert sorted(FeatureStore(tmp / "c.h5").labels.tolist()) == [-3.0, 0.5, 3.0]


def _check_inspect(tmp: Path, output: str) -> None:
    assert "mean inf" not in output and "RuntimeWarning" not in output and "nan" not in output.lower().replace(
        "nan label", "")


LABELS = [
    Case("import: an inf label", lambda t: ["import", str(label_csv(t / "l.csv", ["1", "inf", "-inf"])), "-o",
                                            str(t / "s.h5")], 1, "2 label(s) are infinite (ids 'v1$_$1', 'v2$_$2')"),
    Case("import: labels 99 and -50 warn", lambda t: ["import", str(label_csv(t / "l.csv", ["99", "-50", "0.5"])), "-o",
                                                      str(t / "w.h5")], 0, "2 label(s) lie outside [-3, 3]",
         may_create=("w.h5",)),
    Case("import --clip-labels", lambda t: ["import", str(label_csv(t / "l.csv", ["99", "-50", "0.5"])), "-o",
                                            str(t / "c.h5"), "--clip-labels"], 0, "2 label(s) outside [-3, 3] were clipped",
         may_create=("c.h5",), check=_check_clipped),
    Case("extract: an inf label in the manifest",
         lambda t: ["extract", "--manifest", str(manifest(t / "label.csv", [("v1", "1", "inf")])), "--root", str(t),
                    "-o", str(t / "x.h5"), *EXTRACT_FAST], 1, "label(s) are infinite (ids 'v1$_$1')"),
    Case("inspect: inf and out-of-range labels of an old store",
         lambda t: ["inspect", str(store_with_labels(t / "old.h5", [1.0, float("inf"), 99.0, -0.5, 2.0]))], 0,
         "1 label(s) are infinite", check=_check_inspect),
]

# ── messages ────────────────────────────────────────────────────────────────────────────────────────


def _check_no_asr(tmp: Path, output: str) -> None:
    header, row = [line for line in output.splitlines() if "videos" in line or "│" in line][:2]
    cells = dict(zip([c.strip() for c in header.split("┃")[1:-1]], [c.strip() for c in row.split("│")[1:-1]]))
    assert cells["no ASR"] == "2" and cells["no speech"] == "0", cells


MESSAGES = [
    Case("extract --asr none counts 'no ASR', not 'no speech'",
         lambda t: ["extract", str(_videos(t)), "-o", str(t / "x.h5"), *EXTRACT_FAST], 0, "no ASR",
         may_create=("x.h5",), check=_check_no_asr),
]

# ── comparisons ────────────────────────────────────────────────────────────────────────────────────────


def _paired(tmp: Path, **other) -> list[str]:
    """`kebr compare A B` where B differs from A as `other` says (tests/paired_runs.py's layout)."""
    a = write_eval_run(tmp / "a", [1.0, 1.1, 1.2])
    b = write_eval_run(tmp / "b", [1.1, 1.1, 1.3], **other)
    return ["compare", str(a), str(b), "-o", str(tmp / "cmp")]


def _with_pretraining_run(tmp: Path) -> list[str]:
    pre = tmp / "pre"
    pre.mkdir()
    (pre / "config.json").write_text(json.dumps({"stage": "pretrain"}))
    return ["compare", str(write_eval_run(tmp / "a", [1.0, 1.1, 1.2])), str(pre)]


COMPARE = [
    Case("compare runs on other data", lambda t: _paired(t, data=DATA | {"content_sha256": "0ther"}), 1,
         "cannot be paired with"),
    Case("compare runs on other seeds", lambda t: _paired(t, seeds=(0, 1, 7)), 1,
         "other fine-tuning seeds (finished: 0, 1, 7 vs 0, 1, 2)"),
    Case("compare a pretraining run", lambda t: _with_pretraining_run(t), 1, "is a pretraining run"),
]

CASES = SECURITY + RANGES + OS_ERRORS + LABELS + MESSAGES + COMPARE


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.root_skips and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("permissions do not stop root")
    monkeypatch.chdir(tmp_path)
    args = case.setup(tmp_path)
    before = snapshot(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    result = runner.invoke(app, args)
    monkeypatch.undo()
    output = " ".join(result.output.split())
    assert result.exit_code == case.code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert case.fragment in output, result.output
    if case.code == 1:  # one sentence on stderr, its last line (after any progress lines of the run)
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, lines
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file was lost or changed"
    new = set(after) - set(before)
    unexpected = [n for n in new if not any(n == p or (p.endswith("/") and n.startswith(p)) for p in case.may_create)]
    assert not unexpected, f"unexpected files left behind: {sorted(unexpected)}"
    assert not list(tmp_path.rglob(MARKER)), "the payload ran"
    if case.check is not None:
        case.check(tmp_path, result.output)


# ── cases that need more than one command ──────────────────────────────────────────────────────────


def test_real_mmsa_pickles_still_load_with_the_data_only_unpickler(tmp_path: Path) -> None:
    """Pickles of every protocol and object arrays of str (MMSA's raw_text, id) load as before."""
    from kebr_core.data.importers import load_data_pickle

    data = {"train": {"raw_text": np.array(["a b", "c"], dtype=object), "id": np.array(["x$_$1", "x$_$2"]),
                      "regression_labels": np.array([1.5, -0.5], dtype=np.float32), "audio": np.ones((2, 3, 5)),
                      "audio_lengths": [3, 2], "vision": np.zeros((2, 4, 20), np.float32), "scalar": np.float64(2.5)}}
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = load_data_pickle(path)["train"]
        assert loaded["raw_text"].tolist() == ["a b", "c"] and loaded["scalar"] == 2.5
        np.testing.assert_array_equal(loaded["regression_labels"], data["train"]["regression_labels"])
    # numpy 1.x wrote `numpy.core.multiarray` where numpy 2 writes `numpy._core.multiarray` (MMSA's files are numpy 1).
    numpy1 = pickle.dumps(data, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in numpy1
    (tmp_path / "numpy1.pkl").write_bytes(numpy1)
    assert load_data_pickle(tmp_path / "numpy1.pkl")["train"]["raw_text"].tolist() == ["a b", "c"]


@pytest.mark.parametrize("payload", [
    (os.system, ("touch {marker}",)),
    (eval, ("__import__('pathlib').Path('{marker}').touch()",)),
    (__import__, ("os",)),
])
def test_the_data_only_unpickler_refuses_every_callable(tmp_path: Path, payload) -> None:
    from kebr_core.data.importers import load_data_pickle
    from kebr_core.errors import KebrError

    func, args = payload
    args = tuple(a.format(marker=tmp_path / MARKER) if isinstance(a, str) else a for a in args)

    class Payload:
        def __reduce__(self):
            return func, args

    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"train": [Payload()]}))
    with pytest.raises(KebrError, match="was refused: it names"):
        load_data_pickle(path)
    assert not (tmp_path / MARKER).exists()


def test_nan_labels_are_unlabeled_in_eval_and_counted(tmp_path: Path) -> None:
    """NaN labels in train/valid/test are left out of fine-tuning and evaluation (not 'the loss became nan')."""
    labels = [float(np.round(y, 1)) for y in np.random.default_rng(3).uniform(-3, 3, 40)]
    labels[0] = labels[5] = labels[3] = float("nan")  # two train samples and one valid
    store = store_with_labels(tmp_path / "s.h5", labels)
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(tmp_path / "ev"), "--epochs", "1", "--seeds", "1",
                            "--freeze-encoder", *FAST])
    assert r.exit_code == 0, r.output
    assert "left out of fine-tuning and evaluation: train 2, valid 1" in " ".join(r.output.split())
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["unlabeled_left_out"] == {"train": 2, "valid": 1, "test": 0}
    assert all(np.isfinite(v) for v in results["mean"].values())
    assert len((tmp_path / "ev" / "seed-0" / "predictions.csv").read_text().splitlines()) == 1 + 8  # 8 test samples


def test_retry_failed_and_the_skipped_count(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    tone_clip(videos / "good.mp4")
    (videos / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 broken")
    out = tmp_path / "x.h5"
    first = runner.invoke(app, ["extract", str(videos), "-o", str(out), *EXTRACT_FAST])
    assert first.exit_code == 0 and set(FeatureStore(out).errors()) == {"bad"}
    tone_clip(videos / "bad.mp4", hz=500)  # the user fixes the file
    rerun = runner.invoke(app, ["extract", str(videos), "-o", str(out), *EXTRACT_FAST])
    assert "1 id(s) failed in an earlier run and were skipped; rerun with --retry-failed" in " ".join(rerun.output.split())
    assert "bad" not in FeatureStore(out).ids
    retry = runner.invoke(app, ["extract", str(videos), "-o", str(out), "--retry-failed", *EXTRACT_FAST])
    assert retry.exit_code == 0, retry.output
    store = FeatureStore(out)
    assert sorted(store.ids) == ["bad", "good"] and store.errors() == {}


def test_a_clashing_id_from_another_folder_is_reported_with_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    first, second = tone_clip(tmp_path / "a" / "clip.mp4"), tone_clip(tmp_path / "b" / "clip.mp4", hz=600)
    assert runner.invoke(app, ["extract", str(first.parent), "-o", str(out), *EXTRACT_FAST]).exit_code == 0
    audio_before = FeatureStore(out).audio(0)
    again = runner.invoke(app, ["extract", str(first.parent), "-o", str(out), *EXTRACT_FAST])  # a plain resume
    assert "clash:" not in again.output
    r = runner.invoke(app, ["extract", str(second.parent), "-o", str(out), *EXTRACT_FAST])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "clash:" in text and str(second) in text and str(first.parent) in text
    np.testing.assert_array_equal(FeatureStore(out).audio(0), audio_before)  # the stored sample is kept


def test_ctrl_c_prints_the_exact_resume_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kebr_core.recipes.pretrain as recipe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "pretrain", interrupted)
    store = _tiny(tmp_path)
    args = ["pretrain", str(store), "-o", str(tmp_path / "my run"), "--epochs", "3", *FAST]
    monkeypatch.setattr(sys, "argv", ["kebr", *args])
    r = runner.invoke(app, args)
    assert r.exit_code == 130
    assert f"kebr pretrain {store} -o '{tmp_path / 'my run'}' --epochs 3" in " ".join(r.stderr.split())
    assert r.stderr.split()[-1] == "--resume"
