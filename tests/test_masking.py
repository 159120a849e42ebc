"""Sentiment lexicon and sentiment-knowledge masking (paper §3.2, docs/design.md §4), with the real MiniLM tokenizer
(its vocabulary as the repository keeps it for random BERTs, `RANDOM_BERT_TOKENIZER`: the MiniLM package is not needed)."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from kebr_core.errors import KebrError  # noqa: E402
from kebr_core.lexicon import load_lexicon, vader_lexicon_path  # noqa: E402
from kebr_core.masking import (  # noqa: E402
    MaskedText,
    mask_batch,
    mask_sentiment_word,
    split_words,
    tokenize_plain,
)
from kebr_core.text_encoder import RANDOM_BERT_TOKENIZER  # noqa: E402

from tests.conftest import MOSI_LABELS, MOSI_SAMPLE, needs_full_mosi  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(RANDOM_BERT_TOKENIZER)


@pytest.fixture(scope="module")
def lex() -> dict[str, float]:
    return load_lexicon()


def raw_vader_mean(token: str) -> float:
    """The mean column of the LAST line for `token` in VADER's file, read independently of load_lexicon."""
    mean = None
    with open(vader_lexicon_path(), encoding="utf-8", newline="") as f:
        for line in f:
            fields = line.rstrip("\r\n").split("\t")
            if fields[0] == token:
                mean = float(fields[1])
    assert mean is not None, token
    return mean


def pieces(tok, word: str) -> list[int]:
    return tok(word, add_special_tokens=False)["input_ids"]


def assert_masked_spans(m: MaskedText, tok, max_length: int, n_pieces: int | None = None) -> None:
    """The masked positions are exactly the mask tokens, inside [CLS] … [SEP], the first occurrence's
    pieces contiguous from mask_pos; with n_pieces, every occurrence is a whole run of n_pieces masks."""
    ids = m.input_ids
    assert len(ids) <= max_length
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert m.mask_positions == sorted(m.mask_positions) and m.mask_pos == m.mask_positions[0]
    assert 0 < m.mask_positions[0] and m.mask_positions[-1] < len(ids) - 1  # inside [CLS] ... [SEP]
    assert [i for i, t in enumerate(ids) if t == tok.mask_token_id] == m.mask_positions  # no other mask
    if n_pieces is not None and m.mask_positions[-1] < len(ids) - 2:  # the last run is not cut by the window
        runs = [[]]
        for a, b in zip(m.mask_positions, m.mask_positions[1:] + [None]):
            runs[-1].append(a)
            if b is not None and b != a + 1:
                runs.append([])
        assert all(len(r) % n_pieces == 0 for r in runs)



# ----------------------------------------------------------------------------------------------- lexicon


def test_lexicon_scale_from_raw_file_line(lex):
    for word in ["unlovable", "great", "like", "abandon", "good"]:
        assert lex[word] == pytest.approx(raw_vader_mean(word) * 0.75, abs=1e-12)
    assert lex["unlovable"] == pytest.approx(-2.7 * 0.75)
    assert all(-3.0 <= v <= 3.0 for v in lex.values())


def test_lexicon_real_duplicates_later_wins(lex):
    # "ok" appears twice in VADER (1.6, then 1.2); the later line wins.
    assert lex["ok"] == pytest.approx(1.2 * 0.75)
    assert lex["ok"] == pytest.approx(raw_vader_mean("ok") * 0.75)


def test_lexicon_default_is_cached_but_returned_as_a_copy(lex):
    first = load_lexicon()
    first["great"] = 99.0
    assert load_lexicon()["great"] == pytest.approx(3.1 * 0.75)


def test_user_lexicon_duplicate_key_later_wins(tmp_path):
    p = tmp_path / "lex.txt"
    p.write_text("happy\t2.0\t0.5\t[2, 2]\nsad\t-2.0\nhappy\t-4.0\t0.1\t[-4]\r\n\n", encoding="utf-8")
    assert load_lexicon(p) == {"happy": -3.0, "sad": -1.5}


@pytest.mark.parametrize(
    "content, needle",
    [
        ("good\t1.0\nno tab here\n", "line 2"),
        ("good\t1.0\nbad\tminus two\n", "line 2"),
        ("good\t1.0\nbad\t-4.5\n", "line 2"),
        ("good\tnan\n", "line 1"),
        ("\t1.0\n", "line 1"),
        ("\n\n", "no entries"),
    ],
)
def test_bad_lexicon_file_raises(tmp_path, content, needle):
    p = tmp_path / "bad_lexicon.txt"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(KebrError) as err:
        load_lexicon(p)
    assert str(p) in str(err.value) and needle in str(err.value)


def test_missing_or_binary_lexicon_raises(tmp_path):
    with pytest.raises(KebrError, match="does not exist"):
        load_lexicon(tmp_path / "nope.txt")
    p = tmp_path / "binary.txt"
    p.write_bytes(b"\x80\x00bad\xff")  # no byte-order mark (\xff\xfe would make it UTF-16): not text
    with pytest.raises(KebrError, match="UTF-8"):
        load_lexicon(p)


# ---------------------------------------------------------------------------------------------- splitting


def test_split_words_mosi_style_and_punctuation():
    assert split_words("I DON'T LIKE IT!!") == ["i", "don't", "like", "it"]
    assert split_words("it's GREAT.") == ["it's", "great"]
    assert split_words("AND ITS (umm) sp REALLY -- \"FUNNY\"") == ["and", "its", "umm", "sp", "really", "funny"]
    assert split_words("well-made, isn\u2019t it?") == ["well-made", "isn't", "it"]
    assert split_words("  !! ... ") == []


# ------------------------------------------------------------------------------------------------ masking


def test_multi_piece_word_masked_across_all_pieces(tok, lex):
    word_pieces = pieces(tok, "unlovable")
    assert len(word_pieces) >= 2  # the point of the test: un ##lova ##ble
    m = mask_sentiment_word("SUCH AN UNLOVABLE PERSON", tok, lex, max_length=50, rng=0)
    assert m.word == "unlovable" and m.from_lexicon
    assert m.label == pytest.approx(raw_vader_mean("unlovable") * 0.75)
    assert len(m.mask_positions) == len(word_pieces)
    assert_masked_spans(m, tok, 50)
    assert not set(word_pieces) & set(m.input_ids)  # no piece of the word survives
    assert tok.decode(m.input_ids, skip_special_tokens=False) == "[CLS] such an [MASK] [MASK] [MASK] person [SEP]"
    # Unmasked, the same positions hold exactly the word's pieces.
    plain = tokenize_plain(["SUCH AN UNLOVABLE PERSON"], tok, 50)[0]
    assert [plain[p] for p in m.mask_positions] == word_pieces
    assert [t for i, t in enumerate(plain) if i not in m.mask_positions] == [
        t for i, t in enumerate(m.input_ids) if i not in m.mask_positions
    ]


def test_strongest_word_wins_and_label_is_scaled(tok, lex):
    # good 1.9, terrible -2.1, awesome 3.1: |3.1| is largest although it is last.
    m = mask_sentiment_word("good and terrible but awesome", tok, lex, 50, rng=0)
    assert m.word == "awesome" and m.label == pytest.approx(raw_vader_mean("awesome") * 0.75)
    m = mask_sentiment_word("good and terrible", tok, lex, 50, rng=0)
    assert m.word == "terrible" and m.label == pytest.approx(raw_vader_mean("terrible") * 0.75)
    assert m.label < 0


def test_ties_pick_first_occurrence(tok, lex):
    assert abs(lex["good"]) == abs(lex["abandon"]) == abs(lex["funny"])  # 1.9 × 0.75 each
    m = mask_sentiment_word("i abandon good ideas", tok, lex, 50, rng=0)
    assert (m.word, m.mask_pos) == ("abandon", 2)
    m = mask_sentiment_word("good ideas i abandon", tok, lex, 50, rng=0)
    assert (m.word, m.mask_pos) == ("good", 1)


def test_every_occurrence_of_the_word_is_masked(tok, lex):
    # "GOOD QUITE GOOD": a visible second "good" would let the model copy the answer.
    m = mask_sentiment_word("GOOD QUITE GOOD", tok, lex, 50, rng=0)
    assert tok.convert_ids_to_tokens(m.input_ids) == ["[CLS]", "[MASK]", "quite", "[MASK]", "[SEP]"]
    assert (m.word, m.mask_pos, m.mask_positions) == ("good", 1, [1, 3])
    assert m.label == pytest.approx(raw_vader_mean("good") * 0.75)
    # A multi-piece word twice: every piece of both occurrences, prediction at the first piece.
    n = len(pieces(tok, "unlovable"))
    m = mask_sentiment_word("so unlovable and unlovable again", tok, lex, 50, rng=0)
    assert m.mask_positions == list(range(2, 2 + n)) + list(range(3 + n, 3 + 2 * n))
    assert not set(pieces(tok, "unlovable")) & set(m.input_ids)
    assert_masked_spans(m, tok, 50, n_pieces=n)
    # Ties between different words still pick the first; its later copies are masked, the other word not.
    m = mask_sentiment_word("funny good funny", tok, lex, 50, rng=0)
    assert tok.convert_ids_to_tokens(m.input_ids) == ["[CLS]", "[MASK]", "good", "[MASK]", "[SEP]"]
    # A random word (no lexicon word) is masked at every occurrence too, predicted at its first.
    for seed in range(8):
        m = mask_sentiment_word("the table and the chair", tok, lex, 50, rng=seed)
        assert not m.from_lexicon and m.label == 0.0
        expected = {"the": [1, 4], "table": [2], "and": [3], "chair": [5]}[m.word]
        assert m.mask_positions == expected and m.mask_pos == expected[0]


def test_truncation_keeps_the_first_occurrence_and_drops_copies_outside(tok, lex):
    filler = " ".join(f"word{i}" for i in range(30))
    m = mask_sentiment_word(f"{filler} good then good", tok, lex, 8, rng=0)  # room for 6 pieces
    # shifted to end with the first "good": the later copy falls outside the window
    assert m.mask_positions == [6] and m.input_ids[6] == tok.mask_token_id and len(m.input_ids) == 8
    m = mask_sentiment_word("good then good " + filler, tok, lex, 8, rng=0)  # both copies in the window
    assert m.mask_positions == [1, 3]


def test_no_lexicon_word_masks_one_random_word_reproducibly(tok, lex):
    text = "the wooden table stood near the kitchen window of grandmother"
    words = split_words(text)
    assert not any(w in lex for w in words)  # precondition: truly no sentiment word
    full = tokenize_plain([text], tok, 50)[0]
    chosen = []
    for seed in range(12):
        m = mask_sentiment_word(text, tok, lex, 50, rng=seed)
        assert m.label == 0.0 and not m.from_lexicon and m.word in words
        assert_masked_spans(m, tok, 50)
        # Exactly that word's pieces are masked ("the" twice), nothing else changed.
        assert [full[p] for p in m.mask_positions] == pieces(tok, m.word) * words.count(m.word)
        assert len(m.input_ids) == len(full)
        assert mask_sentiment_word(text, tok, lex, 50, rng=seed) == m  # same seed, same result
        assert mask_sentiment_word(text, tok, lex, 50, rng=random.Random(seed)) == m
        chosen.append(m.mask_pos)
    assert len(set(chosen)) >= 4  # different seeds pick different words


def test_upper_case_contractions_and_punctuation(tok, lex):
    m = mask_sentiment_word("I DON'T LIKE IT!!", tok, lex, 50, rng=0)
    assert m.word == "like" and m.label == pytest.approx(1.5 * 0.75)
    assert tok.convert_ids_to_tokens(m.input_ids) == ["[CLS]", "i", "don", "'", "t", "[MASK]", "it", "[SEP]"]
    m = mask_sentiment_word("it's GREAT.", tok, lex, 50, rng=0)
    assert m.word == "great" and m.label == pytest.approx(3.1 * 0.75)
    assert tok.convert_ids_to_tokens(m.input_ids) == ["[CLS]", "it", "'", "s", "[MASK]", "[SEP]"]
    assert_masked_spans(m, tok, 50)


def test_truncation_keeps_masked_word_near_the_end(tok, lex):
    filler = [f"word{i}" for i in range(40)]  # neutral words, several pieces each
    assert not any(w in lex for w in filler)
    text = " ".join(filler + ["unlovable", "indeed"])
    full = tokenize_plain([text], tok, 10_000)[0]
    n_word = len(pieces(tok, "unlovable"))
    for max_length in [8, 16, 33, 64]:
        m = mask_sentiment_word(text, tok, lex, max_length, rng=0)
        assert m.word == "unlovable" and len(m.input_ids) == max_length
        assert_masked_spans(m, tok, max_length)
        assert len(m.mask_positions) == n_word
        # Shifted just enough: the window ends with the masked word, then [SEP].
        assert m.mask_positions[-1] == max_length - 2
        # The kept pieces are a contiguous piece of the untruncated sequence.
        room = max_length - 2
        end_in_full = full.index(pieces(tok, "unlovable")[0]) + n_word  # exclusive, incl. [CLS]
        assert m.input_ids[1:-1 - n_word] == full[end_in_full - room : end_in_full - n_word]
    # When everything fits there is no shift: same length as the plain sequence.
    m = mask_sentiment_word(text, tok, lex, len(full), rng=0)
    assert len(m.input_ids) == len(full) and m.input_ids[: m.mask_pos] == full[: m.mask_pos]


def test_truncation_without_shift_when_word_is_early(tok, lex):
    text = "awesome " + " ".join(f"word{i}" for i in range(40))
    m = mask_sentiment_word(text, tok, lex, 12, rng=0)
    assert m.mask_positions == [1] and len(m.input_ids) == 12
    assert m.input_ids[2:-1] == tokenize_plain([text], tok, 12)[0][2:-1]


def test_word_longer_than_window_keeps_its_first_pieces(tok, lex):
    m = mask_sentiment_word("so unlovable", tok, lex, max_length=4, rng=0)  # room for 2 of 3 pieces
    assert m.input_ids == [tok.cls_token_id, tok.mask_token_id, tok.mask_token_id, tok.sep_token_id]
    assert m.mask_positions == [1, 2]


def test_errors_empty_text_and_tiny_max_length(tok, lex):
    with pytest.raises(KebrError, match="no words"):
        mask_sentiment_word("  ?! ", tok, lex, 50, rng=0)
    with pytest.raises(KebrError, match=r"#1 .*no words"):
        mask_batch(["good", ""], tok, lex, 50, seed=0)
    # skip_empty: a text without words gives None; the others are masked as without it
    out = mask_batch(["good", "", " -- ", "bad"], tok, lex, 50, seed=0, skip_empty=True)
    assert out[1] is None and out[2] is None
    assert out[0] == mask_batch(["good"], tok, lex, 50, seed=0)[0] and out[3].word == "bad"
    with pytest.raises(KebrError, match="max_length=2"):
        mask_sentiment_word("good", tok, lex, 2, rng=0)
    with pytest.raises(KebrError, match="max_length=2"):
        tokenize_plain(["good"], tok, 2)


def test_mask_batch_deterministic_and_independent_of_other_texts(tok, lex):
    neutral = "the wooden table stood near the kitchen window of grandmother"
    texts = [neutral, "it was GREAT", neutral, neutral + " today"]
    a = mask_batch(texts, tok, lex, 50, seed=3)
    assert a == mask_batch(texts, tok, lex, 50, seed=3)
    assert a[1].word == "great" and a[1].from_lexicon and not a[0].from_lexicon
    # Text 2 gets the same result whatever the other texts are.
    other = mask_batch(["x y z", "hello", neutral], tok, lex, 50, seed=3)
    assert other[2] == a[2]
    # Over several seeds the random choice for the neutral text varies.
    picks = {mask_batch([neutral], tok, lex, 50, seed=s)[0].mask_pos for s in range(12)}
    assert len(picks) >= 4
    assert mask_batch([], tok, lex, 50, seed=0) == []


def test_tokenize_plain_truncates_and_matches_split_words(tok):
    out = tokenize_plain(["I DON'T LIKE IT!!", "one two three four five six"], tok, 5)
    assert out[0] == tok(["i", "don't", "like", "it"], is_split_into_words=True, truncation=True, max_length=5)[
        "input_ids"
    ]
    assert all(len(ids) <= 5 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id for ids in out)
    assert tokenize_plain([""], tok, 5) == [[tok.cls_token_id, tok.sep_token_id]]


# ------------------------------------------------------------------------------------------ real CMU-MOSI


@pytest.mark.parametrize("source, n, repeated", [
    (MOSI_SAMPLE, 328, 11),
    pytest.param(MOSI_LABELS, 2199, 75, marks=needs_full_mosi),
], ids=["sample", "full"])
def test_all_mosi_transcripts(tok, lex, source, n, repeated):
    with open(source, newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    assert len(texts) == n
    max_length = 50
    masked = mask_batch(texts, tok, lex, max_length, seed=0)
    plain_full = tokenize_plain(texts, tok, 10_000)
    n_truncated = n_repeated = 0
    for text, m, full in zip(texts, masked, plain_full):
        assert_masked_spans(m, tok, max_length, n_pieces=len(pieces(tok, m.word)))
        # every occurrence of the word inside the window is masked: the window shows no copy of it
        n_repeated += m.from_lexicon and split_words(text).count(m.word) > 1
        assert m.word not in tok.decode(m.input_ids[1:-1]).split(), text
        assert m.word in split_words(text)
        if m.from_lexicon:
            assert m.label == lex[m.word]
            # No other word of the transcript is stronger.
            assert all(abs(lex.get(w, 0.0)) <= abs(m.label) for w in split_words(text))
        else:
            assert m.label == 0.0 and not any(w in lex for w in split_words(text))
        # The masked window is a contiguous slice of the unmasked sequence, masked exactly on the word.
        n_truncated += len(full) > max_length
        inner = m.input_ids[1:-1]
        first = m.mask_pos - 1
        starts = [
            s for s in range(1, len(full) - len(inner))
            if all(full[s + i] == t for i, t in enumerate(inner) if t != tok.mask_token_id)
            and full[s + first : s + first + len(pieces(tok, m.word))] == pieces(tok, m.word)
        ]
        assert starts, text
    fraction = sum(m.from_lexicon for m in masked) / len(masked)
    print(f"\nCMU-MOSI: {fraction:.1%} of {n} transcripts have a lexicon word; {n_truncated} truncated; "
          f"{n_repeated} repeat their masked word")
    assert n_repeated == repeated  # full file: 4.4 % of the 1,719 with a lexicon word; all copies masked now
    assert 0.5 < fraction < 0.99
    assert n_truncated > 0  # the truncation path really ran on real data


def test_random_word_redrawn_per_epoch_is_seeded_by_the_epoch(tok, lex) -> None:
    """`epoch` (train.random_word = per-epoch) redraws the random word of a text without a lexicon word,
    as a function of (seed, epoch, i); a lexicon word is masked the same in every epoch; no epoch is
    the fixed draw, `random.Random(f"kebr-mask:{seed}:{i}")`, as before."""
    texts = ["the table is near seven windows and doors", "it was a great movie"]
    assert not mask_batch(texts, tok, lex, 40, seed=3)[0].from_lexicon
    words = {mask_batch(texts, tok, lex, 40, seed=3, epoch=e)[0].word for e in range(1, 21)}
    assert len(words) > 2  # 7 distinct words: 20 epochs draw several of them
    for e in (1, 7):
        again = mask_batch(texts, tok, lex, 40, seed=3, epoch=e)
        assert again == mask_batch(texts, tok, lex, 40, seed=3, epoch=e)  # reproducible (a resume draws the same)
        assert again[1] == mask_batch(texts, tok, lex, 40, seed=3)[1]  # the lexicon word never moves
    fixed = mask_batch(texts, tok, lex, 40, seed=3)[0]
    assert fixed == mask_sentiment_word(texts[0], tok, lex, 40, random.Random("kebr-mask:3:0"))
    for e in range(1, 21):
        masked = mask_batch(texts, tok, lex, 40, seed=3, epoch=e)[0]
        assert len(masked.input_ids) == len(fixed.input_ids) and masked.label == 0.0  # only which piece


def test_mask_packed_equals_mask_batch_across_chunks(tok, lex) -> None:
    """The packed masks (issue 30: a few bytes a clip) are mask_batch's, whatever the chunk: each text's
    random stream is named by its number, not its place in a chunk; a text without words has none."""
    import numpy as np

    from kebr_core.masking import mask_packed

    texts = ["it was a great movie", "", "the table is wooden", "i hate this", "...", "blue chairs and red lamps"] * 3
    for epoch in (None, 4):
        expected = mask_batch(texts, tok, lex, 12, seed=7, skip_empty=True, epoch=epoch)
        packed = mask_packed(texts, tok, lex, 12, seed=7, epoch=epoch, chunk=4)
        assert len(packed) == len(texts)
        for i, m in enumerate(expected):
            assert packed.has_words[i] == (m is not None)
            if m is None:
                assert len(packed.input_ids(i)) == 0
                continue
            assert packed.input_ids(i).tolist() == m.input_ids
            assert (packed.mask_pos[i], packed.from_lexicon[i]) == (m.mask_pos, m.from_lexicon)
            assert packed.label[i] == np.float32(m.label)
