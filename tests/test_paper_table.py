"""`kebr table` (kebr_core.paper_table): the paper's Table 1 and Table 4 as LaTeX, Markdown and CSV, checked
against reviewed files in tests/data/ (regenerate them with KEBR_UPDATE_TABLES=1 and review the diff), the
LaTeX compiled with pdflatex where it is installed, -o and its refusals, and bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.paper_table import best_labels, read_entries
from tests.paper_tables import write_ablation, write_eval, write_table1_inputs, metrics

runner = CliRunner()
DATA = Path(__file__).parent / "data"
UPDATE = os.environ.get("KEBR_UPDATE_TABLES") == "1"
SUFFIX = {"latex": "tex", "markdown": "md", "csv": "csv"}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, list[str]]:
    mosi, mosei, table = write_table1_inputs(tmp_path)
    return {"table1": [str(mosi), str(mosei), str(table)], "table4": [str(write_ablation(tmp_path / "ablation"))]}


def expected(name: str, text: str) -> str:
    path = DATA / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("layout", ["table1", "table4"])
@pytest.mark.parametrize("fmt", ["latex", "markdown", "csv"])
def test_the_table_is_the_reviewed_text(inputs, layout: str, fmt: str) -> None:
    r = runner.invoke(app, ["table", *inputs[layout], "--format", fmt])
    assert r.exit_code == 0, r.output
    assert r.stdout == expected(f"paper_{layout}.{SUFFIX[fmt]}", r.stdout)


def test_table1_groups_datasets_and_bolds_the_best_of_each_number(inputs) -> None:
    table = read_entries(inputs["table1"])
    assert table.layout == "table1" and table.datasets == ["mosi", "mosei"] and table.labels == ["KEBR", "Self-MM"]
    # On mosi KEBR has the better Acc-2, MAE (lower) and Corr, Self-MM the better Acc-7 and Acc-5 (metrics in
    # tests/paper_tables.py); mosei has one row: nothing to compare, nothing bold.
    assert best_labels(table, "mosi", "acc2_non0") == {"KEBR"} and best_labels(table, "mosi", "mae") == {"KEBR"}
    assert best_labels(table, "mosi", "acc7") == {"Self-MM"} and best_labels(table, "mosei", "mae") == set()
    kebr = table.entry("KEBR", "mosi").summary
    assert kebr["mae"][0] == pytest.approx(0.683) and kebr["mae"][1] == pytest.approx(0.02)  # sample std of ±0.02


def test_ties_are_all_bold_and_compared_as_printed(tmp_path: Path) -> None:
    base = metrics(0.80, 0.80, 0.40, 0.45, 0.700, 0.750)
    a = write_eval(tmp_path / "a", "/data/mosi.h5", base)
    b = write_eval(tmp_path / "b", "/data/mosi.h5", base | {"mae": 0.7003})  # prints 0.700 as well
    table = read_entries([f"{a}=A", f"{b}=B"])
    assert best_labels(table, "mosi", "mae") == {"A", "B"}
    # without labels the two KEBR rows are told apart by their folders
    assert read_entries([a, b]).labels == ["KEBR (a)", "KEBR (b)"]


def test_the_latex_compiles(inputs, tmp_path: Path) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-recommended)")
    for layout in ("table1", "table4"):
        r = runner.invoke(app, ["table", *inputs[layout], "--format", "latex"])
        doc = tmp_path / f"{layout}.tex"
        doc.write_text("\\documentclass{article}\n\\usepackage[margin=1cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
                       "\\usepackage{amssymb}\n\\begin{document}\n" + r.stdout + "\\end{document}\n", encoding="utf-8")
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]
        assert (tmp_path / f"{layout}.pdf").stat().st_size > 1000


def test_out_is_written_whole_and_refused_when_it_exists(inputs, tmp_path: Path) -> None:
    out = tmp_path / "table1.tex"
    r = runner.invoke(app, ["table", *inputs["table1"], "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text() == (DATA / "paper_table1.tex").read_text()
    out.write_text("mine")
    r = runner.invoke(app, ["table", *inputs["table1"], "-o", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output and out.read_text() == "mine"
    assert runner.invoke(app, ["table", *inputs["table1"], "-o", str(out), "--force"]).exit_code == 0
    assert out.read_text().startswith("% kebr table")
    # never onto an input, even with --force
    table_csv = inputs["table1"][2]
    before = Path(table_csv).read_text()
    r = runner.invoke(app, ["table", *inputs["table1"], "-f", "csv", "-o", table_csv, "--force"])
    assert r.exit_code == 1 and "also an input" in r.output and Path(table_csv).read_text() == before


@pytest.mark.parametrize("case, message", [
    ("format", "--format must be one of latex, markdown, csv, not 'html'."),
    ("not a run", "is not a KEBR run directory"),
    ("pretraining", "is a pretraining run, which has no test results to tabulate"),
    ("unfinished", "has no results.json yet"),
    ("foreign csv", "is not a kebr results table"),
    ("mixed", "make different tables; give one kind per kebr table."),
    ("missing", "does not exist"),
])
def test_bad_input_is_one_sentence_and_writes_nothing(inputs, tmp_path: Path, case: str, message: str) -> None:
    run = Path(inputs["table1"][0])
    args = {"format": [str(run), "--format", "html"], "not a run": [str(tmp_path / "plain")],
            "pretraining": [str(tmp_path / "pre")], "unfinished": [str(tmp_path / "unfinished")],
            "foreign csv": [str(tmp_path / "other.csv")], "mixed": [str(run), *inputs["table4"]],
            "missing": [str(tmp_path / "nowhere")]}[case]
    (tmp_path / "plain").mkdir()
    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "config.json").write_text('{"stage": "pretrain"}')
    shutil.copytree(run, tmp_path / "unfinished")
    (tmp_path / "unfinished" / "results.json").unlink()
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    out = tmp_path / "t.tex"
    r = runner.invoke(app, ["table", *args, "-o", str(out)])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) <= 2  # one sentence (Rich may wrap it once)
    assert not out.exists()


def test_a_run_given_as_folder_and_as_results_table_row_is_one_row(inputs) -> None:
    from kebr_core import results_files

    mosi, _, table = (Path(p) for p in inputs["table1"])
    before = read_entries([mosi]).entry("KEBR", "mosi").summary
    results_files.update_results_table(table, [results_files.ResultsRow("KEBR", "mosi", mosi, [0, 1, 2], before)])
    both = read_entries([mosi, table])
    assert both.labels == ["KEBR", "Self-MM"] and len(both.entries) == 2
    # its row in the results table finds the run's std convention (results.json's std_ddof)
    assert read_entries([table]).entry("KEBR", "mosi").std == "sample"


def test_evaluation_rows_are_named_by_what_ran(tmp_path: Path) -> None:
    """An evaluation without pretraining (the paper's C2) and a text-only one are not called "KEBR"
    (issue 27, item 4): the row says what ran, as `kebr eval` names it (row_names.model_name)."""
    base = metrics(0.80, 0.80, 0.40, 0.45, 0.700, 0.750)
    c1 = write_eval(tmp_path / "c1", "/data/mosi.h5", base)
    c2 = write_eval(tmp_path / "c2", "/data/mosi.h5", base, checkpoint=None)
    text = write_eval(tmp_path / "text", "/data/mosi.h5", base, inputs="text only")
    assert read_entries([c1, c2, text]).labels == ["KEBR", "KEBR w/o pretraining", "KEBR, text only"]
