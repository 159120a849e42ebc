"""`kebr --help`, `kebr --version`, and the README's command table kept in sync with the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core import __version__

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"


def registered_commands() -> set[str]:
    return {c.name or c.callback.__name__ for c in app.registered_commands}


def test_version() -> None:
    for flag in ("--version", "-V"):
        r = runner.invoke(app, [flag])
        assert r.exit_code == 0 and r.output.strip() == f"kebr {__version__}"


def test_help_lists_every_command_with_a_description() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for name in registered_commands():
        assert re.search(rf"│ {name}\s+\S", r.output), name


def test_every_command_has_help() -> None:
    for name in registered_commands():
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0, name
        assert "Usage" in r.output


def test_readme_documents_every_command() -> None:
    """The README's command table names exactly the commands the CLI has, in the order `kebr --help` lists them."""
    documented = re.findall(r"^\| `kebr (\w+)", README.read_text(), flags=re.M)
    assert documented == [c.name or c.callback.__name__ for c in app.registered_commands]


def test_help_lists_commands_in_workflow_order_under_panels() -> None:
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    panels = re.findall(r"╭─ (\w+) ─", out)
    assert panels == ["Options", "Data", "Training", "Analysis", "Use"]
    listed = re.findall(r"^│ (\w+) {2,}", out, flags=re.M)
    assert listed == ["extract", "import", "synth", "merge", "inspect", "pretrain", "eval", "tune", "ablate", "compare",
                      "analyze", "table", "predict", "export", "demo"]


def test_help_shows_choices_and_no_bool_type() -> None:
    out = runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "200"}).output
    assert "<kebr33|mmsa33>" in out and "<mediapipe|openface-csv|none>" in out
    assert "<bool>" not in out and "<bool>" not in runner.invoke(app, ["--help"]).output
    r = runner.invoke(app, ["extract", "v", "-o", "x.h5", "--vision", "webcam"])
    assert r.exit_code == 2 and "'webcam' is not one of 'mediapipe', 'openface-csv', 'none'" in " ".join(r.output.replace("│", " ").split())


def test_console_script_runs_as_module() -> None:
    out = subprocess.run([sys.executable, "-m", "kebr_cli", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and __version__ in out.stdout


def test_old_option_names_are_hidden_aliases(tmp_path: Path) -> None:
    """--checkpoint (predict) and --workers (extract, predict) still work for one release, with a note,
    and no longer show in --help; giving both spellings is one clear sentence."""
    help_text = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"}).output
    assert "--model" in help_text and "--jobs" in help_text
    assert "--checkpoint" not in help_text and "--workers" not in help_text
    missing = tmp_path / "missing"
    old = runner.invoke(app, ["predict", "v.mp4", "-c", str(missing)])
    assert "note: --checkpoint is now --model" in old.stderr and f"{missing} does not exist" in old.stderr
    both = runner.invoke(app, ["predict", "v.mp4", "-c", "a", "--model", "b"])
    assert both.exit_code == 1 and "--model was given twice: also as --checkpoint" in both.stderr
    none = runner.invoke(app, ["predict", "v.mp4"])
    assert none.exit_code == 1 and "needs the fine-tuned model: --model" in none.stderr
    r = runner.invoke(app, ["extract", str(tmp_path / "none"), "-o", str(tmp_path / "x.h5"), "--workers", "0"])
    assert r.stderr.startswith("note: --workers is now --jobs") and r.exit_code == 1


def test_inspect_reads_the_store_from_d_or_its_argument(tmp_path: Path) -> None:
    from tests.conftest import write_tiny_store

    store = write_tiny_store(tmp_path / "t.h5")
    for args in (["-d", str(store)], [str(store)]):
        r = runner.invoke(app, ["inspect", *args, "--json"])
        assert r.exit_code == 0 and '"samples": 60' in r.stdout
    r = runner.invoke(app, ["inspect"])
    assert r.exit_code == 1 and "needs a store: -d STORE.h5" in r.stderr


def test_training_choices_match_the_core() -> None:
    """The choices `pretrain`, `eval` and `ablate` show are the ones kebr_core accepts (kebr_core.modules.mcc)."""
    from kebr_core.modules.mcc import ALIGNS, FORMS

    for command in ("pretrain", "eval", "ablate"):
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert "|".join(FORMS) in out and "|".join(ALIGNS) in out and "<bool>" not in out


def test_training_option_names_agree() -> None:
    """--loader-workers (DataLoader) in every training command, --pretrained in eval, -d in pretrain; the old
    names are hidden aliases; ablate has every training option eval and pretrain have."""
    helps = {c: runner.invoke(app, [c, "--help"], env={"COLUMNS": "200"}).output for c in ("pretrain", "eval", "ablate")}
    for command, text in helps.items():
        assert "--loader-workers" in text and "--workers" not in text, command
    assert "--pretrained" in helps["eval"] and "--checkpoint " not in helps["eval"]
    assert "--dataset" in helps["pretrain"] and "-d" in helps["pretrain"]

    def options(text: str) -> set[str]:
        return set(re.findall(r"│\s+(?:\*\s+)?(--[a-z0-9-]+)", text))

    training = (options(helps["pretrain"]) | options(helps["eval"])) - {
        "--resume", "--resume-if-possible", "--seed", "--checkpoint-every", "--help", "--epochs", "--pretrained", "--dataset",
        "--out", "--splits", "--seed-shard"}  # ablate always continues its finished work: no --resume flags; its
    # pretraining data is --pretrain-store without the test split (--pretrain-on-test), as pretrain's default: no
    # --splits; it shards configurations (--shard), not seeds
    missing = training - options(helps["ablate"])
    assert not missing, missing


def test_training_commands_take_old_names_and_d(tmp_path: Path) -> None:
    r = runner.invoke(app, ["eval", "-d", str(tmp_path / "none.h5"), "-c", str(tmp_path / "pre"), "-o", str(tmp_path / "ev")])
    assert r.exit_code == 1 and "note: --checkpoint is now --pretrained" in r.stderr
    r = runner.invoke(app, ["eval", "-d", "x.h5", "--pretrained", "a", "-c", "b", "-o", str(tmp_path / "ev")])
    assert r.exit_code == 1 and "--pretrained was given twice: also as --checkpoint" in r.stderr
    r = runner.invoke(app, ["pretrain", "-o", str(tmp_path / "pre")])
    assert r.exit_code == 1 and "kebr pretrain needs a store: -d STORE.h5" in r.stderr
    r = runner.invoke(app, ["pretrain", "a.h5", "-d", "b.h5", "-o", str(tmp_path / "pre")])
    assert r.exit_code == 1 and "got two stores, a.h5 and -d b.h5" in r.stderr
    r = runner.invoke(app, ["pretrain", "-d", str(tmp_path / "none.h5"), "--workers", "1", "-o", str(tmp_path / "pre")])
    assert r.exit_code == 1 and "note: --workers is now --loader-workers" in r.stderr
    assert not (tmp_path / "pre").exists() and not (tmp_path / "ev").exists()
