"""What a run says about itself, through the real commands (issue 27, items 2–6): --threads and the
oversubscribed machine, the configuration printed = logged = recorded = trained, text-only stores named,
row names, seeds added to a finished run, and the results files' split numeric columns in one unit."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core import runs
from kebr_core.errors import KebrError
from kebr_core.metrics import METRIC_NAMES
from kebr_core.results_files import row_summary
from kebr_core.threads import plan_threads
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8", "--layers", "1"]
EVAL = ["--epochs", "1", "--freeze-encoder", *FAST]


def settings_logged(run: Path) -> dict:
    line = next(x for x in (run / "log.txt").read_text().splitlines() if " settings: " in x)
    return json.loads(line.split(" settings: ", 1)[1])


def table_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ── item 2: --threads ──


def test_thread_rule_all_usable_cpus_on_a_quiet_machine_one_on_an_oversubscribed_one(monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 0.0, 0.0))  # 3 runnable on 8 cores: quiet
    plan = plan_threads(None)
    assert (plan.threads, plan.cpus, plan.busy) == (4, 4, None)  # the affinity set, not the machine's 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two DDP processes here share the 4
    assert plan_threads(None).threads == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (12.5, 0.0, 0.0))  # 12.5 runnable on 8 cores
    busy = plan_threads(None)
    assert busy.threads == 1 and busy.busy == "load 12.5 on 8 cores"
    assert plan_threads(3).threads == 3  # typed: taken as given, busy or not
    assert "machine oversubscribed: load 12.5 on 8 cores" in busy.describe()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's pin wins over the rule
    assert plan_threads(None).threads == 3 and "(OMP_NUM_THREADS)" in plan_threads(None).describe()


def test_threads_option_sets_torch_threads_says_oversubscribed_and_keeps_the_identity(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    store = write_tiny_store(tmp_path / "tiny.h5", n=30)
    seen: list[int] = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), set_threads(n)))
    before = torch.get_num_threads()
    pre = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(pre), "--epochs", "1", "--threads", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert seen[0] == 1 and torch.get_num_threads() == before  # set for the run, put back after it
    assert "threads: 1 of" in (pre / "log.txt").read_text()
    # Another thread count continues the same run (not part of its identity); the machine now oversubscribed.
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the rule, not the tests' pin
    cores = os.cpu_count()
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(pre), "--epochs", "2", "--resume", *FAST])
    assert r.exit_code == 0, r.output
    assert seen[-2] == 1  # the default on an oversubscribed machine (then the setting before is put back)
    text = " ".join(r.stderr.split())
    assert "threads: 1 of" in text and f"machine oversubscribed: load 99.0 on {cores} core" in text
    assert "pretrain epoch 2/2:" in text and f"· machine oversubscribed (load 99.0 on {cores} core" in text
    assert len((pre / "metrics.csv").read_text().splitlines()) == 1 + 2  # resumed, not restarted: epochs 1 and 2
    for command in ("pretrain", "eval", "ablate", "tune", "demo"):
        assert "--threads" in runner.invoke(app, [command, "--help"], terminal_width=200).output


# ── item 3: the configuration printed, logged and recorded is the one trained; text-only stores ──


def test_print_config_log_and_config_json_agree_with_the_store(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "wide.h5", n=30, d_audio=7, d_vision=35)
    for command in (["eval", "-d", str(store)], ["pretrain", str(store)], ["tune", "-d", str(store)]):
        r = runner.invoke(app, [*command, "--print-config", "--text-model", TINY_BERT])
        assert r.exit_code == 0, r.output
        model = json.loads(r.stdout)["model"]
        assert (model["d_audio"], model["d_vision"]) == (7, 35), command
    r = runner.invoke(app, ["ablate", "-d", str(store), "--print-config", "--text-model", TINY_BERT])
    assert {stage: (c["model"]["d_audio"], c["model"]["d_vision"]) for stage, c in json.loads(r.stdout).items()} == {
        "pretrain": (7, 35), "finetune": (7, 35)}
    run = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(run), "--seeds", "1", *EVAL])
    assert r.exit_code == 0, r.output
    recorded = json.loads((run / "config.json").read_text())
    assert settings_logged(run)["model"] == recorded["model"] and recorded["model"]["d_vision"] == 35


def test_a_text_only_store_is_named_in_the_caption_the_row_and_the_results(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "mosi.h5", n=30, d_audio=0, d_vision=0, no_streams=True)
    r = runner.invoke(app, ["eval", "-d", str(store), "--print-config", *FAST])
    assert (json.loads(r.stdout)["model"]["d_audio"], json.loads(r.stdout)["model"]["d_vision"]) == (1, 1)
    run = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(run), "--seeds", "1", *EVAL], terminal_width=200)
    assert r.exit_code == 0, r.output
    out = " ".join(r.stdout.split())
    assert "text only: the store has no audio or vision features" in out  # the caption
    assert "KEBR w/o pretraining, text only (mosi)" in out  # the row
    recorded = json.loads((run / "config.json").read_text())["model"]
    assert (recorded["d_audio"], recorded["d_vision"]) == (1, 1) == tuple(
        settings_logged(run)["model"][k] for k in ("d_audio", "d_vision"))
    assert json.loads((run / "results.json").read_text())["inputs"] == "text only"
    [row] = table_rows(tmp_path / runs.RESULTS_TABLE)
    assert (row["Model"], row["Inputs"]) == ("KEBR w/o pretraining, text only (mosi)", "text only")


# ── item 4: row names ──


def test_rows_are_named_by_what_ran_or_by_name(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "tiny.h5", n=30)
    pre = tmp_path / "pre"
    assert runner.invoke(app, ["pretrain", str(store), "-o", str(pre), "--epochs", "1", *FAST]).exit_code == 0
    common = ["eval", "-d", str(store), "--seeds", "1", *EVAL]
    r = runner.invoke(app, [*common, "-o", str(tmp_path / "c1"), "--pretrained", str(pre)], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "KEBR (tiny)" in r.stdout
    r = runner.invoke(app, [*common, "-o", str(tmp_path / "c2")], terminal_width=200)
    assert "KEBR w/o pretraining (tiny)" in r.stdout
    r = runner.invoke(app, [*common, "-o", str(tmp_path / "mine"), "--name", "my baseline"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "my baseline" in r.stdout
    names = {Path(row["Run"]).name: row["Model"] for row in table_rows(tmp_path / runs.RESULTS_TABLE)}
    assert names == {"c1": "KEBR (tiny)", "c2": "KEBR w/o pretraining (tiny)", "mine": "my baseline"}


# ── item 5: seeds grow ──


def test_more_seeds_run_only_the_new_ones_fewer_report_on_those(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "tiny.h5", n=30)
    run = tmp_path / "ev"
    args = ["eval", "-d", str(store), "-o", str(run), *EVAL]
    assert runner.invoke(app, [*args, "--seeds", "2"]).exit_code == 0
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("seed-*/*")}
    r = runner.invoke(app, [*args, "--seeds", "3"])
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # seeds 0 and 1 reused, not rerun
    assert (run / "seed-2" / "test.json").is_file()
    results = json.loads((run / "results.json").read_text())
    assert results["seeds"] == [0, 1, 2] and len(results["per_seed"]) == 3
    assert json.loads((run / "config.json").read_text())["train"]["seeds"] == [0, 1, 2]
    # Fewer: the subset's summary, nothing trained, the record keeps every seed.
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("seed-*/*")}
    r = runner.invoke(app, [*args, "--seeds", "0,2"])
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    results = json.loads((run / "results.json").read_text())
    per_seed = {s: json.loads((run / f"seed-{s}" / "test.json").read_text())["test"]["mae"] for s in (0, 2)}
    assert results["seeds"] == [0, 2] and results["mean"]["mae"] == pytest.approx(sum(per_seed.values()) / 2)
    assert json.loads((run / "config.json").read_text())["train"]["seeds"] == [0, 1, 2]
    # Other settings are still another run (the identity guard stays).
    r = runner.invoke(app, [*args, "--seeds", "4", "--g", "0.3"])
    assert r.exit_code == 1 and "mcc.g (0.2 → 0.3)" in r.stderr and not (run / "seed-3").exists()
    # --help says so (the option's help as the command renders it).
    seeds_help = next(p.help for p in get_command(app).commands["eval"].params if p.name == "seeds")
    assert "more seeds than a finished run has run only the new ones, fewer report on those asked for" in seeds_help


# ── item 6: results files ──


def test_results_files_hold_numeric_mean_and_std_in_percent_and_read_the_old_table(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "tiny.h5", n=30)
    table = tmp_path / "table.csv"
    old_header = "Model,Dataset,Has0_acc_2,Has0_F1_score,Non0_acc_2,Non0_F1_score,Mult_acc_5,Mult_acc_7,MAE,Corr,Seeds,Run"
    table.write_text(old_header + '\nKEBR,mosi,"(77.7, 1.03)","(77.6, 1.0)","(78.9, 0.88)","(78.8, 0.9)",'
                     '"(45.1, 1.2)","(40.2, 1.1)","(0.7412, 0.012)","(0.7801, 0.004)","0,1,2",/old/run\n')
    run = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(run), "--seeds", "2", "--results-table", str(table),
                            *EVAL])
    assert r.exit_code == 0, r.output
    results = json.loads((run / "results.json").read_text())  # JSON: fractions
    old, new = table_rows(table)
    assert (old["Model"], old["Run"], float(old["MAE_mean"]), old["Inputs"]) == ("KEBR", "/old/run", 0.7412, "")
    assert float(old["Has0_acc_2_mean_pct"]) == 77.7 and float(old["Has0_acc_2_std_pct"]) == 1.03
    assert float(old["Non0_acc_2_mean_pct"]) == 78.9 and float(old["Corr_std"]) == 0.004
    assert float(new["Non0_acc_2_mean_pct"]) == pytest.approx(100 * results["mean"]["acc2_non0"], abs=0.005)
    assert float(new["MAE_std"]) == pytest.approx(results["std"]["mae"], abs=5e-5)
    # A reader gets fractions back, as the JSON files hold them.
    assert row_summary(old, "table.csv line 2")["acc2_non0"] == pytest.approx((0.789, 0.0088))
    assert row_summary(new, "table.csv line 3")["mae"] == pytest.approx((float(new["MAE_mean"]), float(new["MAE_std"])))
    with pytest.raises(KebrError, match=r"table.csv line 2: MAE_mean must be a number, not 'x'"):
        row_summary(old | {"MAE_mean": "x"}, "table.csv line 2")
    # results.csv: the unit named per row, accuracies and F1 in percent.
    with (run / "results.csv").open() as f:
        lines = {row["metric"]: row for row in csv.DictReader(f)}
    for k in METRIC_NAMES:
        scale, unit = (1, "") if k in ("mae", "corr") else (100, "percent")
        assert lines[k]["unit"] == unit and float(lines[k]["mean"]) == pytest.approx(scale * results["mean"][k])
        assert float(lines[k]["seed_1"]) == pytest.approx(scale * results["per_seed"][1][k])
    # A CSV that is no results table is refused in one sentence, and left as it was.
    foreign = tmp_path / "mine.csv"
    foreign.write_text("Model,Score\nbaseline,1\n")
    r = runner.invoke(app, ["eval", "-d", str(store), "-o", str(run), "--seeds", "2", "--results-table", str(foreign),
                            *EVAL])
    assert r.exit_code == 1 and "is not a kebr results table" in r.stderr and "Traceback" not in r.output
    assert foreign.read_text() == "Model,Score\nbaseline,1\n"


def test_ablate_names_a_text_only_store_and_its_rows(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "words.h5", n=30, d_audio=0, d_vision=0, no_streams=True)
    out = tmp_path / "abl"
    r = runner.invoke(app, ["ablate", "-d", str(store), "-o", str(out), "--no-pretrain", "--pretrain-epochs", "1",
                            "--seeds", "1", *EVAL], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "text only: the store has no audio or vision features" in " ".join(r.stdout.split())
    assert json.loads((out / "ablation.json").read_text())["inputs"] == "text only"
    assert {row["inputs"] for row in table_rows(out / "results.csv")} == {"text only"}
    rows = table_rows(tmp_path / runs.RESULTS_TABLE)
    assert [(row["Model"], row["Inputs"]) for row in rows] == [("C1 (words)", "text only"), ("C2 (words)", "text only")]
    r = runner.invoke(app, ["ablate", "-d", str(store), "-o", str(out), "--no-pretrain", "--pretrain-epochs", "1",
                            "--seeds", "1", "--name", "words study", *EVAL])
    assert r.exit_code == 0, r.output  # nothing new to run; the rows get their new names
    assert [row["Model"] for row in table_rows(tmp_path / runs.RESULTS_TABLE)] == ["words study: C1", "words study: C2"]
