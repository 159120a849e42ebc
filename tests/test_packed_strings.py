"""A store's per-clip strings in a few bytes per clip (issue 30): `kebr_core.data.packed_strings`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kebr_core.data.packed_strings import Categories, PackedStrings
from kebr_core.data.store import SPLITS, FeatureStore
from tests.conftest import write_tiny_store

WORDS = ["", "a", "é", "naïve café", "😀 emoji", "x" * 1000, "tab\tand\nnewline", "日本語のテキスト"]


def test_packed_strings_give_back_every_string_as_it_was() -> None:
    chunks = [WORDS[:3], [], WORDS[3:]]
    packed = PackedStrings.build(chunks)
    assert len(packed) == len(WORDS)
    assert [packed[i] for i in range(len(WORDS))] == WORDS and list(packed) == WORDS
    assert packed[-1] == WORDS[-1] and packed[2:5] == WORDS[2:5] and packed[::-3] == WORDS[::-3]
    # Offsets count UTF-8 bytes, not characters: "é" is 2 bytes, the emoji 4.
    assert packed.offsets[:4].tolist() == [0, 0, 1, 3]
    assert packed.buffer.nbytes == sum(len(w.encode()) for w in WORDS)
    assert packed == WORDS and packed == PackedStrings.build([WORDS]) and packed != WORDS[:-1]
    assert packed + ["z"] == [*WORDS, "z"] and ["z"] + packed == ["z", *WORDS]
    assert "\n".join(packed) == "\n".join(WORDS) and set(packed) == set(WORDS)
    for bad in (len(WORDS), -len(WORDS) - 1):
        with pytest.raises(IndexError):
            packed[bad]
    empty = PackedStrings.build([])
    assert len(empty) == 0 and list(empty) == [] and empty.offsets.tolist() == [0]


def test_categories_code_known_names_first_and_find_values() -> None:
    values = ["test", "train", "train", "mine", "unlabeled", "mine", "valid"]
    cats = Categories.build([values[:2], values[2:]], SPLITS)
    assert cats.names == (*SPLITS, "mine")  # the fixed names keep their codes; others follow
    assert cats.codes.dtype == np.uint8 and cats.codes.tolist() == [2, 0, 0, 4, 3, 4, 1]
    assert cats.values().tolist() == values and [cats[i] for i in range(len(values))] == values
    assert cats.where(["train", "mine"]).tolist() == [False, True, True, True, False, True, False]
    assert not cats.where(["nowhere"]).any()
    many = Categories.build([[f"s{i}" for i in range(300)]])
    assert many.codes.dtype != np.uint8 and many[299] == "s299"


def test_a_store_reads_back_the_same_index_as_its_writer_wrote(tmp_path: Path) -> None:
    store = FeatureStore(write_tiny_store(tmp_path / "s.h5", n=9000))  # three chunks of 4096 rows
    assert len(store.ids) == 9000 and store.ids[4097] == "s4097" and store.ids[-1] == "s8999"
    assert store.splits.tolist() == [["train", "train", "train", "valid", "test"][i % 5] for i in range(9000)]
    assert store.indices("valid").tolist() == list(range(3, 9000, 5))
    assert store.sample(8999).text == store.texts[8999] == store.text(8999)
    assert store.split(3) == "valid" and store.text_source(0) == store.text_sources[0]


def test_an_open_store_holds_a_few_bytes_per_clip_beyond_its_strings(tmp_path: Path) -> None:
    """The memory an open store of 100 K clips keeps live (tracemalloc: Python objects and numpy arrays):
    its strings and 38 bytes more per clip (offsets of its id, text, audio and vision: 4 × 8; its label: 4;
    split and text-source codes: 2), not an object per clip. A str per id and text and str arrays of splits
    and text sources kept ~195 bytes more per clip (measured, 20 K clips)."""
    import gc
    import tracemalloc

    from kebr_core.data.synth import SynthConfig, generate_synth

    n = 100_000
    path = tmp_path / "large.h5"
    generate_synth(path, SynthConfig(n=0, unlabeled=n, audio_dim=2, vision_dim=2, audio_len=(1, 2), vision_len=(1, 2)))
    FeatureStore(path)  # once before measuring: imports and HDF5's start-up are not the store's
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = FeatureStore(path)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    strings = sum(len(s.encode()) for values in (store.ids, store.texts) for s in values)
    assert strings / n < 60  # the synthetic ids and texts are short
    assert kept / n < strings / n + 48, f"an open store of {n} clips keeps {kept / n:.0f} bytes per clip"
