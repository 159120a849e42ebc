"""kebr writes only what it created (issue 32): never onto an input of the same command, never through a
symbolic link below its output folder, never over (or deleting) a file it did not write; one job at a time
in a run; SIGTERM ends a run as Ctrl-C does.

Every row of CASES is one command through the real CLI, checked as tests/test_bad_input.py checks: the
exit code, the one sentence (no traceback), and that no file anywhere in the test folder was lost or
changed (byte for byte, links included: a link is compared by its target, and the folder a link points
to lies inside the test folder too). The rows are numbered by the issue's items (1, 2, 3, 7).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core import checkpoints, runs
from kebr_core.recipes.analyze import WRITTEN_MANIFEST
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8", "--device", "cpu"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
           PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` by its SHA-256, every link by its target (links are not followed)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = "link → " + os.readlink(path)
            elif path.is_file():
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ───────────────────────── what the cases start from ─────────────────────────


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once: a tiny store, a pretraining run (2 epochs, a checkpoint each), an evaluation run (one
    seed) with its best-model/, and a short video. Each case copies what it needs."""
    root = tmp_path_factory.mktemp("made")
    store = write_tiny_store(root / "tiny.h5", n=40)
    for args in (["pretrain", str(store), "-o", str(root / "pre"), "--epochs", "2", "--checkpoint-every", "1"],
                 ["eval", "-d", str(store), "-o", str(root / "ev"), "--epochs", "1", "--seeds", "1"]):
        r = runner.invoke(app, [*args, *FAST])
        assert r.exit_code == 0, r.output
    (root / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video, and never read")
    return root


def copy(made: Path, t: Path, *names: str) -> None:
    for name in names:
        (shutil.copytree if (made / name).is_dir() else shutil.copy2)(made / name, t / name)


def victim(t: Path) -> Path:
    """A folder of the user's outside every output, which links in the cases point to."""
    elsewhere = t / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "thesis.txt").write_text("four years of work\n")
    return elsewhere


# ───────────────────────── the table ─────────────────────────


@dataclass
class Case:
    name: str
    setup: Callable[[Path, Path], list[str]]  # (made, empty folder) → the command's arguments
    code: int
    fragment: str
    may_write: tuple[str, ...] = ()  # paths it may create or change (a trailing / : anything below)
    check: Callable[[Path], None] | None = None


def predict_onto(target: str, extra: Callable[[Path], None] = lambda t: None) -> Callable[[Path, Path], list[str]]:
    def setup(made: Path, t: Path) -> list[str]:
        copy(made, t, "clip.mp4", "ev")
        extra(t)
        return ["predict", str(t / "clip.mp4"), "--model", str(t / "ev" / runs.BEST_MODEL), "-o", str(t / target),
                "--asr", "none", "--device", "cpu"]
    return setup


def _hard_link(t: Path) -> None:
    os.link(t / "clip.mp4", t / "scores.json")


def _link_to_config(t: Path) -> None:
    (t / "scores.json").symlink_to(t / "ev" / runs.BEST_MODEL / runs.CONFIG)


def _users_json(t: Path) -> None:
    (t / "notes.json").write_text('{"my": "notes"}\n')


def extract_report_onto_users_json(made: Path, t: Path) -> list[str]:
    (t / "videos").mkdir()
    _users_json(t)
    return ["extract", str(t / "videos"), "-o", str(t / "x.h5"), "--report", str(t / "notes.json"), "--vision", "none",
            "--asr", "none"]


def predict_folder(made: Path, t: Path) -> list[str]:
    copy(made, t, "ev")
    (t / "videos").mkdir()
    shutil.copy2(made / "clip.mp4", t / "videos" / "a.mp4")
    return ["predict", str(t / "videos"), "--model", str(t / "ev"), "-o", str(t / "videos" / "a.mp4"), "--asr", "none"]


def extract_onto_video(made: Path, t: Path) -> list[str]:
    (t / "videos").mkdir()
    shutil.copy2(made / "clip.mp4", t / "videos" / "a.mp4")
    return ["extract", str(t / "videos"), "-o", str(t / "videos" / "a.mp4"), "--vision", "none", "--asr", "none"]


def extract_report_onto_manifest(made: Path, t: Path) -> list[str]:
    (t / "Raw").mkdir()
    (t / "label.csv").write_text("video_id,clip_id,text,label,annotation,mode\nv,1,a fine movie,1,Positive,train\n")
    return ["extract", "--manifest", str(t / "label.csv"), "--root", str(t / "Raw"), "-o", str(t / "x.h5"),
            "--report", str(t / "label.csv"), "--vision", "none", "--asr", "none"]


def merge_onto_hard_link(made: Path, t: Path) -> list[str]:
    store = write_tiny_store(t / "a.h5", n=10)
    write_tiny_store(t / "b.h5", n=10, seed=1)
    os.link(store, t / "merged.h5")
    return ["merge", str(t / "a.h5"), str(t / "b.h5"), "-o", str(t / "merged.h5"), "--force"]


def pretrain_into_folder_of_store(made: Path, t: Path) -> list[str]:
    (t / "data").mkdir()
    copy(made, t / "data", "tiny.h5")
    return ["pretrain", str(t / "data" / "tiny.h5"), "-o", str(t / "data"), "--force", *FAST]


def eval_force_over_its_checkpoint(made: Path, t: Path) -> list[str]:
    copy(made, t, "tiny.h5", "pre")
    return ["eval", "-d", str(t / "tiny.h5"), "--pretrained", str(t / "pre" / runs.FINAL), "-o", str(t / "pre"), "--force",
            "--epochs", "1", "--seeds", "1", *FAST]


def eval_results_table_onto_store(made: Path, t: Path) -> list[str]:
    copy(made, t, "tiny.h5")
    return ["eval", "-d", str(t / "tiny.h5"), "-o", str(t / "run"), "--results-table", str(t / "tiny.h5"),
            "--epochs", "1", "--seeds", "1", *FAST]


def export_onto(target: str, extra: Callable[[Path], None] = lambda t: None) -> Callable[[Path, Path], list[str]]:
    """`kebr export --force` of the evaluation run to `target` (prepared by `extra`)."""
    def setup(made: Path, t: Path) -> list[str]:
        copy(made, t, "ev")
        extra(t)
        return ["export", str(t / "ev"), "-o", str(t / target), "--force"]
    return setup


def _model_folder_with_a_link(t: Path) -> None:
    """A kebr model folder (a copy of best-model/) whose text-encoder/ is a link to the user's folder."""
    shutil.copytree(t / "ev" / runs.BEST_MODEL, t / "shared")
    shutil.rmtree(t / "shared" / runs.TEXT_ENCODER)
    (t / "shared" / runs.TEXT_ENCODER).symlink_to(victim(t), target_is_directory=True)


def _users_folder(t: Path) -> None:
    (t / "mine").mkdir()
    (t / "mine" / "notes.txt").write_text("my notes\n")


def _link_to_elsewhere(t: Path) -> None:
    (t / "shared").symlink_to(victim(t), target_is_directory=True)


def analyze_over(name: str, content: str | None) -> Callable[[Path, Path], list[str]]:
    """`kebr analyze` of the pretraining run into a folder of the user's holding `name` (a file with
    `content`, or None: a link to the user's thesis elsewhere)."""
    def setup(made: Path, t: Path) -> list[str]:
        copy(made, t, "pre")
        (t / "mine").mkdir()
        if content is None:
            (t / "mine" / name).symlink_to(victim(t) / "thesis.txt")
        else:
            (t / "mine" / name).write_text(content)
        return ["analyze", str(t / "pre"), "-o", str(t / "mine")]
    return setup


def analyze_with_planted_record(made: Path, t: Path) -> list[str]:
    """A record kebr did not write lists the user's files (names analyze may write, and others) as its own."""
    copy(made, t, "pre")
    mine = t / "mine"
    mine.mkdir()
    for name in ("g_sweep.png", "pca.svg", "notes.txt"):
        (mine / name).write_text(f"the user's {name}\n")
    record = {name: {"size": 1, "mtime_ns": 0, "sha256": "0" * 64} for name in ("g_sweep.png", "pca.svg", "notes.txt")}
    (mine / WRITTEN_MANIFEST).write_text(json.dumps(record))
    return ["analyze", str(t / "pre"), "-o", str(mine)]


def analyze_with_planted_list(made: Path, t: Path) -> list[str]:
    """The manifest format of earlier versions (a bare list of names): no proof of anything, nothing removed."""
    copy(made, t, "pre")
    mine = t / "mine"
    mine.mkdir()
    (mine / "pca.png").write_text("the user's figure\n")
    (mine / WRITTEN_MANIFEST).write_text(json.dumps(["pca.png", "../pre/config.json"]))
    return ["analyze", str(t / "pre"), "-o", str(mine)]


def _planted_files_kept(t: Path) -> None:
    assert (t / "mine" / "g_sweep.png").read_text() == "the user's g_sweep.png\n"  # not deleted by the planted record
    assert (t / "mine" / "balance.png").stat().st_size > 1000  # and analyze did its work


def eval_force_through_seed_link(made: Path, t: Path) -> list[str]:
    copy(made, t, "tiny.h5", "ev")
    shutil.rmtree(t / "ev" / "seed-0")
    (t / "ev" / "seed-0").symlink_to(victim(t), target_is_directory=True)
    return ["eval", "-d", str(t / "tiny.h5"), "-o", str(t / "ev"), "--force", "--epochs", "1", "--seeds", "1", *FAST]


def pretrain_with_log_link(made: Path, t: Path) -> list[str]:
    copy(made, t, "tiny.h5")
    (t / "fresh").mkdir()
    (t / "fresh" / runs.LOG).symlink_to(victim(t) / "thesis.txt")
    return ["pretrain", str(t / "tiny.h5"), "-o", str(t / "fresh"), "--epochs", "1", *FAST]


def pretrain_over_users_files(force: bool) -> Callable[[Path, Path], list[str]]:
    def setup(made: Path, t: Path) -> list[str]:
        copy(made, t, "tiny.h5")
        (t / "mine").mkdir()
        (t / "mine" / runs.METRICS).write_text("my,own,measurements\n1,2,3\n")
        (t / "mine" / runs.CONFIG).write_text('{"my": "settings"}\n')
        (t / "mine" / "final").mkdir()
        (t / "mine" / "final" / "paper.tex").write_text("\\section{x}\n")
        return ["pretrain", str(t / "tiny.h5"), "-o", str(t / "mine"), "--epochs", "1", *FAST] + (["--force"] if force else [])
    return setup


def ablate_over_users_results(made: Path, t: Path) -> list[str]:
    copy(made, t, "tiny.h5")
    (t / "abl").mkdir()
    (t / "abl" / runs.RESULTS_CSV).write_text("my,results\n")
    return ["ablate", "-d", str(t / "tiny.h5"), "-o", str(t / "abl"), "--no-mcc", "--pretrain-epochs", "1", "--epochs", "1",
            "--seeds", "1", *FAST]


def eval_into_users_results_table(made: Path, t: Path) -> list[str]:
    copy(made, t, "tiny.h5")
    (t / "mine.csv").write_text("Model,Dataset,MAE,My notes\nbaseline,mosi,0.9,keep this column\n")
    return ["eval", "-d", str(t / "tiny.h5"), "-o", str(t / "run"), "--results-table", str(t / "mine.csv"),
            "--epochs", "1", "--seeds", "1", *FAST]


def resume_with_pointer(text: str | Callable[[Path], str]) -> Callable[[Path, Path], list[str]]:
    def setup(made: Path, t: Path) -> list[str]:
        copy(made, t, "tiny.h5", "pre")
        victim(t)
        (t / "pre" / runs.CHECKPOINTS / runs.LATEST).write_text((text(t) if callable(text) else text) + "\n")
        return ["pretrain", str(t / "tiny.h5"), "-o", str(t / "pre"), "--resume", "--epochs", "3", *FAST]
    return setup


def resume_with_state(**fields) -> Callable[[Path, Path], list[str]]:
    def setup(made: Path, t: Path) -> list[str]:
        copy(made, t, "pre")
        path = t / "pre" / runs.CHECKPOINTS / "epoch-0002" / runs.TRAINER_STATE
        state = torch.load(path, weights_only=True, map_location="cpu")
        torch.save(state | fields, path)
        # The run's own store (its identity names that path), read only.
        return ["pretrain", str(made / "tiny.h5"), "-o", str(t / "pre"), "--resume", "--epochs", "3", *FAST]
    return setup


def _complete_checkpoint_elsewhere(t: Path) -> str:
    """A whole checkpoint outside the run: a pointer that could be followed would resume from it."""
    shutil.copytree(t / "pre" / runs.CHECKPOINTS / "epoch-0002", t / "elsewhere" / "epoch-0002")
    return str(t / "elsewhere" / "epoch-0002")


CASES = [
    # 1. an output that is an input of the same command
    Case("1 predict -o the video itself", predict_onto("clip.mp4"), 1, "clip.mp4 is also an input"),
    Case("1 predict -o the model's config.json", predict_onto(f"ev/{runs.BEST_MODEL}/{runs.CONFIG}"), 1,
         "is also an input"),
    Case("1 predict -o a hard link of the video", predict_onto("scores.json", _hard_link), 1, "is also an input"),
    Case("1 predict -o a link to the model's config.json", predict_onto("scores.json", _link_to_config), 1,
         "is also an input"),
    Case("1 predict -o a video of the folder scored", predict_folder, 1, "a.mp4 is also an input"),
    Case("1 extract -o a video it reads", extract_onto_video, 1, "a.mp4 is also an input"),
    Case("1 extract --report onto the manifest", extract_report_onto_manifest, 1, "--report"),
    Case("1 merge --force onto a hard link of an input", merge_onto_hard_link, 1, "is also an input"),
    Case("1 pretrain --force into the folder of its store", pretrain_into_folder_of_store, 1, "holds the input"),
    Case("1 eval --force into the run of its checkpoint", eval_force_over_its_checkpoint, 1, "holds the input"),
    Case("1 eval --results-table onto the store", eval_results_table_onto_store, 1, "--results-table"),
    Case("1 export --force onto the run it exports", export_onto("ev"), 1, "is the input"),
    Case("1 export --force into its model folder", export_onto(f"ev/{runs.BEST_MODEL}/copy"), 1,
         "inside the model it exports"),
    Case("1 predict -o the user's own JSON", predict_onto("notes.json", _users_json), 1,
         "notes.json exists and is not a file of predictions kebr wrote"),
    Case("1 extract --report onto the user's own JSON", extract_report_onto_users_json, 1,
         "exists and is not an extraction report kebr wrote"),
    # 2. analyze into a folder of the user's
    Case("2 analyze over the user's index.md", analyze_over("index.md", "# my notes\n"), 1,
         "index.md, which kebr did not write"),
    Case("2 analyze over the user's balance.png", analyze_over("balance.png", "my figure"), 1,
         "balance.png, which kebr did not write"),
    Case("2 analyze with a planted record", analyze_with_planted_record, 0, "wrote",
         may_write=("mine/balance.png", "mine/training_curves.png", "mine/index.md", f"mine/{WRITTEN_MANIFEST}"),
         check=_planted_files_kept),
    Case("2 analyze with a planted list of names", analyze_with_planted_list, 0, "wrote",
         may_write=("mine/balance.png", "mine/training_curves.png", "mine/index.md", f"mine/{WRITTEN_MANIFEST}"),
         check=lambda t: (t / "mine" / "pca.png").read_text() == "the user's figure\n" or pytest.fail("pca.png was touched")),
    # 3. links and someone else's files in an output folder
    Case("3 analyze onto a link to elsewhere", analyze_over("training_curves.png", None), 1,
         "training_curves.png, which kebr did not write"),
    Case("3 eval --force with seed-0 a link elsewhere", eval_force_through_seed_link, 1, "seed-0 is a symbolic link"),
    Case("3 pretrain into a fresh folder with a log.txt link", pretrain_with_log_link, 1, "log.txt is a symbolic link"),
    Case("3 pretrain into a folder of the user's files", pretrain_over_users_files(False), 1,
         "which kebr did not write"),
    Case("3 pretrain --force into a folder of the user's files", pretrain_over_users_files(True), 1,
         "which kebr did not write"),
    Case("3 export --force onto a link to elsewhere", export_onto("shared", _link_to_elsewhere), 1, "is a symbolic link"),
    Case("3 export --force onto a model folder holding a link", export_onto("shared", _model_folder_with_a_link), 1,
         "is a symbolic link"),
    Case("3 export --force into a folder of the user's files", export_onto("mine", _users_folder), 1,
         "is not a kebr model folder"),
    Case("3 ablate over the user's results.csv", ablate_over_users_results, 1, "results.csv, which kebr did not write"),
    Case("3 eval into the user's own results table", eval_into_users_results_table, 1, "is not a kebr results table",
         may_write=("run/",)),
    # 7. the resume pointer and the trainer state
    Case("7 latest names ../../..", resume_with_pointer("../../.."), 1, "not an epoch-NNNN folder"),
    Case("7 latest names an absolute path", resume_with_pointer(_complete_checkpoint_elsewhere), 1,
         "not an epoch-NNNN folder"),
    Case("7 trainer state with epoch 10**18", resume_with_state(epoch=10**18), 1, "outside 1 .. 3"),
    Case("7 trainer state with another folder's epoch", resume_with_state(epoch=1), 1, "lies in epoch-0002"),
    Case("7 trainer state with epoch 0", resume_with_state(epoch=0), 1, "holds epoch 0"),
    Case("7 trainer state without an optimizer state", resume_with_state(optimizer=[1, 2]), 1, "holds no optimizer state"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kebr_writes_only_what_it_created(case: Case, made: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = case.setup(made, tmp_path)
    before = snapshot(tmp_path)
    result = runner.invoke(app, args)
    output = " ".join(result.output.split())
    assert result.exit_code == case.code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert case.fragment in output, result.output
    if case.code == 1:  # one sentence on stderr, its last line
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, lines
    after = snapshot(tmp_path)
    allowed = lambda n: any(n == p or (p.endswith("/") and n.startswith(p)) for p in case.may_write)  # noqa: E731
    changed = sorted(k for k in before if after.get(k) != before[k] and not allowed(k))
    assert not changed, f"lost or changed: {changed}"
    unexpected = sorted(n for n in set(after) - set(before) if not allowed(n))
    assert not unexpected, f"unexpected files left behind: {unexpected}"
    if case.check is not None:
        case.check(tmp_path)


def test_analyze_replaces_and_removes_what_it_wrote_itself(made: Path, tmp_path: Path) -> None:
    """The other side of the rule: a rerun replaces its own plots, and removes one it no longer makes
    (here: an svg asked for before and not now) while still exactly as written."""
    copy(made, tmp_path, "pre")
    out = tmp_path / "plots"
    r = runner.invoke(app, ["analyze", str(tmp_path / "pre"), "-o", str(out), "-f", "png", "-f", "svg"])
    assert r.exit_code == 0, r.output
    assert (out / "balance.svg").is_file()
    (out / "mine.txt").write_text("mine\n")
    r = runner.invoke(app, ["analyze", str(tmp_path / "pre"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert not (out / "balance.svg").exists() and (out / "balance.png").is_file()
    assert (out / "mine.txt").read_text() == "mine\n"
    assert set(json.loads((out / WRITTEN_MANIFEST).read_text())) == {"balance.png", "training_curves.png", "index.md"}


def test_a_file_output_is_replaced_only_when_it_is_what_kebr_writes(tmp_path: Path) -> None:
    from kebr_core.errors import KebrError
    from kebr_core.io import check_replaceable, json_with_keys

    def ours(p: Path) -> bool:
        return json_with_keys(p, {"video", "score"})

    (tmp_path / "earlier.json").write_text(json.dumps([{"video": "a.mp4", "score": 1.0}, {"video": "b.mp4", "score": None}]))
    check_replaceable(tmp_path / "earlier.json", ours, "a file of predictions")  # kebr's own: may be replaced
    check_replaceable(tmp_path / "new.json", ours, "a file of predictions")  # not there yet
    (tmp_path / "link.json").symlink_to(tmp_path / "earlier.json")
    for name, text in (("list.json", '[{"video": "a.mp4"}]'), ("other.json", '{"video": "a", "score": 1}x'),
                       ("link.json", None)):
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(KebrError, match=f"--out {tmp_path / name} exists and is not a file of predictions"):
            check_replaceable(tmp_path / name, ours, "a file of predictions")


# ───────────────────────── 8: two jobs into one run at once ─────────────────────────


def _kebr(*args: str) -> list[str]:
    return [sys.executable, "-m", "kebr_cli", *args]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < timeout, f"{path} did not appear"
        time.sleep(0.2)


def test_a_second_eval_into_a_running_run_is_refused_at_once(tmp_path: Path) -> None:
    """Two real processes: while one `kebr eval` trains in --out, a second plain one (and a seed shard)
    into the same --out exits 1 at once with one sentence; the first goes on alone (then is stopped by
    SIGTERM), its metrics.csv holding each epoch once, in order: no "1 1 2 2" of two jobs interleaved."""
    store = write_tiny_store(tmp_path / "tiny.h5", n=40)
    common = ["eval", "-d", str(store), "-o", str(tmp_path / "run"), "--seeds", "2", "--epochs", "1000", *FAST]
    first = subprocess.Popen(_kebr(*common), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "run" / "seed-0" / runs.METRICS, first)  # training has begun
        for extra in ([], ["--seed-shard", "0/2"]):
            second = subprocess.run(_kebr(*common, *extra), env=ENV, capture_output=True, text=True, timeout=120)
            assert first.poll() is None, "the first run ended before the second started"
            assert second.returncode == 1, second.stderr
            lines = second.stderr.strip().splitlines()
            assert "Traceback" not in second.stderr and lines[-1].startswith("error: ")
            assert f"Run directory {tmp_path / 'run'} is in use by another kebr job" in " ".join(second.stderr.split())
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130 and "stopped by SIGTERM" in err, err
    epochs = [int(r.split(",")[0]) for r in (tmp_path / "run" / "seed-0" / runs.METRICS).read_text().splitlines()[1:]]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 1
    assert not (tmp_path / "run" / "seed-1").exists() and not (tmp_path / "run" / runs.RESULTS_JSON).exists()


def test_shards_with_their_own_seeds_claim_only_those(tmp_path: Path) -> None:
    """The claim is per item: shard 0/2 holds seeds at positions 0, 2; shard 1/2 may take 1, 3 meanwhile,
    a plain job (every seed) may not. (In one process a lock never blocks itself, so a child holds one.)"""
    from kebr_core.errors import KebrError
    from kebr_core.shards import claimed

    lock = tmp_path / runs.RUN_LOCK
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from kebr_core.shards import claimed\n"
        f"with claimed(Path({str(lock)!r}), [0, 2], 'run'):\n    print('held', flush=True); sys.stdin.read()")],
        env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with claimed(lock, [1, 3], "run"):
            pass
        for items in (None, [2]):
            with pytest.raises(KebrError, match="in use by another kebr job"):
                with claimed(lock, items, "Run directory x"):
                    pass
    finally:
        holder.communicate("", timeout=30)
    with claimed(lock, None, "run"):  # released when the holder ended
        pass


# ───────────────────────── 9: SIGTERM ─────────────────────────


def test_sigterm_saves_the_last_epoch_and_prints_the_resume_command(tmp_path: Path) -> None:
    """A real `kebr pretrain` sent SIGTERM mid-run saves its last finished epoch (checkpoints are every
    1000 epochs, so only the handler can have saved it), exits 130 and prints the exact command; that
    command continues the run."""
    store = write_tiny_store(tmp_path / "tiny.h5", n=40)
    out = tmp_path / "pre"
    proc = subprocess.Popen(_kebr("pretrain", str(store), "-o", str(out), "--epochs", "1000", "--checkpoint-every", "1000",
                                  *FAST), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / runs.METRICS, proc)
        while len((out / runs.METRICS).read_text().splitlines()) < 3:  # two finished epochs
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert "stopped by SIGTERM; what was finished is kept. To continue, run: kebr pretrain" in text
    command = text.split("To continue, run: ", 1)[1]
    assert command.endswith("--resume")
    saved = checkpoints.latest_checkpoint(out)
    assert saved is not None
    epoch = checkpoints.load_trainer_state(saved)["epoch"]
    assert epoch >= 2
    args = shlex.split(command)[1:] + ["--epochs", str(epoch + 1)]  # the printed command, one epoch further
    r = subprocess.run(_kebr(*args), env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert checkpoints.load_trainer_state(checkpoints.latest_checkpoint(out))["epoch"] == epoch + 1
    assert (out / runs.FINAL / runs.WEIGHTS).is_file()


def test_an_atomic_write_never_follows_a_link_planted_at_its_temporary_name(tmp_path: Path) -> None:
    """`io.atomic_write_text` with a fixed temporary name (a model folder's record): a link planted there is
    refused, the file it points to and the link are left as they were; without one the text lands whole."""
    from kebr_core.io import atomic_write_text

    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file\n")
    planted = tmp_path / "record.json.tmp"
    planted.symlink_to(victim)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "record.json", "{}", tmp=planted)
    assert victim.read_text() == "the user's file\n" and planted.is_symlink() and not (tmp_path / "record.json").exists()
    planted.unlink()
    atomic_write_text(tmp_path / "record.json", "ünïcode ✓", tmp=planted)
    assert (tmp_path / "record.json").read_text(encoding="utf-8") == "ünïcode ✓" and not planted.exists()
