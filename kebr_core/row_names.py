"""What ran, in words: the streams a store holds and the default name of a result row.

Every result row of `kebr eval` (the printed table, results-table.csv) is named by what ran, unless
`--name` names it: "KEBR" fine-tuned from a pretraining (the paper's C1), "KEBR w/o pretraining" from
the plain encoder (C2), with ", text only" when the store holds neither audio nor vision (the model
then reads only the text: `FeatureStore.widths` gives it one always-masked zero column per stream),
and the store's name in brackets, e.g. "KEBR w/o pretraining, text only (mosi)".
"""

from __future__ import annotations

from pathlib import Path

from kebr_core.data.store import FeatureStore

TEXT_ONLY = "text only"


def store_inputs(store_path: str | Path) -> str:
    """The streams of a store: "text, audio, vision", "text and audio", "text and vision" or "text only"
    (a stream counts when the store names features for it)."""
    store = FeatureStore(store_path)
    audio, vision = bool(store.audio_features), bool(store.vision_features)
    if audio and vision:
        return "text, audio, vision"
    if audio or vision:
        return f"text and {'audio' if audio else 'vision'}"
    return TEXT_ONLY


def dataset_name(dataset: str) -> str:
    """The name a row (or a paper table's column group) gives its data: 'mosi' for --dataset mosi, the
    file's stem for a store path (data/mosi.h5 → mosi)."""
    return Path(dataset).stem if "/" in dataset or dataset.lower().endswith((".h5", ".hdf5")) else dataset


def model_name(pretrained: bool, inputs: str) -> str:
    """What ran, without the data: "KEBR" or "KEBR w/o pretraining", with the streams when not all three."""
    name = "KEBR" if pretrained else "KEBR w/o pretraining"
    return name if inputs in ("text, audio, vision", "") else f"{name}, {inputs}"


def row_name(pretrained: bool, inputs: str, dataset: str) -> str:
    """The default name of a result row (module docstring)."""
    return f"{model_name(pretrained, inputs)} ({dataset_name(dataset)})"


def inputs_caption(inputs: str) -> str:
    """A table caption's words on a store without both streams ('' for one with both)."""
    if inputs == TEXT_ONLY:
        return "text only: the store has no audio or vision features"
    if inputs != "text, audio, vision":
        return f"{inputs} only: the store lacks the other stream"
    return ""
