"""What `kebr extract` and `kebr predict` read: videos found in a folder, an MMSA manifest's clips, a
transcript table's texts, and a job's part of them (docs/design.md §2-3).

    items, unsupported = discover(folder)      # or: items = read_manifest(label_csv, root)
    items, unmatched = attach_transcripts(items, "transcripts.csv")
    mine = [it for it in items if id_in_part(it.id, (0, 4))]

A `VideoItem` is one video to extract: its id in the store, its path, its key (for OpenFace CSVs and
transcript tables), and what the manifest says of it (transcript, label, split).

Manifests may come from anyone: a row whose clip path leads outside the root is not read (`refused`)
and becomes an error of the extraction. A job's part (`--shard i/n`, 0 <= i < n; `kebr_core.shards`)
keeps the ids whose CRC-32 is i modulo n (`id_in_part`), a split that does not depend on the order in
which the files are listed or on what else the folder holds.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from kebr_core.errors import KebrError
from kebr_core.strict import decimal_number, find_nul, read_csv_table
from kebr_core.extract.transcripts import SIDECAR_EXTENSIONS, read_transcript_table
from kebr_core.extract.video import VIDEO_EXTENSIONS

# Files that may sit beside videos without being "unsupported": transcripts, OpenFace CSVs, notes.
_COMPANION_EXTENSIONS = (*SIDECAR_EXTENSIONS, ".csv", ".json", ".md")


@dataclass
class VideoItem:
    """One video to extract. `key` is its path below the input folder without extension (OpenFace CSV
    lookup, transcript tables); `text` is the manifest's or the table's transcript, as `text_source`
    says (None: look for a sidecar, then ASR)."""

    id: str
    path: Path
    key: str = ""
    text: str | None = None
    text_source: str = "manifest"
    label: float = float("nan")
    split: str = "unlabeled"
    refused: str = ""  # why this item is not read at all (a manifest path outside the root); "" = fine



def discover(folder: Path) -> tuple[list[VideoItem], list[str]]:
    """Videos below `folder` (recursive, sorted), and the files skipped for an unsupported extension.

    id = path relative to the folder without extension (POSIX separators); hidden files are ignored.
    """
    folder = Path(folder)
    items, unsupported = [], []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            key = rel.with_suffix("").as_posix()
            items.append(VideoItem(id=key, path=path, key=key))
        elif ext not in _COMPANION_EXTENSIONS:
            unsupported.append(rel.as_posix())
    return items, unsupported


def read_manifest(manifest: Path, root: Path) -> list[VideoItem]:
    """An MMSA `label.csv` (video_id, clip_id, text, label, mode, ...) -> items with clips at
    `<root>/<video_id>/<clip_id>.mp4`, id `<video_id>$_$<clip_id>`, labels and splits carried over."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise KebrError(f"the manifest {manifest} does not exist")
    columns, rows = read_csv_table(manifest, "The manifest")
    missing = {"video_id", "clip_id"} - set(columns)
    if missing:
        raise KebrError(
            f"the manifest {manifest} has no {' or '.join(sorted(missing))} column "
            "(expected MMSA's label.csv: video_id,clip_id,text,label,annotation,mode)"
        )
    items = []
    root_abs = os.path.abspath(root)
    for line, row in rows:
        vid, clip = row["video_id"].strip(), row["clip_id"].strip()
        # A NUL cannot be stored (nor be part of a path): the row becomes one failed item, under an id
        # with the NUL written out, so that the rest of the manifest is extracted.
        nul = find_nul(row)
        if nul is not None:
            vid, clip = vid.replace("\x00", "\\x00"), clip.replace("\x00", "\\x00")
            items.append(VideoItem(id=f"{vid}$_${clip}", path=Path(root_abs), key=f"{vid}/{clip}", refused=(
                f"{manifest} line {line}: its {nul} holds a NUL character, so the row was not read")))
            continue
        path = Path(os.path.normpath(os.path.join(root_abs, vid, f"{clip}.mp4")))
        raw_label = row.get("label", "").strip()
        label = decimal_number(raw_label) if raw_label else float("nan")
        if label is None:
            raise KebrError(f"{manifest} line {line}: label {row['label']!r} is not a number in plain decimal (like -1.5)")
        split = (row.get("mode") or "unlabeled").strip().lower() or "unlabeled"
        split = {"val": "valid", "validation": "valid", "dev": "valid"}.get(split, split)
        if split not in ("train", "valid", "test", "unlabeled"):
            raise KebrError(f"{manifest} line {line}: mode {split!r} is not train, valid or test")
        text = (row.get("text") or "").strip() or None
        # A manifest may come from anyone: a video_id like ../../x or /etc must not reach outside the root.
        inside = os.path.commonpath([root_abs, str(path)]) == root_abs
        items.append(VideoItem(id=f"{vid}$_${clip}", path=path, key=f"{vid}/{clip}", text=text, label=label,
                               split=split, refused="" if inside else (
                                   f"{manifest} line {line}: the clip path {vid}/{clip}.mp4 leads outside the root "
                                   f"{root}, so it was not read")))
    return items


def resolve_inputs(inputs: Path | Sequence[VideoItem]) -> tuple[list[VideoItem], list[str]]:
    """A folder, a single video file, or ready-made items -> (items, unsupported files)."""
    if not isinstance(inputs, (str, Path)):
        return list(inputs), []
    path = Path(inputs)
    if path.is_dir():
        return discover(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise KebrError(
                f"{path} has an unsupported extension; kebr extract reads {', '.join(VIDEO_EXTENSIONS)}"
            )
        return [VideoItem(id=path.stem, path=path, key=path.stem)], []
    raise KebrError(f"the input {path} does not exist")


def attach_transcripts(items: Sequence[VideoItem], table_path: Path) -> tuple[list[VideoItem], list[str]]:
    """Copies of `items` in which those whose key the transcript table names carry that row's text
    (source `table`); the others keep looking for a sidecar, then ASR. Returns (the items, the
    table's ids that name no item). Raises KebrError when an item already has a transcript (from a
    manifest), when an id names two videos, or when no id names any."""
    table = read_transcript_table(table_path)
    if any(item.text is not None for item in items):
        raise KebrError(f"The videos already have transcripts from their manifest; give them there or in "
                        f"{table_path}, not both.")
    by_key: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_key.setdefault(item.key, []).append(k)
    items = list(items)
    for video_id, text in table.items():
        named = by_key.get(video_id, [])
        if len(named) > 1:
            raise KebrError(f"The id {video_id!r} in {table_path} names {len(named)} videos "
                            f"({', '.join(str(items[k].path) for k in named)}); give the videos as one folder, whose paths tell them apart.")
        for k in named:
            items[k] = replace(items[k], text=text, text_source="table")
    unmatched = [video_id for video_id in table if video_id not in by_key]
    if len(unmatched) == len(table):
        example = next(iter(by_key), "clip01")
        raise KebrError(f"None of the {len(table)} ids in {table_path} names one of the videos (ids are the path "
                        f"below the folder without extension, e.g. {example!r}; the table's first is {unmatched[0]!r}).")
    return items, unmatched


def id_in_part(sample_id: str, part: tuple[int, int] | None) -> bool:
    """Whether `sample_id` is in the part (i, n) of a job (`kebr_core.shards`): CRC-32 of the id modulo n is
    i (None: all are). Seeds and configurations are split by position instead (`shards.in_part`)."""
    if part is None:
        return True
    i, n = part
    return zlib.crc32(sample_id.encode("utf-8")) % n == i
