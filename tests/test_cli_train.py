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
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-c", str(pre), "-o", str(ev), "--epochs", "2",
                            "--seeds", "2", *FAST])
    assert r.exit_code == 0, r.output
    results = json.loads((ev / "results.json").read_text())
    assert set(results["mean"]) == set(METRIC_NAMES) and results["seeds"] == [0, 1]
    assert "Acc-2" in r.output and "KEBR" in r.output
    # The fine-tuning used the pretrained geometry (g from the checkpoint's run is not forced, K is).
    assert json.loads((ev / "config.json").read_text())["checkpoint"].endswith("final")


def test_bf16_autocast_trains_both_stages_on_cpu(tiny_store: Path, tmp_path: Path, monkeypatch) -> None:
    """bf16 (the CUDA default) through the whole model: TCMF's packed FFN, attention, MCC, heads. Every
    forward (training steps, validation and test predictions) runs inside bf16 autocast, and the heads
    compute in bf16."""
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
    r = runner.invoke(app, ["eval", "--dataset", str(tiny_store), "-c", str(pre), "-o", str(ev), "--epochs", "1",
                            "--seeds", "1", "--bf16", *FAST])
    assert r.exit_code == 0, r.output
    assert np.isfinite(json.loads((ev / "results.json").read_text())["mean"]["mae"])
    bf16 = torch.bfloat16
    assert set(forwards) == {("pretrain", True, bf16, bf16), ("finetune", True, bf16, bf16)}


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
