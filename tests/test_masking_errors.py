"""Masking refuses, in one sentence, the tokenizers it cannot work with: a slow (pure-Python) tokenizer,
which cannot map wordpieces back to words, and one without a mask token."""

from __future__ import annotations

import pytest

from kebr_core.errors import KebrError
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_batch, mask_sentiment_word
from kebr_core.text_encoder import embedded_model_dir, load_tokenizer


def slow_tokenizer():
    """The embedded MiniLM vocabulary in transformers' pure-Python BERT tokenizer."""
    try:  # transformers ≥ 5 keeps the Python implementation under this name
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as SlowBert
    except ImportError:  # transformers 4: BertTokenizer is the Python one
        from transformers import BertTokenizer as SlowBert
    tokenizer = SlowBert.from_pretrained(embedded_model_dir())
    assert not tokenizer.is_fast and tokenizer.mask_token_id is not None
    return tokenizer


def test_slow_tokenizer_is_refused() -> None:
    tokenizer = slow_tokenizer()
    for mask in (lambda: mask_sentiment_word("a great movie", tokenizer, load_lexicon(), 50, rng=0),
                 lambda: mask_batch(["a great movie"], tokenizer, load_lexicon(), 50, seed=0)):
        with pytest.raises(KebrError, match=r"^Tokenizer \w+ is not a fast tokenizer, which masking needs to map "
                                            r"wordpieces to words\.$"):
            mask()


def test_tokenizer_without_mask_token_is_refused() -> None:
    tokenizer = load_tokenizer("embedded")
    tokenizer.mask_token = None
    assert tokenizer.is_fast and tokenizer.mask_token_id is None
    with pytest.raises(KebrError, match=r"^Tokenizer \w+ has no mask token\.$"):
        mask_batch(["a great movie"], tokenizer, load_lexicon(), 50, seed=0)
