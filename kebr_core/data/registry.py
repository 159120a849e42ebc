"""Dataset names → feature stores (`kebr eval --dataset NAME`, docs/design.md §6).

NAME is a key of `catalog.DATASETS` (mosi, mosei, synth) or the path of a store. Under the data
directory (`--data-dir`, env `KEBR_DATA`, default `./data`), the first of these that exists is used for
`mosi` (likewise any entry with MMSA's files; the file names are its entry's):

    <data>/mosi.h5                                   a kebr store (from `kebr extract` or an earlier import)
    <data>/mosi/unaligned_50.pkl, <data>/MOSI/Processed/unaligned_50.pkl, … aligned_50.pkl
                                                     MMSA's processed features: imported to <data>/mosi.h5 once
    <data>/mosi/label.csv, <data>/MOSI/label.csv     MMSA's transcripts and labels only: imported to
                                                     <data>/mosi-text.h5, with a warning (no audio, no vision)

Labels are checked against the entry's label range. Pickles are read as data only
(`importers.load_data_pickle`): one that could run code is refused. An entry with a `generate` function
(`synth`) is generated once at <data>/<name>.h5 (synth: seed 0, MOSI-sized, strong audio/vision imbalance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kebr_core.data.catalog import DATASETS, Dataset
from kebr_core.data.labels import outside_range_warning
from kebr_core.errors import KebrError


def _candidates(data_dir: Path, name: str, filenames: tuple[str, ...]) -> list[Path]:
    folders = [data_dir / name, data_dir / name.upper(), data_dir / name.upper() / "Processed",
               data_dir / name / "Processed"]
    return [folder / f for folder in folders for f in filenames]


def resolve_dataset(name: str, data_dir: str | Path, warn: Callable[[str], None] = lambda m: None) -> Path:
    """The store to use for NAME, importing MMSA files on first use; a clear error says what to put where."""
    data_dir = Path(data_dir)
    entry = DATASETS.get(name.lower())
    if entry is None:
        path = Path(name)
        if path.is_file():
            return path
        raise KebrError(f"Dataset '{name}' is neither {', '.join(DATASETS)} nor an existing store file.")
    store = data_dir / f"{entry.name}.h5"
    if entry.generate is not None:
        if not store.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            entry.generate(store)
        return store
    if store.exists():
        return store
    return _import_mmsa_files(entry, data_dir, store, warn)


def _import_mmsa_files(entry: Dataset, data_dir: Path, store: Path, warn: Callable[[str], None]) -> Path:
    """The entry's store imported from MMSA's processed pickle, else a text-only store from its label.csv."""
    from kebr_core.data.importers import import_label_csv, import_mmsa_pickle

    name, label_range = entry.name, entry.label_range
    for pkl in _candidates(data_dir, name, entry.processed_files):
        if pkl.exists():
            result = import_mmsa_pickle(pkl, store, dataset=entry)
            if result["labels_outside_range"]:
                warn(f"{pkl}: {outside_range_warning(result['labels_outside_range'], clipped=False, label_range=label_range)}")
            return store
    text_store = data_dir / f"{name}-text.h5"
    for csv in _candidates(data_dir, name, entry.label_files):
        if csv.exists() or text_store.exists():
            if not text_store.exists():
                result = import_label_csv(csv, text_store, dataset=entry)
                if result["labels_outside_range"]:
                    warn(f"{csv}: {outside_range_warning(result['labels_outside_range'], clipped=False, label_range=label_range)}")
            warn(f"{name}: only transcripts and labels were found ({csv}); audio and vision are absent, so TCMF "
                 "injects nothing and MCC is undefined: this is a text-only result.")
            return text_store
    raise KebrError(
        f"No {name} data under {data_dir}: put a kebr store at {store}, MMSA's {entry.processed_files[0]} at "
        f"{data_dir / name / entry.processed_files[0]}, or MMSA's {entry.label_files[0]} at "
        f"{data_dir / name / entry.label_files[0]} (or pass --data-dir / set KEBR_DATA)."
    )
