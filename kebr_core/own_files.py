"""Removing what kebr wrote, and nothing else (README "Trust and safety"; the rule of `kebr_core.io`).

`--force`, checkpoint retention (`--keep-checkpoints`) and the clean-up of a killed write remove files.
Users put other things beside them (notes in a run folder, `checkpoints/` on a scratch disk shared with
other work), so a removal here is by the run's own layout, never by a pattern or a whole tree:

- a folder kebr writes whole (a model folder, a checkpoint) holds its record, `.kebr-files.json`
  (`write_record`: each file kebr wrote there with its size and mtime_ns, written last): only those
  files are removed, and each only while it is still the plain file kebr wrote (same size and mtime_ns;
  a file put in place of one of kebr's since, under the same name, is someone else's and stays);
- a folder without a record (written before records existed, or left by a kill before its record was
  written) falls back to the names a writer gives (`runs.MODEL_FOLDER_FILES`: model.safetensors,
  config.json, …), each only when it is a plain file (a link or a folder of that name is someone else's);
- a folder only when nothing else is left in it: a foreign `epoch-0001/weights.bin` keeps its folder,
  and a write that needs the name is refused in one sentence naming what is there;
- never through a symbolic link: when any folder between the run folder and what is removed is a link
  (to a scratch disk, say), nothing is removed and the reason is one sentence.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Iterable

from kebr_core.errors import KebrError
from kebr_core.io import atomic_write_text


def link_on_the_way(path: Path, inside: Path) -> Path | None:
    """The first symbolic link among `path` and the folders between `inside` and it (`inside` itself not
    counted: it is the run folder the user gave), or None."""
    path, inside = Path(path), Path(inside)
    try:
        parts = path.relative_to(inside).parts
    except ValueError:
        raise KebrError(f"{path} is not inside {inside}; kebr removes only files of the run folder.") from None
    current = inside
    for part in parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def refuse_link_on_the_way(path: Path, inside: Path) -> None:
    """One sentence when `link_on_the_way` finds a link: kebr does not remove files through it."""
    link = link_on_the_way(path, inside)
    if link is not None:
        raise KebrError(f"{link} is a symbolic link (to {os.readlink(link)}); kebr removes files of its run folder "
                        "only inside it, never through a link: nothing there was removed.")


RECORD = ".kebr-files.json"  # in a folder kebr wrote: what it wrote there (`write_record`)
_RECORD_TMP = RECORD + ".tmp"  # the record being written; a kill may leave it


def write_record(folder: Path) -> None:
    """Write `folder`'s record, RECORD: every plain file below it (links are not followed, and not
    listed) as {relative path: [size, mtime_ns]}. Called last, once kebr has written the folder afresh
    (everything in it is kebr's); written atomically and fsynced, so a folder has a whole record or none."""
    folder = Path(folder)
    files = {}
    for root, _dirs, names in os.walk(folder):
        for name in names:
            info = (Path(root) / name).lstat()
            relative = (Path(root) / name).relative_to(folder).as_posix()
            if stat.S_ISREG(info.st_mode) and relative not in (RECORD, _RECORD_TMP):
                files[relative] = [info.st_size, info.st_mtime_ns]
    _write_record_file(folder, files)


def _write_record_file(folder: Path, files: dict[str, list[int]]) -> None:
    """RECORD listing `files`, written atomically under its fixed temporary name (`io.atomic_write_text`:
    never through a link planted there)."""
    atomic_write_text(folder / RECORD, json.dumps({"written_by": "kebr", "files": files}, indent=1, sort_keys=True),
                      tmp=folder / _RECORD_TMP)


def add_to_record(folder: Path, *names: str) -> None:
    """Record files kebr (re)wrote in `folder` after its record (selection.json, a rewritten model card),
    with their size and mtime_ns now. A folder without kebr's record (an older layout) is left as it is:
    its removal goes by kebr's names, which these are."""
    folder = Path(folder)
    files, kebrs_record = _read_record(folder)
    if kebrs_record:
        for name in names:
            info = (folder / name).lstat()
            files[name] = [info.st_size, info.st_mtime_ns]
        _write_record_file(folder, files)


def _read_record(folder: Path) -> tuple[dict[str, list[int]] | None, bool]:
    """The files `folder`'s record lists, {relative path: [size, mtime_ns]} (None when it has no record:
    a folder written before records existed), and whether the record is kebr's. One that is no plain
    file, or not one kebr could have written (garbage, a path leaving the folder), is someone else's: it
    lists nothing, and it is neither rewritten nor removed."""
    path = folder / RECORD
    mode = _lstat_mode(path)
    if not mode:
        return None, False
    try:
        content = json.loads(path.read_text(encoding="utf-8")) if stat.S_ISREG(mode) else None
    except (OSError, ValueError):
        return {}, False
    files = content.get("files") if isinstance(content, dict) and content.get("written_by") == "kebr" else None
    if not isinstance(files, dict) or not all(
            isinstance(entry, list) and len(entry) == 2 and not Path(name).is_absolute()
            and ".." not in Path(name).parts and name not in (RECORD, _RECORD_TMP) for name, entry in files.items()):
        return {}, False
    return files, True


def remove_written(folder: Path, names: Iterable[str], inside: Path) -> list[str]:
    """Remove the files kebr wrote in `folder`: those its record lists (RECORD), each only while it still
    has the size and mtime_ns recorded; in a folder without a record, the files `names` (the exact-name
    rule of folders written before records existed). Plain files only; a name may lie in a subfolder
    kebr writes ("text-encoder/tokenizer.json"). Then the record, each subfolder left empty, and `folder`
    itself when nothing else is in it. Refused (nothing removed) when a link lies between `inside` and
    `folder`; nothing is removed through a subfolder that is a link. Returns the names left in the folder
    (files kebr did not write; empty when the folder is gone)."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return []
    refuse_link_on_the_way(folder, inside)
    if not folder.is_dir():
        return [folder.name]  # a file where kebr writes a folder: someone else's
    record, kebrs_record = _read_record(folder)
    subfolders = set()
    for name in (record if record is not None else [*names, _RECORD_TMP]):
        path = folder / name
        parents = [folder / p for p in reversed(Path(name).parents) if str(p) != "."]
        if any(not stat.S_ISDIR(_lstat_mode(p)) for p in parents):
            continue  # a link (or a file) where kebr writes a subfolder: someone else's, and never followed
        subfolders.update(parents)
        if stat.S_ISREG(_lstat_mode(path)) and (record is None or _unchanged(path, record[name])):
            path.unlink()
    for sub in sorted(subfolders, key=lambda p: len(p.parts), reverse=True):
        if not os.listdir(sub):
            sub.rmdir()
    own_names = (RECORD, _RECORD_TMP) if kebrs_record else (_RECORD_TMP,)  # a record not kebr's stays
    left = sorted(set(os.listdir(folder)) - set(own_names))
    if kebrs_record and left and record:
        # What stays is someone else's: the record now lists nothing, so that no later removal (by the
        # exact-name rule, were the record gone) takes a file they put under one of kebr's names.
        _write_record_file(folder, {})
    elif not left:
        for name in own_names:
            if stat.S_ISREG(_lstat_mode(folder / name)):
                (folder / name).unlink()
        if not os.listdir(folder):
            folder.rmdir()
        else:
            left = sorted(os.listdir(folder))  # a link or folder named like the record: someone else's
    return left


def _unchanged(path: Path, recorded: list[int]) -> bool:
    """Whether the plain file `path` still has the size and mtime_ns its record gives."""
    info = path.lstat()
    return [info.st_size, info.st_mtime_ns] == recorded


def _lstat_mode(path: Path) -> int:
    """The file type bits of `path` itself (a link is a link), 0 when nothing is there."""
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return 0


def remove_written_or_refuse(folder: Path, names: Iterable[str], inside: Path, purpose: str) -> None:
    """`remove_written`, and one sentence when something kebr did not write keeps the folder, which a
    write needs (`purpose`, e.g. "to save checkpoint epoch-0003")."""
    left = remove_written(folder, names, inside)
    if left:
        shown = ", ".join(left[:5]) + (" …" if len(left) > 5 else "")
        raise KebrError(f"{folder} holds {shown}, which kebr did not write; it is needed {purpose}: move them away "
                        "(kebr removes only its own files).")
