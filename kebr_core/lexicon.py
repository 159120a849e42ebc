"""The sentiment lexicon that decides which word to mask (paper §3.2, docs/design.md §4).

The default is VADER's `vader_lexicon.txt`, shipped inside the `vaderSentiment` package. Each line is
tab-separated: token, mean rating in [-4, 4], standard deviation, the raw ratings. Only the token and
the mean are used. The mean is mapped linearly onto the label range of CMU-MOSI/MOSEI:

    label = mean × 3/4        ([-4, 4] → [-3, 3])

A user lexicon has the same format (the std and ratings columns may be left out). Keys are kept
exactly as written; `kebr_core.masking` looks words up lower-cased, as VADER itself does, so an
upper-case entry never matches. VADER has multi-word and emoticon entries ("can't stand", ":-)")
which never match a single cleaned word; they are kept, harmlessly.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from kebr_core.errors import KebrError
from kebr_core.strict import decimal_number, read_user_text

VADER_RANGE = 4.0  # VADER means lie in [-4, 4]
LABEL_RANGE = 3.0  # MOSI/MOSEI labels lie in [-3, 3]
SCALE = LABEL_RANGE / VADER_RANGE


def vader_lexicon_path() -> Path:
    """Path of `vader_lexicon.txt` inside the installed `vaderSentiment` package."""
    try:
        path = Path(str(resources.files("vaderSentiment").joinpath("vader_lexicon.txt")))
    except ModuleNotFoundError:
        raise KebrError(
            "The default sentiment lexicon needs the package vaderSentiment, which is not installed."
        ) from None
    if not path.is_file():
        raise KebrError(f"The installed vaderSentiment package has no lexicon file at {path}.")
    return path


def load_lexicon(path: str | Path | None = None) -> dict[str, float]:
    """Load a VADER-format lexicon as {token: mean × 3/4}.

    path: a tab-separated lexicon file, or None for VADER's own (cached after the first load).
    Duplicate tokens: the later line wins (VADER's file has ten, e.g. "lol", "ok", "sob").
    Raises KebrError naming the file and line for a missing/unreadable file, a line without a
    tab-separated token and mean, or a mean that is not a number in [-4, 4].
    Returns a fresh dict, so callers may modify it.
    """
    if path is None:
        return dict(_load_default())
    return _parse(Path(path))


@functools.lru_cache(maxsize=1)
def _load_default() -> dict[str, float]:
    return _parse(vader_lexicon_path())


def _parse(path: Path) -> dict[str, float]:
    text = read_user_text(path, "Lexicon file")

    lexicon: dict[str, float] = {}
    # splitlines() also handles VADER's CRLF line ends.
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        token = fields[0].strip()
        if len(fields) < 2 or not token:
            raise KebrError(
                f"Lexicon file {path} line {number} is not 'token<TAB>mean[<TAB>std<TAB>ratings]': {line!r}."
            )
        mean = decimal_number(fields[1], allow_non_finite=False)
        if mean is None or not -VADER_RANGE <= mean <= VADER_RANGE:
            raise KebrError(
                f"Lexicon file {path} line {number} has mean {fields[1].strip()!r} for {token!r}, "
                f"not a number in [-4, 4]."
            )
        lexicon[token] = mean * SCALE  # a later duplicate overwrites the earlier one
    if not lexicon:
        raise KebrError(f"Lexicon file {path} has no entries.")
    return lexicon
