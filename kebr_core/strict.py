"""Strict parsing of what users type or hand over: text files, CSV tables and numbers (README "Strict
parsing"). The one home of these rules, so that a CSV cell and a `--set` value mean the same thing.

- Text files are decoded by their byte-order mark: UTF-8 (with or without a BOM), UTF-16 LE or BE (what
  Windows Notepad saves as "Unicode"). The BOM never reaches the text.
- A number is plain decimal: an optional sign, digits with at most one point, an optional exponent
  (`-1.5`, `2e-5`, `.5`), or `nan`/`inf` spelled out where the caller allows them. Python's `int` and
  `float` accept more (`1_0` is 10, `١٢` is 12), which a CSV or a config value never means: not used.
- A CSV header names each column once; a table whose header repeats a name is refused, naming it
  (csv.DictReader would silently keep the last column).
- NUL characters cannot be stored (HDF5 strings end at NUL): `find_nul` says where one is.
- Settings files (a `--config`, a checkpoint's or a run's config.json, a search space) are JSON or TOML
  read by `parse_settings_text`/`read_settings_data`, within bounds: at most `MAX_SETTINGS_BYTES`, nested at
  most `MAX_NESTING` deep. A crafted file (100,000 brackets deep, a 5,000-digit number) is one sentence
  naming it, not a RecursionError or a ValueError; a typed integer (`decimal_integer`) has at most
  `MAX_INTEGER_DIGITS` digits. Each setting's range is then `config.py`'s.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from kebr_core.errors import KebrError

# sign, digits with at most one point (at least one digit), optional exponent: no '_', no hex, no spaces inside.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_NON_FINITE = {"nan": math.nan, "+nan": math.nan, "-nan": math.nan, "inf": math.inf, "+inf": math.inf,
               "-inf": -math.inf, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf}
# Byte-order marks, longest first (a UTF-32 LE BOM starts with UTF-16 LE's); UTF-32 is refused below.
# Bounds of a settings file (README "Trust and safety"): kebr's own are a few KiB, 3 levels deep.
MAX_SETTINGS_BYTES = 16 << 20
MAX_NESTING = 32
MAX_INTEGER_DIGITS = 100  # far above any setting's range; Python refuses over 4,300 digits with a ValueError
_BOMS = ((codecs.BOM_UTF32_LE, ""), (codecs.BOM_UTF32_BE, ""), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decimal_number(text: str, allow_non_finite: bool = True) -> float | None:
    """The value of a plain decimal number (module docstring), surrounding whitespace ignored; None for
    anything else (`1_0`, `0x10`, `1,5`, `٣`, an empty string), and for nan/inf unless allowed."""
    value = text.strip()
    if _DECIMAL.fullmatch(value) and value.isascii():
        return float(value)
    if allow_non_finite and value.lower() in _NON_FINITE:
        return _NON_FINITE[value.lower()]
    return None


def decimal_integer(text: str) -> int | None:
    """The value of a plain decimal integer (`-3`, `+12`), surrounding whitespace ignored; None otherwise."""
    value = text.strip()
    if not (_INTEGER.fullmatch(value) and value.isascii()) or len(value.lstrip("+-")) > MAX_INTEGER_DIGITS:
        return None
    return int(value)


def decode_text(raw: bytes, path: Path, what: str, errors: str = "strict") -> str:
    """`raw` decoded by its byte-order mark (UTF-8 without one); a file that is not text of those
    encodings is one sentence naming it. errors="replace" keeps undecodable bytes as U+FFFD instead."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            if not encoding:
                raise KebrError(f"{what} {path} is UTF-32 text; save it as UTF-8.")
            raw = raw[len(bom):]
            break
    else:
        encoding = "utf-8"
    try:
        return raw.decode(encoding, errors=errors)
    except UnicodeDecodeError:
        raise KebrError(f"{what} {path} is not UTF-8 text (nor UTF-16 with a byte-order mark).") from None


def read_user_text(path: Path, what: str, errors: str = "strict", max_bytes: int | None = None) -> str:
    """The text of a file a user gave (`what` names it in errors, e.g. "Lexicon file"), decoded by its
    byte-order mark; a missing, unreadable or undecodable file, or one over `max_bytes`, is one sentence
    naming it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except FileNotFoundError:
        raise KebrError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise KebrError(f"{what} {path} is a folder, not a file.") from None
    except OSError as e:
        raise KebrError(f"{what} {path} cannot be read ({e.strerror}).") from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise KebrError(f"{what} {path} is larger than {max_bytes:,} bytes, far more than a file of its kind holds; "
                        "it was not read.")
    return decode_text(raw, path, what, errors)


def nesting_depth(value: Any) -> int:
    """How deep lists and dicts nest in `value` (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING:  # deeper is refused anyway: no need to walk further
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_settings_text(text: str, kind: str, path: Path, what: str) -> Any:
    """JSON or TOML (`kind`) text of a settings file → its value, within the bounds (module docstring):
    invalid syntax, nesting deeper than `MAX_NESTING` or an integer too long is one sentence naming `path`."""
    try:
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except RecursionError:
        raise KebrError(f"{what} {path} nests lists or tables more than {MAX_NESTING} deep; it is not a settings file.") from None
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, and int()'s "Exceeds the limit (4300 digits)"
        raise KebrError(f"{what} {path} is not valid {kind}: {str(e)[:200]}.") from None
    if nesting_depth(data) > MAX_NESTING:
        raise KebrError(f"{what} {path} nests lists or tables more than {MAX_NESTING} deep; it is not a settings file.")
    return data


def read_settings_data(path: Path, what: str, kind: str | None = None) -> Any:
    """A settings file read within the bounds (`read_user_text` with `MAX_SETTINGS_BYTES`, then
    `parse_settings_text`); kind: "JSON" or "TOML", by default from the suffix (.toml: TOML)."""
    path = Path(path)
    kind = kind or ("TOML" if path.suffix.lower() == ".toml" else "JSON")
    return parse_settings_text(read_user_text(path, what, max_bytes=MAX_SETTINGS_BYTES), kind, path, what)


def find_nul(fields: dict[str, str]) -> str | None:
    """The name of the first field whose value holds a NUL character, or None."""
    return next((name for name, value in fields.items() if value is not None and "\x00" in value), None)


def read_csv_table(path: Path, what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV file with a header row -> (its column names, stripped; [(line number, {column: cell})]).

    Decoded by BOM (`read_user_text`). Refused in one sentence naming the file: a header that repeats a
    column name, invalid CSV. Rows shorter than the header get "" for the missing cells."""
    text = read_user_text(path, what)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        columns = [c.strip() for c in next(reader, [])]
        repeated = sorted({c for c in columns if c and columns.count(c) > 1})
        if repeated:
            raise KebrError(f"{what} {path} names the column {repeated[0]!r} more than once in its header; "
                            "keep one of them.")
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue  # blank lines
            rows.append((reader.line_num, {c: (cells[k] if k < len(cells) else "") for k, c in enumerate(columns)}))
    except csv.Error as e:
        raise KebrError(f"{what} {path} line {reader.line_num} is not valid CSV ({e}).") from None
    return columns, rows
