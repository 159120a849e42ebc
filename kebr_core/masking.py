"""Sentiment-knowledge masking: hide the strongest sentiment word, predict its score (paper §3.2, Eq. 1).

For each transcript T = {w_1, ..., w_n} the word with the largest |lexicon score| is replaced by the
mask token, giving T' = {w_1, ..., w_mask, ..., w_n} (Eq. 1), and its score (VADER mean × 3/4, in
[-3, 3]) is the pretraining label. A transcript without a lexicon word gets one random word masked
and label 0.0.

What this file does on purpose (docs/design.md §4):
- EVERY wordpiece of EVERY occurrence of the chosen word is masked ("good quite good" → "[MASK]
  quite [MASK]"), as the authors masked every occurrence: a visible copy would give the answer
  away. Only ~30% of VADER words are one wordpiece ("unlovable" → un ##lova ##ble); masking only one
  piece would leave the rest to give the word away (the authors' code skipped such words). The
  prediction position is the first piece of the first occurrence.
- Truncation never cuts the first occurrence out: when the pieces do not fit in `max_length`, the
  window of content pieces is shifted right just enough to end with it.

Words come from `split_words` (lower-cased, punctuation stripped at word edges), and the SAME words
are fed to the tokenizer with `is_split_into_words=True`, so `word_ids()` tells exactly which pieces
belong to which word. `tokenize_plain` (fine-tuning) uses the same words, so pretraining and
fine-tuning see identical token sequences apart from the mask. Punctuation at word edges is therefore
not part of the model input; CMU-MOSI transcripts carry none anyway.

A text with no words at all (empty, or only punctuation: a silent video's transcript) cannot be
masked: `mask_sentiment_word` raises KebrError, `mask_batch(..., skip_empty=True)` gives None for it
(pretraining leaves such samples out: they carry no target).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kebr_core.errors import KebrError

# Non-alphanumerics at either end of a whitespace-separated token; inner ones ("don't") stay.
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")


def split_words(text: str) -> list[str]:
    """Split a transcript into lower-cased words with punctuation stripped at word edges only.

    "I DON'T LIKE IT!!" → ["i", "don't", "like", "it"]; "(umm)" → "umm"; tokens that are only
    punctuation ("--", "!!") disappear. Curly apostrophes become straight ones, as in the lexicon.
    """
    words = []
    for token in text.replace("\u2019", "'").lower().split():
        word = _EDGE_PUNCTUATION.sub("", token)
        if word:
            words.append(word)
    return words


@dataclass
class MaskedText:
    """One masked transcript, ready for the pretraining collate.

    input_ids: [L] token ids with the special tokens, L ≤ max_length, no padding.
    mask_positions: positions in input_ids of every masked wordpiece, ascending: every piece of every
        occurrence of the word inside the window (contiguous when the word occurs once).
    mask_pos: mask_positions[0], the first piece of the first occurrence, where the score is predicted.
    label: the masked word's score in [-3, 3]; 0.0 when no lexicon word was found.
    word: the masked word as `split_words` gives it.
    from_lexicon: True when the word was chosen by the lexicon, False when picked at random.
    """

    input_ids: list[int]
    mask_positions: list[int]
    mask_pos: int
    label: float
    word: str
    from_lexicon: bool


def mask_sentiment_word(
    text: str,
    tokenizer: Any,
    lexicon: Mapping[str, float],
    max_length: int,
    rng: random.Random | int,
) -> MaskedText:
    """Mask every wordpiece of every occurrence of the strongest sentiment word of `text` (paper Eq. 1).

    tokenizer: a fast Hugging Face tokenizer with a mask token (e.g. the MiniLM/BERT one).
    lexicon: {lower-cased word: score in [-3, 3]}, e.g. `kebr_core.lexicon.load_lexicon()`.
    max_length: the most token ids in the output, special tokens included.
    rng: a random.Random or an int seed; used only when no word is in the lexicon.
    Raises KebrError when the text has no words or max_length leaves no room for one.
    """
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    return _mask_texts([text], tokenizer, lexicon, max_length, [rng], [repr(text)])[0]  # type: ignore[return-value]


def mask_batch(
    texts: Sequence[str],
    tokenizer: Any,
    lexicon: Mapping[str, float],
    max_length: int,
    seed: int,
    skip_empty: bool = False,
    epoch: int | None = None,
    first: int = 0,
) -> list[MaskedText | None]:
    """`mask_sentiment_word` for many texts, tokenised in one call; deterministic given `seed`.

    Text i uses its own `random.Random(f"kebr-mask:{seed}:{i}")`, so its random choice depends only on
    (seed, i, text), not on the other texts or on how many were drawn before it. With `epoch` (the
    random word redrawn every epoch, `train.random_word = "per-epoch"`), `f"kebr-mask:{seed}:{epoch}:{i}"`:
    a function of the epoch too, so a resumed run draws what the uninterrupted one drew. Texts with a
    lexicon word are masked the same whatever the seed and epoch.
    skip_empty: a text without words gives None instead of raising KebrError (a silent video's empty
    transcript has no word to mask, hence no target).
    first: the number of texts[0] (i above) when `texts` is a slice of a longer list (`mask_packed`).
    """
    stream = f"kebr-mask:{seed}" if epoch is None else f"kebr-mask:{seed}:{epoch}"
    rngs = [random.Random(f"{stream}:{i}") for i in range(first, first + len(texts))]
    names = [f"#{i} ({text!r})" for i, text in enumerate(texts, start=first)]
    return _mask_texts(list(texts), tokenizer, lexicon, max_length, rngs, names, skip_empty)


MASK_CHUNK = 1024  # texts masked at once by `mask_packed`: bounds the tokenizer's transient objects


@dataclass
class PackedMasks:
    """The masking of every text in flat arrays (`mask_packed`): 4 bytes a token and 14 a text, instead of
    ~1 KB of Python objects a text (a MaskedText, its lists), which at VoxCeleb2's 947 K clips would
    dominate pretraining's RAM. Text i: input_ids(i); a text without words has none (has_words False)."""

    ids: np.ndarray  # (T,) int32, every text's input_ids back to back
    offsets: np.ndarray  # (N + 1,) int64
    mask_pos: np.ndarray  # (N,) int32
    label: np.ndarray  # (N,) float32
    has_words: np.ndarray  # (N,) bool
    from_lexicon: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.mask_pos)

    def input_ids(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]: self.offsets[i + 1]]


def mask_packed(texts: Sequence[str], tokenizer: Any, lexicon: Mapping[str, float], max_length: int, seed: int,
                epoch: int | None = None, chunk: int = MASK_CHUNK) -> PackedMasks:
    """`mask_batch(..., skip_empty=True)` over `texts`, `chunk` texts at a time, kept packed: the same masks
    (each text's random stream is named by its number, whatever the chunk), with a chunk's objects the
    only transient ones (the tokenizer's output for all texts at once is ~5 KB a text)."""
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(texts), chunk):
        masked = mask_batch(texts[start: start + chunk], tokenizer, lexicon, max_length, seed, skip_empty=True,
                            epoch=epoch, first=start)
        lengths = np.array([len(m.input_ids) if m is not None else 0 for m in masked], dtype=np.int64)
        ids = np.fromiter((t for m in masked if m is not None for t in m.input_ids), dtype=np.int32, count=int(lengths.sum()))
        parts.append((ids, lengths, np.array([m.mask_pos if m else 0 for m in masked], dtype=np.int32),
                      np.array([m.label if m else 0.0 for m in masked], dtype=np.float32),
                      np.array([m is not None for m in masked], dtype=bool),
                      np.array([bool(m and m.from_lexicon) for m in masked], dtype=bool)))
    joined = [np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, dtype) for k, dtype in
              enumerate((np.int32, np.int64, np.int32, np.float32, bool, bool))]
    offsets = np.zeros(len(joined[1]) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(joined[1])
    return PackedMasks(joined[0], offsets, joined[2], joined[3], joined[4], joined[5])


def tokenize_plain(texts: Sequence[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Token ids of each text for fine-tuning: the same words as masking, no mask, right-truncated.

    Returns one list of ids per text, special tokens included, each of length ≤ max_length.
    """
    _check_max_length(tokenizer, max_length)
    word_lists = [split_words(text) for text in texts]
    if not word_lists:
        return []
    encoded = tokenizer(word_lists, is_split_into_words=True, truncation=True, max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def _check_max_length(tokenizer: Any, max_length: int) -> int:
    """Return the room for content pieces, max_length minus the special tokens."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if room < 1:
        raise KebrError(f"max_length={max_length} leaves no room for a word after the special tokens.")
    return room


def _mask_texts(
    texts: list[str],
    tokenizer: Any,
    lexicon: Mapping[str, float],
    max_length: int,
    rngs: list[random.Random],
    names: list[str],
    skip_empty: bool = False,
) -> list[MaskedText | None]:
    if not getattr(tokenizer, "is_fast", False):
        raise KebrError(
            f"Tokenizer {type(tokenizer).__name__} is not a fast tokenizer, "
            "which masking needs to map wordpieces to words."
        )
    if tokenizer.mask_token_id is None:
        raise KebrError(f"Tokenizer {type(tokenizer).__name__} has no mask token.")
    room = _check_max_length(tokenizer, max_length)
    if not texts:
        return []

    word_lists = [split_words(text) for text in texts]
    if not skip_empty:
        for words, name in zip(word_lists, names):
            if not words:
                raise KebrError(f"Text {name} has no words to mask.")
    # No truncation here: the window is chosen per text, after the masked word is known.
    encoded = tokenizer(word_lists, is_split_into_words=True, truncation=False)
    return [
        _mask_one(
            words, encoded["input_ids"][i], encoded.word_ids(i), lexicon, room, rngs[i],
            tokenizer.mask_token_id, names[i],
        ) if words else None
        for i, words in enumerate(word_lists)
    ]


def _mask_one(
    words: list[str],
    ids: list[int],
    word_ids: list[int | None],
    lexicon: Mapping[str, float],
    room: int,
    rng: random.Random,
    mask_token_id: int,
    name: str,
) -> MaskedText:
    # Special tokens (word id None) sit at both ends; everything between is the words' pieces.
    n_prefix = 0
    while n_prefix < len(ids) and word_ids[n_prefix] is None:
        n_prefix += 1
    n_suffix = 0
    while n_suffix < len(ids) - n_prefix and word_ids[len(ids) - 1 - n_suffix] is None:
        n_suffix += 1
    content_ids = list(ids[n_prefix : len(ids) - n_suffix])
    content_words = word_ids[n_prefix : len(ids) - n_suffix]

    # [start, end) of each word's pieces in content; a word the tokenizer drops has none.
    spans: dict[int, list[int]] = {}
    for pos, w in enumerate(content_words):
        if w is None:
            raise KebrError(f"Tokenizer put a special token inside text {name}, which masking cannot handle.")
        if w in spans:
            spans[w][1] = pos + 1
        else:
            spans[w] = [pos, pos + 1]
    if not spans:
        raise KebrError(f"Text {name} has no words the tokenizer keeps, so there is nothing to mask.")

    chosen: int | None = None
    best = 0.0
    for w in sorted(spans):  # word order, so a strict ">" keeps the first of equal |scores|
        score = lexicon.get(words[w])
        if score is not None and (chosen is None or abs(score) > abs(best)):
            chosen, best = w, score
    from_lexicon = chosen is not None
    if chosen is None:  # a random word (each distinct word equally likely), predicted at its first occurrence
        first_occurrence: dict[str, int] = {}
        for w in sorted(spans):
            first_occurrence.setdefault(words[w], w)
        candidates = list(first_occurrence.values())
        chosen = candidates[rng.randrange(len(candidates))]
        best = 0.0

    # Every occurrence is masked (a visible copy would give the answer away); `chosen` is the first one.
    masked = [pos for w in spans if words[w] == words[chosen] for pos in range(*spans[w])]
    for pos in masked:
        content_ids[pos] = mask_token_id

    # Keep `room` content pieces: from the left as usual, shifted right just enough to end with the
    # first occurrence; a word longer than the whole window keeps its first `room` pieces.
    start, end = spans[chosen]
    window_start = min(start, max(0, end - room))
    window_end = window_start + room
    kept = content_ids[window_start:window_end]
    input_ids = list(ids[:n_prefix]) + kept + list(ids[len(ids) - n_suffix :])
    mask_positions = [n_prefix + pos - window_start for pos in sorted(masked) if window_start <= pos < window_end]
    return MaskedText(
        input_ids=input_ids,
        mask_positions=mask_positions,
        mask_pos=mask_positions[0],
        label=float(best),
        word=words[chosen],
        from_lexicon=from_lexicon,
    )
