"""Hostile files and sizes (issue 28, classes 2, 3, 4, 6, 7): crafted checkpoints, crafted config files
and `--set` values, sizes that would hang or allocate tens of GB, a model folder overwritten by another
kind of file, and files someone else keeps beside a run's.

Each row of CASES is one command run in an empty folder, as in `tests/test_bad_input.py`: the exit code,
one sentence naming the file (a fragment of it), no traceback, no file lost or changed, nothing left
behind but the outputs the row names. The resource bombs (RESOURCE_BOMBS) run in a child process under a
time and memory limit (`tests/hostile.py`): each must be refused within seconds and without allocating
what it asks for.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core import checkpoints, runs
from kebr_core.config import RunConfig
from kebr_core.errors import KebrError
from kebr_core.own_files import RECORD, remove_written
from tests.conftest import TINY_BERT, write_tiny_store
from tests.hostile import assert_refused, run_hostile
from tests.test_bad_input import Case, snapshot

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pretraining run (1 epoch, a checkpoint per epoch) whose final/ the rows copy and then damage."""
    root = tmp_path_factory.mktemp("pretrained")
    store = write_tiny_store(root / "tiny.h5", n=40)
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(root / "run"), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output
    return root / "run"


# ── what a row builds: a store and a damaged copy of the checkpoint ────────────────────────────────────


def _store(tmp: Path) -> Path:
    return write_tiny_store(tmp / "tiny.h5", n=40)


def _checkpoint(tmp: Path, source: Path, weights: bytes | None = None, config: bytes | None = None,
                settings: dict | None = None) -> Path:
    """tmp/ck: a copy of `source`'s final/ with its weights or config.json replaced by raw bytes, or its
    config's sections updated with `settings` ({"model": {"layers": 10}})."""
    ck = tmp / "ck"
    shutil.copytree(source / runs.FINAL, ck)
    if weights is not None:
        (ck / runs.WEIGHTS).write_bytes(weights)
    if config is not None:
        (ck / runs.CONFIG).write_bytes(config)
    if settings:
        payload = json.loads((ck / runs.CONFIG).read_text())
        for section, values in settings.items():
            payload[section].update(values)
        (ck / runs.CONFIG).write_text(json.dumps(payload))
    return ck


def _eval_from(**damage) -> Callable[[Path, Path], list[str]]:
    """`kebr eval --pretrained ck` of a damaged checkpoint."""
    return lambda t, src: ["eval", "-d", str(_store(t)), "--pretrained", str(_checkpoint(t, src, **damage)),
                           "-o", str(t / "ev"), "--epochs", "1", "--seeds", "1", *FAST]


def _predict_with(**damage) -> Callable[[Path, Path], list[str]]:
    """`kebr predict` with a damaged model folder (the model is read before any video)."""
    return lambda t, src: ["predict", str(t / "clip.mp4"), "--model", str(_checkpoint(t, src, **damage)), "--asr", "none"]


def _safetensors(header: bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if declared is None else declared) + header + data


def _truncated(src: Path) -> bytes:
    raw = (src / runs.FINAL / runs.WEIGHTS).read_bytes()
    return raw[: len(raw) // 2]


DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEP_TOML = b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"
LONG_INT = "9" * 5000


# ── class 2: crafted checkpoints; class 7: a model folder overwritten by another kind of file ──────────

CHECKPOINTS = [
    Case("weights: an empty file", _eval_from(weights=b""), 1, "are not a usable safetensors file: the file is empty"),
    Case("weights: a header declared 1 TB long", _eval_from(weights=_safetensors(b"{}", declared=2**40)), 1,
         "declares a header of 1,099,511,627,776 bytes"),
    Case("weights: a header longer than the file", _eval_from(weights=_safetensors(b"{}", declared=4096)), 1,
         "declares a header of 4,096 bytes but holds 2"),
    Case("weights: garbage", _eval_from(weights=bytes(range(256)) * 40), 1, "are not a usable safetensors file"),
    Case("weights: not JSON in the header", _eval_from(weights=_safetensors(b"{not json")), 1,
         "its header is not valid JSON"),
    Case("weights: a tensor past the end of the data",
         _eval_from(weights=_safetensors(json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode(),
                                         b"\0" * 16)), 1, "outside the 16 bytes of data"),
    Case("weights: an unknown dtype",
         _eval_from(weights=_safetensors(json.dumps({"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}).encode(),
                                         b"\0" * 4)), 1, "has the unknown dtype 'Q99'"),
    Case("weights: a shape that does not fill its bytes",
         _eval_from(weights=_safetensors(json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}).encode(),
                                         b"\0" * 4)), 1, "does not fill its byte range"),
    Case("config.json: invalid JSON", _eval_from(config=b'{"model": '), 1, "config.json is not valid JSON"),
    Case("config.json: a list", _eval_from(config=b"[1, 2, 3]"), 1, "holds a JSON list, not the object of settings"),
    Case("config.json: not UTF-8", _eval_from(config=b'{"model": {"text_model": "\xff\xfe\xfa"}}'), 1,
         "config.json is not UTF-8 text"),
    Case("config.json: nested 100,000 deep", _eval_from(config=DEEP_JSON), 1, "nests lists or tables more than 32 deep"),
    Case("config.json: a 5,000-digit integer", _eval_from(config=b'{"model": {"layers": ' + LONG_INT.encode() + b"}}"), 1,
         "config.json is not valid JSON"),
    Case("config.json: a section that is a number", _eval_from(config=b'{"model": 3}'), 1,
         "section 'model' must be a table of settings"),
    Case("predict: config.json overwritten by a list", _predict_with(config=b"[]"), 1, "holds a JSON list"),
    Case("predict: model.safetensors overwritten by text", _predict_with(weights=b"just some notes\n" * 20), 1,
         "model.safetensors are not a usable safetensors file"),
]


def _features_overwritten(tmp: Path, src: Path) -> list[str]:
    ck = _checkpoint(tmp, src)
    payload = json.loads((ck / runs.CONFIG).read_text()) | {"features": "audio,vision"}
    (ck / runs.CONFIG).write_text(json.dumps(payload))
    return ["predict", str(tmp / "clip.mp4"), "--model", str(ck), "--asr", "none"]


CHECKPOINTS.append(Case("predict: features overwritten by a string", _features_overwritten, 1,
                        "features must be an object"))


def _model_folder_now_a_file(tmp: Path, src: Path) -> list[str]:
    (tmp / "best-model").write_bytes(b"PK\x03\x04 an archive where the folder was")
    return ["predict", str(tmp / "clip.mp4"), "--model", str(tmp / "best-model"), "--asr", "none"]


def _weights_now_a_folder(tmp: Path, src: Path) -> list[str]:
    ck = _checkpoint(tmp, src)
    (ck / runs.WEIGHTS).unlink()
    (ck / runs.WEIGHTS).mkdir()
    (ck / runs.WEIGHTS / "part-1").write_bytes(b"x")
    return ["eval", "-d", str(_store(tmp)), "--pretrained", str(ck), "-o", str(tmp / "ev"), *FAST]


CHECKPOINTS += [
    Case("predict: the model folder overwritten by a file", _model_folder_now_a_file, 1, "is not a fine-tuned checkpoint"),
    Case("eval: model.safetensors replaced by a folder", _weights_now_a_folder, 1,
         "model.safetensors are missing or not a plain file"),
]

# ── class 3: sizes in a valid-looking checkpoint or in options (refused before anything is allocated) ───

SIZES = [
    Case("config.json: layers 10,000,000", _eval_from(settings={"model": {"layers": 10_000_000}}), 1,
         "model.layers must be an integer ≥ 1 and ≤ 1,000, not 10000000"),
    Case("config.json: head_hidden 1e9", _eval_from(settings={"model": {"head_hidden": 10**9}}), 1,
         "model.head_hidden must be an integer ≥ 1 and ≤ 1,048,576"),
    Case("pretrain --layers 10000000", lambda t, s: ["pretrain", str(_store(t)), "-o", str(t / "run"), *FAST,
                                                     "--layers", "10000000"], 1, "--layers must be an integer ≥ 1 and ≤ 1,000, not 10000000"),
    Case("pretrain --max-text-len 2000 on a 512-position encoder",
         lambda t, s: ["pretrain", str(_store(t)), "-o", str(t / "run"), *FAST, "--max-text-len", "2000"], 1,
         "model.max_text_len 2000 of this configuration is longer than the 512 positions"),
    Case("pretrain --seeds 100000000", lambda t, s: ["pretrain", str(_store(t)), "-o", str(t / "run"), *FAST,
                                                     "--seeds", "100000000"], 2, "at most 1,000 seeds are allowed"),
    Case("eval --seeds 10**30", lambda t, s: ["eval", "-d", str(_store(t)), "-o", str(t / "ev"), *FAST,
                                              "--seeds", "1" + "0" * 30], 2, "at most 1,000 seeds are allowed"),
    Case("eval --seeds with a seed over 2**32", lambda t, s: ["eval", "-d", str(_store(t)), "-o", str(t / "ev"), *FAST,
                                                              "--seeds", "1,99999999999"], 2, "seeds from 0 to 4,294,967,295"),
    Case("random-bert hidden=10**12", lambda t, s: ["pretrain", str(_store(t)), "-o", str(t / "run"), "--text-model",
                                                    "random-bert:hidden=1000000000000"], 1,
         "hidden must be from 1 to 1,048,576"),
]

# ── class 4: config files and --set ─────────────────────────────────────────────────────────────────


def _with_config(name: str, content: bytes) -> Callable[[Path, Path], list[str]]:
    def setup(t: Path, src: Path) -> list[str]:
        (t / name).write_bytes(content)
        return ["pretrain", str(_store(t)), "-o", str(t / "run"), *FAST, "--config", str(t / name)]

    return setup


def _pretrain_set(assignment: str) -> Callable[[Path, Path], list[str]]:
    return lambda t, s: ["pretrain", str(_store(t)), "-o", str(t / "run"), *FAST, "--set", assignment]


CONFIGS = [
    Case("--config: not UTF-8", _with_config("c.json", b'{"train": {"epochs": 2, "device": "\xff"}}'), 1,
         "c.json is not UTF-8 text"),
    Case("--config: JSON nested 100,000 deep", _with_config("c.json", DEEP_JSON), 1, "c.json nests lists or tables more than 32"),
    Case("--config: TOML nested 100,000 deep", _with_config("c.toml", DEEP_TOML), 1, "c.toml nests lists or tables more than 32"),
    Case("--config: JSON nested 40 deep (parses, still refused)",
         _with_config("c.json", b'{"train": ' + b"[" * 40 + b"]" * 40 + b"}"), 1, "nests lists or tables more than 32"),
    Case("--config: a 5,000-digit integer", _with_config("c.json", b'{"train": {"epochs": ' + LONG_INT.encode() + b"}}"), 1,
         "c.json is not valid JSON"),
    Case("--config: epochs 10**30", _with_config("c.toml", b"[train]\nepochs = 1000000000000000000000000000000\n"), 1,
         "train.epochs must be an integer ≥ 1 and ≤ 16,777,216"),
    Case("--config: batch size 2**63 in TOML", _with_config("c.toml", b"[train]\nbatch_size = 9223372036854775807\n"), 1,
         "train.batch_size must be an integer ≥ 1 and ≤"),
    Case("--config: larger than 16 MiB", _with_config("c.json", b'{"train": {}}' + b" " * (17 << 20)), 1,
         "is larger than 16,777,216 bytes"),
    Case("--config: a folder", lambda t, s: (t / "c.json").mkdir() or ["pretrain", str(_store(t)), "-o", str(t / "run"),
                                                                       "--config", str(t / "c.json")], 1, "is a folder"),
    Case("--set an integer too large for torch", _pretrain_set("train.batch_size=99999999999999999999"), 1,
         "--set train.batch_size must be an integer ≥ 1 and ≤ 16,777,216"),
    Case("--set a 5,000-digit integer", _pretrain_set("model.max_audio_len=" + LONG_INT), 1,
         "this number is far outside it"),
    Case("--set seeds over 2**32", _pretrain_set("train.seeds=1,99999999999"), 1, "must list seeds from 0 to 4,294,967,295"),
    Case("--set a workers count torch cannot start", _pretrain_set("train.workers=100000000"), 1,
         "train.workers must be an integer ≥ 0 and ≤ 1,024"),
]

CASES = CHECKPOINTS + SIZES + CONFIGS


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_file(case: Case, pretrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = case.setup(tmp_path, pretrained)
    before = snapshot(tmp_path)
    result = runner.invoke(app, args)
    output = " ".join(result.output.replace("│", " ").split())  # a usage error (exit 2) is a wrapped box
    assert result.exit_code == case.code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert case.fragment in output, result.output
    if case.code == 1:
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, lines
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file was lost or changed"
    assert not set(after) - set(before), f"files left behind: {sorted(set(after) - set(before))}"


# ── resource bombs, in a child process under a time and memory limit ───────────────────────────────


def _bomb_checkpoint(tmp: Path, src: Path) -> list[str]:
    """Every size within its own maximum, together 2e9 parameters: 1,000 unshared TCMF layers with FFNs 1,024 wide."""
    ck = _checkpoint(tmp, src, settings={"model": {"layers": 1000, "shared_layers": False, "ffn_mult": 1024}})
    return ["eval", "-d", str(_store(tmp)), "--pretrained", str(ck), "-o", str(tmp / "ev"), *FAST]


RESOURCE_BOMBS = [
    ("random-bert:hidden=32000,layers=200", lambda t, s: ["pretrain", str(_store(t)), "-o", str(t / "run"), "--text-model",
                                                          "random-bert:hidden=32000,layers=200,heads=2"],
     "would have 2,468,"),
    ("a checkpoint of 2e9 parameters", _bomb_checkpoint, "more than the limit of 1,000,000,000; raise it with --max-parameters"),
    ("pretrain --seeds 100000000", lambda t, s: ["pretrain", str(_store(t)), "-o", str(t / "run"), *FAST,
                                                 "--seeds", "100000000"], "at most 1,000 seeds"),
]


@pytest.mark.parametrize("name, setup, fragment", RESOURCE_BOMBS, ids=[b[0] for b in RESOURCE_BOMBS])
def test_resource_bombs_are_refused_in_seconds_and_without_the_memory(name, setup, fragment, pretrained: Path,
                                                                      tmp_path: Path) -> None:
    args = setup(tmp_path, pretrained)
    result = run_hostile(args, cwd=tmp_path, time_limit_s=60, rss_limit_mb=1500)
    assert_refused(result, fragment, code=2 if "--seeds" in name else 1)


def test_max_parameters_raises_the_limit(pretrained: Path, tmp_path: Path) -> None:
    """The same model is refused under a limit below its count and built above it (the count is exact)."""
    from kebr_core.config import RunConfig
    from kebr_core.model import KEBRModel
    from kebr_core.model_size import check_model_size

    cfg = RunConfig()
    cfg.model.text_model, cfg.model.layers, cfg.model.shared_layers, cfg.model.fusion = TINY_BERT, 3, False, "symmetric"
    real = sum(p.numel() for p in KEBRModel(cfg.model, cfg.mcc).parameters())
    assert check_model_size(cfg) == real
    cfg.train.max_parameters = real - 1
    with pytest.raises(KebrError, match=f"would have {real:,} parameters"):
        check_model_size(cfg)
    r = runner.invoke(app, ["pretrain", str(_store(tmp_path)), "-o", str(tmp_path / "run"), *FAST, "--epochs", "1",
                            "--max-parameters", str(real // 2)])
    assert r.exit_code == 1 and "raise it with --max-parameters" in " ".join(r.output.split())
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


# ── class 6: files someone else keeps beside a run's, and symbolic links ──────────────────────────────


def _foreign(root: Path) -> dict[str, bytes]:
    """Files no run wrote, with names kebr's clean-up used to match (`*.tmp`, an epoch folder)."""
    files = {"important.tmp": b"keep me", "data.tmp/x": b"mine", "epoch-0009/weights.bin": b"not kebr's",
             "epoch-0007.tmp/notes.txt": b"a half-written checkpoint? no: my notes"}
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return files


def test_force_and_retention_remove_only_the_runs_own_checkpoint_files(tmp_path: Path) -> None:
    store = _store(tmp_path)
    args = ["pretrain", str(store), "-o", str(tmp_path / "run"), *FAST, "--epochs", "2", "--checkpoint-every", "1"]
    assert runner.invoke(app, args).exit_code == 0
    checkpoints = tmp_path / "run" / runs.CHECKPOINTS
    foreign = _foreign(checkpoints)
    r = runner.invoke(app, [*args, "--force", "--keep-checkpoints", "1"])
    assert r.exit_code == 0, r.output
    for name, content in foreign.items():
        assert (checkpoints / name).read_bytes() == content, name
    assert (checkpoints / runs.LATEST).read_text().strip() == "epoch-0002"
    assert not (checkpoints / "epoch-0001").exists()  # the run's own older checkpoint went
    assert sorted(p.name for p in (checkpoints / "epoch-0009").iterdir()) == ["weights.bin"]


def test_a_symlinked_checkpoints_folder_is_never_written_or_cleaned_through(tmp_path: Path) -> None:
    store = _store(tmp_path)
    args = ["pretrain", str(store), "-o", str(tmp_path / "run"), *FAST, "--epochs", "1"]
    assert runner.invoke(app, args).exit_code == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    foreign = _foreign(scratch)
    (scratch / "epoch-0001").mkdir()
    (scratch / "epoch-0001" / runs.WEIGHTS).write_bytes(b"someone else's checkpoint")
    shutil.rmtree(tmp_path / "run" / runs.CHECKPOINTS)
    (tmp_path / "run" / runs.CHECKPOINTS).symlink_to(scratch)
    before = snapshot(scratch)
    r = runner.invoke(app, [*args, "--force", "--keep-checkpoints", "1"])
    assert r.exit_code == 1 and "is a symbolic link" in r.output
    assert snapshot(scratch) == before and all((scratch / n).read_bytes() == c for n, c in foreign.items())


def test_a_link_made_during_the_run_stops_retention_instead_of_deleting_through_it(tmp_path: Path) -> None:
    """checkpoints/ replaced by a link after the run's start check: the next save refuses, removing nothing."""
    run_dir, scratch = tmp_path / "run", tmp_path / "scratch"
    (scratch / "epoch-0001").mkdir(parents=True)
    (scratch / "epoch-0001" / runs.WEIGHTS).write_bytes(b"someone else's")
    (scratch / "other.tmp").write_bytes(b"keep")
    run_dir.mkdir()
    (run_dir / runs.CHECKPOINTS).symlink_to(scratch)
    before = snapshot(scratch)
    with pytest.raises(KebrError, match="never through a link: nothing there was removed"):
        checkpoints.save_resume_checkpoint(run_dir, 2, {"w": torch.zeros(2)}, {"k": 1}, {"optimizer": {}}, keep=1)
    assert snapshot(scratch) == before


def test_a_foreign_file_in_a_stale_checkpoint_folder_is_refused_not_removed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stale = runs.epoch_dir(run_dir, 1)
    stale.mkdir(parents=True)
    (stale / "weights.bin").write_bytes(b"not kebr's")
    with pytest.raises(KebrError, match="holds weights.bin, which kebr did not write; it is needed to save checkpoint epoch-0001"):
        checkpoints.save_resume_checkpoint(run_dir, 1, {"w": torch.zeros(2)}, {"k": 1}, {"optimizer": {}})
    assert (stale / "weights.bin").read_bytes() == b"not kebr's"


def test_the_measured_peak_is_the_commands_own_not_the_test_process(tmp_path: Path) -> None:
    """The harness itself: with this process holding 1.5 GB when it starts the command (as pytest does late in
    the full suite), a refusal that needs a few hundred MB still measures a few hundred MB. Measured as the
    reaped child's rusage, it read over 1 GB (Linux keeps the peak RSS of the forked pages across exec)."""
    ballast = bytearray(1536 * 2**20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page: resident, not just reserved
    (tmp_path / "x.pkl").write_bytes(b"not a pickle")
    result = run_hostile(["import", "x.pkl", "-o", "x.h5"], tmp_path, time_limit_s=60, rss_limit_mb=1000)
    del ballast
    assert result.code == 1, result.describe()
    assert 20 < result.peak_rss_mb < 1000, result.describe()
# ── class 6, by the run's own records: a file put in place of one of kebr's, under kebr's name ────────


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A pretraining of 2 epochs with a checkpoint each (final/ with README.md and text-encoder/), and its
    command; each row works on a copy (`copytree` keeps the mtimes the folders' records list)."""
    root = tmp_path_factory.mktemp("two-epochs")
    args = ["pretrain", str(_store(root)), *FAST, "--checkpoint-every", "1"]
    r = runner.invoke(app, [*args, "-o", str(root / "run"), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    return root / "run", args


FORCE = ["--epochs", "2", "--force", "--keep-checkpoints", "1"]
RESUME_KEEP_1 = ["--epochs", "3", "--resume", "--keep-checkpoints", "1"]
# (the file of kebr's replaced, the command's options, exit code, fragment of the output, where the foreign file is then)
FOREIGN_UNDER_KEBRS_NAME = [
    ("final/model.safetensors", FORCE, 0, "", "final.old/model.safetensors"),
    ("final/README.md", FORCE, 0, "", "final.old/README.md"),
    ("final/text-encoder/tokenizer_config.json", FORCE, 0, "", "final.old/text-encoder/tokenizer_config.json"),
    ("checkpoints/epoch-0002/model.safetensors", FORCE, 1,
     "holds model.safetensors, which kebr did not write; it is needed to save checkpoint epoch-0002",
     "checkpoints/epoch-0002/model.safetensors"),
    ("checkpoints/epoch-0001/config.json", RESUME_KEEP_1, 0, "", "checkpoints/epoch-0001/config.json"),
]


@pytest.mark.parametrize("replaced, options, code, fragment, found", FOREIGN_UNDER_KEBRS_NAME,
                         ids=[f"{row[0]} {row[1][2]}" for row in FOREIGN_UNDER_KEBRS_NAME])
def test_a_file_put_in_place_of_kebrs_survives_force_and_retention(replaced, options, code, fragment, found,
                                                                   two_epochs, tmp_path: Path) -> None:
    """Same name, same size, other content, written after kebr's: it is not in the folder's record (its
    mtime differs), so `--force` and `--keep-checkpoints` leave it, with its folder."""
    source, args = two_epochs
    run = tmp_path / "run"
    shutil.copytree(source, run)
    size = (run / replaced).stat().st_size
    foreign = (b"someone else's " * (size // 15 + 1))[:size]
    (run / replaced).write_bytes(foreign)
    r = runner.invoke(app, [*args, "-o", str(run), *options])
    assert r.exit_code == code, r.output
    assert fragment in " ".join(r.output.split()) and "Traceback" not in r.output
    assert (run / found).read_bytes() == foreign
    parts = Path(found).parts
    folder = run.joinpath(*parts[:2]) if parts[0] == runs.CHECKPOINTS else run / parts[0]
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if code == 0:  # everything else kebr wrote there went; an emptied record stays with the foreign file
        assert left == sorted([RECORD, (run / found).relative_to(folder).as_posix()])
        assert json.loads((folder / RECORD).read_text())["files"] == {}
    if options is RESUME_KEEP_1:
        assert sorted(p.name for p in (run / runs.CHECKPOINTS).iterdir()) == ["epoch-0001", "epoch-0003", "latest"]


def _folder_written_twice(tmp: Path, replaced: str) -> Path:
    """best-model/ saved by `save_pretrained` (README.md, text-encoder/), `replaced` then overwritten by
    someone, and the folder saved again (as at every better epoch)."""
    from kebr_core.model import KEBRModel
    from kebr_core.model import save_pretrained

    cfg = RunConfig()
    cfg.model.text_model, cfg.model.d_audio, cfg.model.d_vision, cfg.model.layers = TINY_BERT, 3, 4, 1
    model = KEBRModel(cfg.model, cfg.mcc)
    folder = tmp / "run" / runs.BEST_MODEL
    save_pretrained(model, folder, cfg, include_encoder=False)
    (folder / replaced).write_bytes(b"mine, under kebr's name")
    save_pretrained(model, folder, cfg, include_encoder=False)
    return folder


@pytest.mark.parametrize("replaced", [runs.MODEL_CARD, f"{runs.TEXT_ENCODER}/tokenizer_config.json", runs.WEIGHTS])
def test_a_model_folder_saved_again_keeps_a_file_put_under_kebrs_name(replaced: str, tmp_path: Path) -> None:
    folder = _folder_written_twice(tmp_path, replaced)
    old = folder.with_name(folder.name + ".old")
    assert (old / replaced).read_bytes() == b"mine, under kebr's name"
    assert sorted(p.relative_to(old).as_posix() for p in old.rglob("*") if p.is_file()) == sorted([RECORD, replaced])
    with pytest.raises(KebrError, match=f"holds {replaced.split('/')[0]}, which kebr did not write"):
        checkpoints.save_checkpoint(folder, torch.nn.Linear(1, 1), RunConfig(), True)  # the next save needs best-model.old
    assert remove_written(old, runs.MODEL_FOLDER_FILES, inside=tmp_path / "run") == [replaced.split("/")[0]]
    assert (old / replaced).read_bytes() == b"mine, under kebr's name"  # still: removals by name do not take it


def test_a_folder_without_a_record_is_removed_by_kebrs_names(tmp_path: Path) -> None:
    """Folders written before records existed (or killed before theirs was written): the exact-name rule."""
    run = tmp_path / "run"
    for epoch in (1, 2):
        checkpoints.save_resume_checkpoint(run, epoch, {"w": torch.zeros(2)}, {"k": 1}, {"optimizer": {}})
    (runs.epoch_dir(run, 1) / RECORD).unlink()
    (runs.epoch_dir(run, 1) / (RECORD + ".tmp")).write_text("{")  # a kill while the record was written
    (runs.epoch_dir(run, 2) / RECORD).unlink()
    (runs.epoch_dir(run, 2) / "notes.txt").write_text("mine")
    checkpoints.save_resume_checkpoint(run, 3, {"w": torch.zeros(2)}, {"k": 1}, {"optimizer": {}}, keep=1)
    assert not runs.epoch_dir(run, 1).exists()
    assert sorted(p.name for p in runs.epoch_dir(run, 2).iterdir()) == ["notes.txt"]


def test_a_record_kebr_could_not_have_written_makes_nothing_removable(tmp_path: Path) -> None:
    run = tmp_path / "run"
    checkpoints.save_resume_checkpoint(run, 1, {"w": torch.zeros(2)}, {"k": 1}, {"optimizer": {}})
    folder = runs.epoch_dir(run, 1)
    before = snapshot(folder)
    for record in (b"not json", b'{"written_by": "kebr", "files": {"../../outside": [1, 2]}}', b"[]",
                   b'{"files": {}}', b'{"written_by": "kebr", "files": ["config.json"]}'):
        (folder / RECORD).write_bytes(record)
        changed = snapshot(folder)
        assert remove_written(folder, runs.MODEL_FOLDER_FILES, inside=run) == sorted(p.name for p in folder.iterdir())
        assert snapshot(folder) == changed and {k: v for k, v in changed.items() if k != RECORD} == {
            k: v for k, v in before.items() if k != RECORD}  # nothing removed, the odd record not rewritten


def test_files_kebr_writes_into_a_model_folder_after_saving_it_are_recorded(tmp_path: Path) -> None:
    """selection.json and the model card rewritten once all seeds ran come after best-model/'s record: they
    are added to it, so `--force` and the next better seed's save remove them (no best-model.old left)."""
    run = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "-d", str(_store(tmp_path)), "-o", str(run), "--epochs", "1", "--seeds", "2", *FAST])
    assert r.exit_code == 0, r.output
    best = run / runs.BEST_MODEL
    recorded = json.loads((best / RECORD).read_text())["files"]
    for name in (runs.SELECTION, runs.MODEL_CARD):
        assert recorded[name] == [(best / name).stat().st_size, (best / name).stat().st_mtime_ns], name
    assert not best.with_name(runs.BEST_MODEL + ".old").exists()
    runs.remove_run_files(run)
    assert not best.exists()
