"""Shared fixtures: tiny labeled feature stores and the tiny random BERT used by fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_BERT = "random-bert:hidden=32,layers=2,heads=2"
# 328 real rows of CMU-MOSI's MMSA label.csv, in the repository (tests/data/make_mosi_sample.py says
# which): every split, zero labels, x.5 labels, ±3.
MOSI_SAMPLE = Path(__file__).resolve().parent / "data" / "mosi_sample.csv"
# The whole file, for the checks that need all 2199 rows: only where $KEBR_MOSI_LABELS names it.
MOSI_LABELS = Path(os.environ["KEBR_MOSI_LABELS"]) if os.environ.get("KEBR_MOSI_LABELS") else None
needs_full_mosi = pytest.mark.skipif(
    MOSI_LABELS is None or not MOSI_LABELS.is_file(),
    reason="the full CMU-MOSI label.csv is not here: set KEBR_MOSI_LABELS to MMSA's mosi/label.csv to run this check",
)
TEXTS = [
    "it was a great movie", "i hate this so much", "the plot was okay i guess", "what a wonderful day",
    "this is terrible and boring", "i like the actors", "the ending made me sad", "nothing special here",
]


def write_tiny_store(path: Path, n: int = 60, d_audio: int = 7, d_vision: int = 5, seed: int = 0,
                     audio_value: float | None = None, labeled: bool = True, no_streams: bool = False,
                     no_audio: bool = False, dataset: str = "") -> Path:
    """A small store whose audio carries the label (so training has something to learn). audio_value: every
    audio value; no_audio: no audio frames (the same random draws otherwise, so stores differ only there);
    dataset: the catalog entry it is made for (recorded in the store)."""
    from kebr_core.data.store import Sample, StoreWriter

    rng = np.random.default_rng(seed)
    splits = ["train", "train", "train", "valid", "test"]
    with StoreWriter(path, [f"a{i}" for i in range(d_audio)], [f"v{i}" for i in range(d_vision)], dataset=dataset) as w:
        for i in range(n):
            label = float(np.round(rng.uniform(-3, 3), 1))
            la = 0 if no_streams else int(rng.integers(1, 20))
            lv = 0 if no_streams else int(rng.integers(1, 9))
            audio = rng.normal(size=(la, d_audio)).astype(np.float32) + 0.3 * label
            if audio_value is not None:
                audio[:] = audio_value
            if no_audio:
                audio = audio[:0]
            w.add(Sample(
                id=f"s{i:03d}", text=TEXTS[i % len(TEXTS)], audio=audio,
                vision=rng.normal(size=(lv, d_vision)).astype(np.float32),
                label=label if labeled else float("nan"), split=splits[i % 5] if labeled else "unlabeled",
            ))
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip, with the reason, where PyTorch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (bench/gpu.sh runs the cuda-marked tests)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_thread_for_kebr_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kebr command a test runs plans one PyTorch thread (OMP_NUM_THREADS=1, which `plan_threads` takes as
    the user's pin, and child processes inherit). Without it the default follows the machine's load average, so
    two runs of one test may compute at different thread counts and differ in the last float bits (CI: a
    results-equal check failed at 1e-8). Tests of the rule itself remove the pin (`monkeypatch.delenv`)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_store(tmp_path: Path) -> Path:
    return write_tiny_store(tmp_path / "tiny.h5")


@pytest.fixture
def ticking_cli_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress as a CI log shows it (plain lines, no bars), with a clock of `kebr_cli.reporter` alone that reads
    2 s later at every look: with --verbose (a line per stage every second) every progress event prints."""
    import time

    import kebr_cli.reporter as cli_reporter

    class Ticking:
        now = 0.0

        def monotonic(self) -> float:
            self.now += 2.0
            return self.now

        def __getattr__(self, name: str):
            return getattr(time, name)

    monkeypatch.setattr(cli_reporter, "time", Ticking())
    monkeypatch.setattr(cli_reporter, "show_progress", lambda: False)
