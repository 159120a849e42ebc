"""What the commands print for a person and for a script: progress events rendered as bars or plain
lines (kebr_cli.reporter.Reporter), one line per finished epoch, --quiet/--verbose, log.txt in every run
directory, and --json documents that are the whole of stdout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import kebr_cli.reporter as cli_app
from kebr_cli.app import Verbosity
from kebr_cli.reporter import Reporter
from kebr_cli.main import app
from kebr_core import __version__
from kebr_core.training import BATCH_STAGE
from tests.conftest import TINY_BERT

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(cli_app.time, "monotonic", c)
    monkeypatch.setattr(cli_app, "show_progress", lambda: False)  # plain lines, as in a CI log
    return c


def test_plain_lines_off_a_terminal(clock: Clock, capsys, monkeypatch) -> None:
    monkeypatch.setitem(cli_app.settings, "verbosity", Verbosity.NORMAL)
    with Reporter() as report:
        for step in range(1, 101):  # 100 batches, 0.5 s each: a line every 10 s, not 100 lines
            clock.now += 0.5
            report(BATCH_STAGE, step, 100, {"epoch": 1})
        clock.now += 1.0
        report("pretrain", 1, 4, {"epoch": 1, "loss": 0.41234, "task_l1": 0.3, "seconds": 51.0})
        clock.now += 50.0
        report("pretrain", 2, 4, {"epoch": 2, "loss": 0.4, "task_l1": 0.29, "seconds": 50.0})
    lines = capsys.readouterr().err.splitlines()
    batch_lines = [line for line in lines if line.startswith("epoch 1 batches")]
    # the first line once the stage has run 10 s; the ETA: 0.5 s per batch since the first event, times what is left
    assert batch_lines == ["epoch 1 batches: 21/100 (21%) · ETA 0:00:40", "epoch 1 batches: 41/100 (41%) · ETA 0:00:30",
                           "epoch 1 batches: 61/100 (61%) · ETA 0:00:20", "epoch 1 batches: 81/100 (81%) · ETA 0:00:10"]
    epoch_lines = [line for line in lines if line.startswith("pretrain")]
    # the first epoch's ETA comes from its own seconds (3 × 51 s), the next from the time between events
    assert epoch_lines == ["pretrain epoch 1/4: loss 0.4123 · task_l1 0.3 (51.0 s) · ETA 0:02:33",
                           "pretrain epoch 2/4: loss 0.4 · task_l1 0.29 (50.0 s) · ETA 0:01:40"]


def test_a_short_stage_prints_no_progress_line(clock: Clock, capsys, monkeypatch) -> None:
    monkeypatch.setitem(cli_app.settings, "verbosity", Verbosity.NORMAL)
    with Reporter() as report:
        for done in range(1, 6):
            clock.now += 1.0
            report("extract", done, 5, {})
    assert capsys.readouterr().err == ""


def test_quiet_prints_nothing_and_verbose_every_second(clock: Clock, capsys, monkeypatch) -> None:
    monkeypatch.setitem(cli_app.settings, "verbosity", Verbosity.QUIET)
    with Reporter() as report:
        report("pretrain", 1, 2, {"epoch": 1, "loss": 0.4})
        report(BATCH_STAGE, 1, 2, {"epoch": 1})
    assert capsys.readouterr().err == ""
    monkeypatch.setitem(cli_app.settings, "verbosity", Verbosity.VERBOSE)
    with Reporter() as report:
        for step in range(1, 21):
            clock.now += 0.5
            report(BATCH_STAGE, step, 20, {"epoch": 1})
    assert 9 <= len(capsys.readouterr().err.splitlines()) <= 11


def test_live_bars_leave_the_bar_its_width(monkeypatch, capsys) -> None:
    """On a terminal the bar is a column of its own: metrics never squeeze it (they print as lines)."""
    monkeypatch.setitem(cli_app.settings, "verbosity", Verbosity.NORMAL)
    monkeypatch.setattr(cli_app, "show_progress", lambda: True)
    with Reporter() as report:
        report(BATCH_STAGE, 3, 10, {"epoch": 2})
        report("seed 0", 2, 10, {"epoch": 2, "train_loss": 1.5, "valid_mae": 0.8123, "seconds": 3.0})
    err = capsys.readouterr().err
    assert "seed 0 epoch 2/10: loss 1.5 · valid_mae 0.8123 (3.0 s)" in err
    bar = next(line for line in err.splitlines() if "epoch 2 batches" in line)
    width = bar.index("3/10") - bar.index("batches") - len("batches")  # 140 columns off a terminal
    assert width > 80 and bar.count("━") >= 0.3 * width - 2 and "ETA" in bar


def test_global_flags() -> None:
    for flag in ("-V", "--version"):
        r = runner.invoke(app, [flag])
        assert r.exit_code == 0 and r.stdout.strip() == f"kebr {__version__}"
    r = runner.invoke(app, ["-q", "-v", "inspect", "x.h5"])
    assert r.exit_code == 2 and "--quiet and --verbose contradict" in r.stderr
    r = runner.invoke(app, ["--help"])
    assert "--install-completion" in r.stdout  # shell completion is on


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path, CliRunner]:
    from tests.conftest import write_tiny_store

    root = tmp_path_factory.mktemp("out")
    store = write_tiny_store(root / "tiny.h5")
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(root / "pre"), "--epochs", "2", *FAST])
    assert r.exit_code == 0, r.output
    return store, root / "pre", r


def test_pretrain_prints_epoch_lines_and_logs_them(pretrained) -> None:
    _, pre, r = pretrained
    assert re.search(r"^pretrain epoch 1/2: loss [\d.]+ · task_l1 [\d.]+ · mcc ", r.stderr, flags=re.M)
    assert "pretraining: 2 epochs" in r.stdout and "pretrain epoch" not in r.stdout
    log = (pre / "log.txt").read_text()
    assert re.match(r"\d\d:\d\d:\d\d ── \d{4}-\d\d-\d\d · kebr " + re.escape(__version__) + " · kebr ", log)
    assert len(re.findall(r"^\d\d:\d\d:\d\d pretrain epoch [12]/2: loss ", log, flags=re.M)) == 2
    assert "pretraining: 2 epochs" in log and str(pre / "final") in log


def test_eval_json_is_the_whole_of_stdout_and_quiet_keeps_the_results(pretrained, tmp_path) -> None:
    store, pre, _ = pretrained
    out = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "-d", str(store), "--pretrained", str(pre), "-o", str(out), "--epochs", "1", "--seeds", "2",
                            "--json", *FAST])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # nothing but the document
    assert doc["run_dir"] == str(out) and doc["seeds"] == [0, 1] and len(doc["per_seed"]) == 2
    assert doc["mean"] == json.loads((out / "results.json").read_text())["mean"]
    assert "seed 1 epoch 1/1" in r.stderr and "seed 1 epoch 1/1" in (out / "log.txt").read_text()
    r = runner.invoke(app, ["-q", "eval", "-d", str(store), "--pretrained", str(pre), "-o", str(tmp_path / "q"), "--epochs", "1",
                            "--seeds", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert r.stderr == "" and "tiny.h5: test split, 1 seed (0), no spread" in " ".join(r.stdout.split())
    log = (tmp_path / "q" / "log.txt").read_text()
    assert "seed 0 epoch 1/1" in log  # --quiet quiets the terminal, not the log


def test_ablate_json(tmp_path) -> None:
    from tests.conftest import write_tiny_store

    store = write_tiny_store(tmp_path / "tiny.h5")
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "-d", str(store), "-o", str(out), "--seeds", "1", "--pretrain-epochs", "1",
                            "--epochs", "1", "--json", *FAST])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["out"] == str(out) and [c["name"] for c in doc["configurations"]] == ["C1"]
    assert "note: Pretraining uses the train, valid, unlabeled samples of" in r.stderr and (out / "log.txt").is_file()


def test_a_refused_run_leaves_no_log(tmp_path) -> None:
    r = runner.invoke(app, ["ablate", "-d", "synth", "-o", str(tmp_path / "abl"), "--align", "diagonal"])
    assert r.exit_code != 0 and not (tmp_path / "abl").exists()


def test_inspect_json(tmp_path) -> None:
    from tests.conftest import write_tiny_store

    store = write_tiny_store(tmp_path / "tiny.h5")
    r = runner.invoke(app, ["inspect", str(store), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["samples"] == 60
