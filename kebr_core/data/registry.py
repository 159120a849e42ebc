"""Dataset names → feature stores (`kebr eval --dataset NAME`, docs/design.md §6).

NAME is `mosi`, `mosei`, `synth` or the path of a store. Under the data directory (`--data-dir`, env
`KEBR_DATA`, default `./data`), the first of these that exists is used for `mosi` (likewise `mosei`):

    <data>/mosi.h5                                   a kebr store (from `kebr extract` or an earlier import)
    <data>/mosi/unaligned_50.pkl, <data>/MOSI/Processed/unaligned_50.pkl, … aligned_50.pkl
                                                     MMSA's processed features: imported to <data>/mosi.h5 once
    <data>/mosi/label.csv, <data>/MOSI/label.csv     MMSA's transcripts and labels only: imported to
                                                     <data>/mosi-text.h5, with a warning (no audio, no vision)

Pickles are read as data only (`importers.load_data_pickle`): one that could run code is refused.
`synth` is generated once at <data>/synth.h5 (seed 0, MOSI-sized, strong audio/vision imbalance).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from kebr_core.data.labels import outside_range_warning
from kebr_core.errors import KebrError

KNOWN = ("mosi", "mosei")


def _candidates(data_dir: Path, name: str, filenames: tuple[str, ...]) -> list[Path]:
    folders = [data_dir / name, data_dir / name.upper(), data_dir / name.upper() / "Processed",
               data_dir / name / "Processed"]
    return [folder / f for folder in folders for f in filenames]


def resolve_dataset(name: str, data_dir: str | Path, warn: Callable[[str], None] = lambda m: None) -> Path:
    """The store to use for NAME, importing MMSA files on first use; a clear error says what to put where."""
    from kebr_core.data.importers import import_label_csv, import_mmsa_pickle

    data_dir = Path(data_dir)
    if name == "synth":
        from kebr_core.data.synth import SynthConfig, generate_synth

        out = data_dir / "synth.h5"
        if not out.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            generate_synth(out, SynthConfig(unlabeled=1000))
        return out
    if name.lower() not in KNOWN:
        path = Path(name)
        if path.is_file():
            return path
        raise KebrError(
            f"Dataset '{name}' is neither mosi, mosei, synth nor an existing store file."
        )
    name = name.lower()
    store = data_dir / f"{name}.h5"
    if store.exists():
        return store
    for pkl in _candidates(data_dir, name, ("unaligned_50.pkl", "aligned_50.pkl")):
        if pkl.exists():
            result = import_mmsa_pickle(pkl, store)
            if result["labels_outside_range"]:
                warn(f"{pkl}: {outside_range_warning(result['labels_outside_range'], clipped=False)}")
            return store
    text_store = data_dir / f"{name}-text.h5"
    for csv in _candidates(data_dir, name, ("label.csv",)):
        if csv.exists() or text_store.exists():
            if not text_store.exists():
                result = import_label_csv(csv, text_store)
                if result["labels_outside_range"]:
                    warn(f"{csv}: {outside_range_warning(result['labels_outside_range'], clipped=False)}")
            warn(f"{name}: only transcripts and labels were found ({csv}); audio and vision are absent, so TCMF "
                 "injects nothing and MCC is undefined: this is a text-only result.")
            return text_store
    raise KebrError(
        f"No {name} data under {data_dir}: put a kebr store at {store}, MMSA's unaligned_50.pkl at "
        f"{data_dir / name / 'unaligned_50.pkl'}, or MMSA's label.csv at {data_dir / name / 'label.csv'} "
        "(or pass --data-dir / set KEBR_DATA)."
    )
