"""What the CLI prints, read by a person: nothing cut at 80 columns (the ablation table, extract's summary),
help text without markup artefacts, and the global --quiet / --verbose accepted after the command (issue 27,
items 8 and 9)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kebr_cli import app as app_module
from kebr_cli.main import app
from kebr_cli.tables import ablation_table, counts_table
from kebr_core.metrics import METRIC_NAMES
from tests.conftest import write_tiny_store
from tests.test_bad_input import EXTRACT_FAST, tone_clip

runner = CliRunner()


def render(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def ablation_rows() -> list[dict]:
    """Rows as `kebr ablate --no-pretrain --no-mcc --combined --pretrain-seeds 2` writes them: a long combined
    name, two-digit stds and paired differences vs C1 (the widest table it prints)."""
    mean = {"acc2_has0": 0.8245, "acc2_non0": 0.8291, "f1_has0": 0.8237, "f1_non0": 0.8288, "acc7": 0.4512, "acc5": 0.5,
            "mae": 0.7123, "corr": 0.7891}
    std = dict.fromkeys(METRIC_NAMES, 0.1234)

    def row(name: str, mcc: bool, delta: float) -> dict:
        return {"name": name, "pretrain": True, "tcmf": True, "mcc": mcc, "g": 0.2, "status": "done", "mean": mean,
                "std": std, "avg_change": -11.25,
                "vs_C1": {"mae": {"mean": delta, "low": -0.0321, "high": 0.0456},
                          "acc2_non0": {"mean": delta, "low": -0.0321, "high": 0.0456}}}

    return [row("C1", True, 0.0), row("C2", True, 0.0123), row("no-pretrain+no-mcc", False, -0.0234)]


@pytest.mark.parametrize("deltas", [True, False])
def test_the_ablation_table_keeps_every_number_whole_at_80_columns(deltas: bool) -> None:
    rows = ablation_rows()
    if not deltas:
        for r in rows:
            del r["vs_C1"]
    text = render(ablation_table(rows, [0, 1, 2], width=80, pretrain_seeds=[0, 1] if deltas else (),
                                 delta_caption="95 % t interval over 2 pretraining seeds" if deltas else ""), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    words = set(text.replace("│", " ").split())
    for number in ("82.45/82.91", "82.37/82.88", "45.12", "0.712", "0.789", "±12.34/±12.34", "±0.123", "-11.25"):
        assert number in words, number
    if deltas:
        for number in ("+0.012", "-0.023", "[-0.032,", "+0.046]", "+1.23", "-2.34", "[-3.21,", "+4.56]"):
            assert number in words, number
    # The combined name may wrap inside its cell (the first column), but all of it is there, in each table.
    names = "".join(line.split()[0] for line in text.splitlines() if line[:3].strip() and line.split()[0][0].isalpha())
    assert names.count("no-pretrain+no-mcc") == (2 if deltas else 1), names


def test_the_probe_table_keeps_every_number_whole_at_80_columns() -> None:
    from kebr_cli.ablate import probe_table

    mean, std = {"mae": 0.7123, "acc2_non0": 0.8291}, {"mae": 0.1234, "acc2_non0": 0.05}
    probe = {name: {"mean": {"mae": 0.8 + k / 100, "acc2_non0": 0.7 + k / 100}, "std": std}
             for k, name in enumerate(("audio zeroed", "audio absent", "vision zeroed", "vision absent"))}
    rows = [{"name": name, "mean": mean, "std": std, "probe": probe} for name in ("C1", "no-pretrain+no-mcc")]
    text = render(probe_table(rows), 80)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    words = text.split()
    for number in ("0.712±0.123", "82.9", "0.800±0.123", "0.830±0.123", "70.0", "73.0"):
        assert number in words, number
    for header in ("audio", "zeroed", "vision", "absent", "streams"):
        assert header in words


def test_a_summary_too_wide_for_80_columns_is_stacked_not_cut() -> None:
    counts = {"videos": "123456", "done": "123450", "skipped": "6", "no audio": "0", "no speech": "12", "no ASR": "3",
              "no face": "1", "failed": "6", "time": "12345.6 s", "speed": "12.3× RT"}
    text = render(counts_table("kebr extract → /a/longer/path/feats.h5", counts, width=80), 80)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    lines = [" ".join(line.replace("│", " ").split()) for line in text.splitlines()]
    for name, value in counts.items():
        assert f"{name} {value}" in lines, name
    wide = render(counts_table("kebr extract", counts, width=200), 200)
    assert len([line for line in wide.splitlines() if "no speech" in line]) == 1  # one row when it fits


def test_extract_at_80_columns_prints_its_summary_whole(tmp_path: Path, monkeypatch) -> None:
    tone_clip(tmp_path / "videos" / "a.mp4")
    monkeypatch.setattr(app_module.console, "width", 80)
    r = runner.invoke(app, ["extract", str(tmp_path / "videos"), "-o", str(tmp_path / "x.h5"), *EXTRACT_FAST])
    assert r.exit_code == 0, r.output
    assert "…" not in r.output
    lines = [" ".join(line.replace("│", " ").split()) for line in r.output.splitlines()]
    for name, value in (("videos", "1"), ("done", "1"), ("skipped", "0"), ("no speech", None), ("failed", "0")):
        assert any(line.startswith(f"{name} {value or ''}".strip()) for line in lines), (name, r.output)


def command_names() -> list[str]:
    return [c.name or c.callback.__name__ for c in app.registered_commands]


STYLE_TAG = re.compile(r"^/?(bold|dim|italic|red|green|yellow|blue|cyan|magenta|underline)?$")


@pytest.mark.parametrize("command", [None, *command_names()])
def test_help_has_no_markup_artefacts(command) -> None:
    """Every command's --help: no empty list left where Rich took "[model]" for markup, no "[]", and
    every bracketed word of an option's help string shows as written."""
    args = ([command] if command else []) + ["--help"]
    r = runner.invoke(app, args, env={"COLUMNS": "1000"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert not re.search(r", ,|\[\]|with \.|with ,|\( *\)", text), text
    if command is None:
        return
    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    for param in click_command.params:
        for word in re.findall(r"\[([^\]]*)\]", getattr(param, "help", None) or ""):
            if not STYLE_TAG.match(word):
                assert f"[{word.lstrip(chr(92))}]" in text, (param.name, word)


def test_quiet_and_verbose_are_accepted_after_the_command(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "s.h5", n=12)
    for args, want in ((["inspect", str(store), "-q"], app_module.Verbosity.QUIET),
                       (["inspect", "--verbose", str(store)], app_module.Verbosity.VERBOSE),
                       (["-q", "inspect", str(store)], app_module.Verbosity.QUIET),
                       (["inspect", str(store)], app_module.Verbosity.NORMAL)):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
        assert app_module.settings["verbosity"] == want, args
    r = runner.invoke(app, ["inspect", str(store), "-q", "-v"])
    assert r.exit_code == 2 and "--quiet and --verbose contradict each other" in r.output
    r = runner.invoke(app, ["inspect", "--", "-q"])  # after "--" it is an argument (a file named -q), not the flag
    assert r.exit_code != 0 and "-q" in r.output and "No such option" not in r.output
