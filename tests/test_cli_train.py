"""The training commands through the real CLI: pretrain → checkpoint → eval → results; DDP; bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.model import KEBRModel
from kebr_core.metrics import METRIC_NAMES
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]


def test_pretrain_then_eval_writes_results(tiny_store: Path, tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(pre), "--epochs", "2", "--g", "0.1", *FAST])
    assert r.exit_code == 0, r.output
    assert (pre / "final" / "model.safetensors").exists()
    assert json.loads((pre / "config.json").read_text())["mcc"]["g"] == 0.1
    ev = tmp_path / "ev"
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "--pretrained", str(pre), "-o", str(ev), "--epochs", "2",
                            "--seeds", "2", *FAST])
    assert r.exit_code == 0, r.output
    results = json.loads((ev / "results.json").read_text())
    assert set(results["mean"]) == set(METRIC_NAMES) and results["seeds"] == [0, 1]
    assert "Acc-2" in r.output and "KEBR" in r.output
    # The fine-tuning used the pretrained geometry (g from the checkpoint's run is not forced, K is).
    assert json.loads((ev / "config.json").read_text())["checkpoint"].endswith("final")


def test_bf16_autocast_trains_both_stages_on_cpu(tiny_store: Path, tmp_path: Path, monkeypatch) -> None:
    """bf16 (the CUDA default) through the whole model: TCMF's packed FFN, attention, MCC, heads. Every
    forward (training steps, validation and test predictions) runs inside bf16 autocast, and the heads'
    last layer computes in float32 (bf16 would round every prediction; tests/test_precision.py)."""
    forwards: list[tuple[str, bool, torch.dtype, torch.dtype]] = []
    forward = KEBRModel.forward

    def recording_forward(self, batch, task="finetune", text_hidden=None):
        out = forward(self, batch, task=task, text_hidden=text_hidden)
        forwards.append((task, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.pred.dtype))
        return out

    monkeypatch.setattr(KEBRModel, "forward", recording_forward)
    pre, ev = tmp_path / "pre", tmp_path / "ev"
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(pre), "--epochs", "1", "--bf16", *FAST])
    assert r.exit_code == 0, r.output
    assert json.loads((pre / "config.json").read_text())["train"]["bf16"] is True
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "--pretrained", str(pre), "-o", str(ev), "--epochs", "1",
                            "--seeds", "1", "--bf16", *FAST])
    assert r.exit_code == 0, r.output
    assert np.isfinite(json.loads((ev / "results.json").read_text())["mean"]["mae"])
    bf16 = torch.bfloat16
    assert set(forwards) == {("pretrain", True, bf16, torch.float32), ("finetune", True, bf16, torch.float32)}


def test_pretrain_resume_through_cli(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "pre"
    assert runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), "--epochs", "1", *FAST]).exit_code == 0
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), "--epochs", "2", "--resume"])
    assert r.exit_code == 0, r.output
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs


@pytest.mark.parametrize(
    "args, message",
    [
        (["pretrain", "/nonexistent/store.h5"], "store.h5"),
        (["eval", "--dataset", "mosi", "--data-dir", "/nonexistent-kebr"], "No mosi data under"),
        (["pretrain", "STORE", "--g", "0.7"], "--g must lie in"),
        (["pretrain", "STORE", "--mcc-form", "nope"], "--mcc-form must be one of"),
        (["pretrain", "STORE", "--text-model", "/nonexistent/bert"], "could not be loaded"),
        (["pretrain", "STORE", "--device", "cuda"] if not __import__("torch").cuda.is_available() else ["pretrain", "STORE", "--device", "tpu"], "device"),
    ],
)
def test_bad_input_is_one_sentence(tiny_store: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [str(tiny_store) if a == "STORE" else a for a in args]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "out")] if args[0] == "pretrain" else args)
    assert r.exit_code == 1
    assert message in r.output
    assert "Traceback" not in r.output


def test_eval_on_unlabeled_store_fails_clearly(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "u.h5", labeled=False)
    r = runner.invoke(app, ["eval", "--dataset", str(store), "-o", str(tmp_path / "ev"), *FAST])
    assert r.exit_code == 1 and "no labeled 'train' samples" in r.output


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(tiny_store: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo processes reproduces 1 process up to float error (same global batches)."""
    common = ["eval", "--dataset", str(tiny_store), "--epochs", "2", "--seeds", "1", "--freeze-encoder",
              "--dropout", "0", "--device", "cpu", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "kebr_cli", *common, "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "kebr_cli", *common, "-o", str(tmp_path / "two"), "--nproc-per-node", "2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    for k in ("mae", "corr"):
        assert b["mean"][k] == pytest.approx(a["mean"][k], rel=1e-4, abs=1e-5)
    pa = np.loadtxt(tmp_path / "one" / "seed-0" / "predictions.csv", delimiter=",", skiprows=1, usecols=2)
    pb = np.loadtxt(tmp_path / "two" / "seed-0" / "predictions.csv", delimiter=",", skiprows=1, usecols=2)
    np.testing.assert_allclose(pb, pa, rtol=1e-4, atol=1e-5)


def test_pretrain_leaves_out_texts_without_words(tmp_path: Path) -> None:
    """A silent video's empty transcript has no word to mask: the sample is left out and counted, the run goes on;
    a store where no text has words is one sentence."""
    import h5py

    from kebr_core.data.store import Sample, StoreWriter

    store = write_tiny_store(tmp_path / "s.h5", n=20)
    with StoreWriter(store, [f"a{i}" for i in range(7)], [f"v{i}" for i in range(5)]) as w:
        for i, text in enumerate(["", " -- ", ""]):
            w.add(Sample(id=f"silent{i}", text=text, audio=np.ones((3, 7), np.float32),
                         vision=np.ones((2, 5), np.float32), label=0.0, split="train"))
    with h5py.File(store) as f:
        assert int(f["committed"][0]) == 23
    out = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(out), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output
    # 12 + 3 silent train, 4 valid (the 4 test samples are left out): 16 with words
    assert "pretrained on 16 sample(s) of split(s) train, valid, unlabeled; 3 without words" in " ".join(r.output.split())
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["samples"], cfg["samples_without_words"]) == (16, 3)

    silent = tmp_path / "silent.h5"
    with StoreWriter(silent, ["a0"], ["v0"]) as w:
        w.add(Sample(id="x", text="", audio=np.ones((3, 1), np.float32), vision=np.ones((2, 1), np.float32),
                     label=0.0, split="train"))
    r = runner.invoke(app, ["pretrain", str(silent), "-o", str(tmp_path / "p2"), "--epochs", "1", *FAST])
    assert r.exit_code != 0 and "has a word in its transcript" in r.output and "Traceback" not in r.output


def test_eval_std_convention_is_written_and_population_is_mmsas(tiny_store: Path, tmp_path: Path) -> None:
    """--std population gives MMSA's np.std (ddof=0) of the same per-seed results; both files say which."""
    runs = {}
    for std in ("sample", "population"):
        out = tmp_path / std
        r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-o", str(out), "--epochs", "1", "--seeds", "2",
                                "--std", std, "--freeze-encoder", "--layers", "1", *FAST])
        assert r.exit_code == 0, r.output
        assert f"{std} std (ddof={1 if std == 'sample' else 0})" in " ".join(r.output.split())
        runs[std] = json.loads((out / "results.json").read_text())
        assert runs[std]["std_ddof"] == (1 if std == "sample" else 0)
        assert (out / "results.csv").read_text().splitlines()[0].startswith("metric,unit,mean,std,std_ddof,seed_0")
    maes = [s["mae"] for s in runs["sample"]["per_seed"]]
    assert runs["sample"]["std"]["mae"] == pytest.approx(np.std(maes, ddof=1))
    assert runs["population"]["std"]["mae"] == pytest.approx(np.std(maes))  # MMSA: np.std(values)
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-o", str(tmp_path / "x"), "--std", "ddof1", *FAST])
    assert r.exit_code != 0 and "--std must be one of sample, population" in r.output


def test_pretrain_with_the_authors_alignment_and_pretraining_form(tiny_store: Path, tmp_path: Path) -> None:
    """Each of the authors' MCC variants runs by name: alignment `authors`, form `mean-cosine` (their
    pretraining settings g = 1/4, λ = 0.5)."""
    out = tmp_path / "pre"
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(out), "--epochs", "1", "--mcc-align", "authors",
                            "--mcc-form", "mean-cosine", "--g", "0.25", "--lambda-mcc", "0.5", "--layers", "1", *FAST])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())["mcc"]
    assert (cfg["align"], cfg["form"], cfg["g"], cfg["weight"]) == ("authors", "mean-cosine", 0.25, 0.5)
    header, row = (out / "metrics.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), map(float, row.split(","))))
    assert np.isfinite(values["mcc"]) and values["mcc"] > 0 and values["loss"] == pytest.approx(
        values["task_l1"] + 0.5 * values["mcc"])
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(tmp_path / "x"), "--mcc-align", "theirs", *FAST])
    assert r.exit_code != 0 and "--mcc-align must be one of tile, authors, projected" in r.output


def test_authors_preset_runs_both_stages_and_options_win(tiny_store: Path, tmp_path: Path) -> None:
    """--preset authors: pretraining with their mean-cosine form (g 0.25, λ 0.5, random word per epoch),
    fine-tuning with their reference form (g 0.4, λ 1), both with attention width 256 + projection,
    dropout 0.5, a 256-unit head; a typed option still wins over the preset."""
    pre, ev = tmp_path / "pre", tmp_path / "ev"
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(pre), "--preset", "authors", "--epochs", "2",
                            "--checkpoint-every", "100", *FAST])
    assert r.exit_code == 0, r.output
    cfg = json.loads((pre / "config.json").read_text())
    assert (cfg["mcc"]["form"], cfg["mcc"]["g"], cfg["mcc"]["weight"], cfg["train"]["random_word"]) == (
        "mean-cosine", 0.25, 0.5, "per-epoch")
    assert (cfg["model"]["attention_width"], cfg["model"]["dropout"], cfg["model"]["head_hidden"]) == (256, 0.5, 256)
    header, row = (pre / "metrics.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), map(float, row.split(","))))
    assert values["loss"] == pytest.approx(values["task_l1"] + 0.5 * values["mcc"])
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "--pretrained", str(pre), "-o", str(ev),
                            "--preset", "authors", "--epochs", "1", "--seeds", "1", "--head-hidden", "64", *FAST])
    assert r.exit_code == 0, r.output
    cfg = json.loads((ev / "config.json").read_text())
    assert (cfg["mcc"]["form"], cfg["mcc"]["g"], cfg["mcc"]["weight"], cfg["model"]["head_hidden"]) == (
        "reference", 0.4, 1.0, 64)
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(tmp_path / "x"), "--random-word", "sometimes", *FAST])
    assert r.exit_code != 0 and "--random-word must be one of fixed, per-epoch, not 'sometimes'." in r.output
    r = runner.invoke(app, ["pretrain", str(tiny_store), "-o", str(tmp_path / "x"), "--preset", "theirs", *FAST])
    assert r.exit_code != 0 and "--preset must be one of paper, authors, not 'theirs'." in r.output
