"""A researcher's first day (issue 27, items 10 and 11): `inspect` on an unlabeled store, the note
`pretrain` prints about the test split on a labeled store without one, and `predict` naming the route from
own videos to a score when it refuses a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from kebr_cli.main import app
from kebr_core.data.store import Sample, StoreWriter
from tests.conftest import TINY_BERT, write_tiny_store

runner = CliRunner()
FAST = ["--text-model", TINY_BERT, "--batch-size", "8"]


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_inspect_says_unlabeled_without_an_empty_histogram(tmp_path: Path) -> None:
    store = write_tiny_store(tmp_path / "u.h5", n=12, labeled=False)
    r = runner.invoke(app, ["inspect", str(store)])
    assert r.exit_code == 0, r.output
    text = one_line(r.output)
    assert "labels: unlabeled (12 samples without a label): usable for pretraining" in text
    assert "class round(y)" not in text and "mean -" not in text and "std -" not in text
    labeled = runner.invoke(app, ["inspect", str(write_tiny_store(tmp_path / "l.h5", n=12))])
    assert "class round(y)" in labeled.output and "labels: 12 labeled (mean" in one_line(labeled.output)


def labeled_store_without_test(path: Path, n: int = 16) -> Path:
    """What `kebr extract --clip-labels` writes: labeled clips, every one in the train split."""
    rng = np.random.default_rng(0)
    with StoreWriter(path, [f"a{i}" for i in range(4)], [f"v{i}" for i in range(3)]) as w:
        for i in range(n):
            w.add(Sample(id=f"c{i}", text="i really like this movie", audio=rng.normal(size=(5, 4)).astype(np.float32),
                         vision=rng.normal(size=(3, 3)).astype(np.float32), label=float(i % 7 - 3), split="train"))
    return path


def test_pretrain_on_a_labeled_store_without_test_split_says_what_that_means(tmp_path: Path) -> None:
    store = labeled_store_without_test(tmp_path / "clips.h5")
    r = runner.invoke(app, ["pretrain", str(store), "-o", str(tmp_path / "pre"), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert (f"note: Pretraining uses all samples of {store} (labels unused): it has no test split to leave out, so a "
            "model later tested on its 16 labeled samples would have seen their inputs in pretraining (transductive)"
            ) in one_line(r.stderr)
    assert json.loads((tmp_path / "pre" / "config.json").read_text())["samples"] == 16
    # an unlabeled store: nothing to say about a test split
    unlabeled = write_tiny_store(tmp_path / "u.h5", n=16, labeled=False)
    r = runner.invoke(app, ["pretrain", str(unlabeled), "-o", str(tmp_path / "pre-u"), "--epochs", "1", *FAST])
    assert r.exit_code == 0, r.output
    assert "test split" not in one_line(r.stderr)
    # --splits leaving the test split of a store out says so, in the words of the default
    split = write_tiny_store(tmp_path / "s.h5", n=20)
    r = runner.invoke(app, ["pretrain", str(split), "-o", str(tmp_path / "pre-s"), "--epochs", "1", "--splits", "train",
                            *FAST])
    assert r.exit_code == 0, r.output
    assert f"note: Pretraining uses the train samples of {split} (labels unused; the test split is left out" in one_line(r.stderr)
