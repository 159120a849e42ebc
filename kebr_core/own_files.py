"""Removing what kebr wrote, and nothing else (README "Trust and safety"; the rule of `kebr_core.io`).

`--force`, checkpoint retention (`--keep-checkpoints`) and the clean-up of a killed write remove files.
Users put other things beside them (notes in a run folder, `checkpoints/` on a scratch disk shared with
other work), so a removal here is by the run's own layout, never by a pattern or a whole tree:

- only the files a writer names (`runs.MODEL_FOLDER_FILES`: model.safetensors, config.json, …), each
  only when it is a plain file (a link or a folder of that name is someone else's and stays);
- a folder only when nothing else is left in it: a foreign `epoch-0001/weights.bin` keeps its folder,
  and a write that needs the name is refused in one sentence naming what is there;
- never through a symbolic link: when any folder between the run folder and what is removed is a link
  (to a scratch disk, say), nothing is removed and the reason is one sentence.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from kebr_core.errors import KebrError


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


def remove_written(folder: Path, names: Iterable[str], inside: Path) -> list[str]:
    """Remove the files `names` that kebr writes in `folder` (plain files only; a name may lie in a
    subfolder kebr writes, "text-encoder/tokenizer.json"), each subfolder left empty, then `folder` itself
    when nothing else is in it. Refused (nothing removed) when a link lies between `inside` and `folder`;
    nothing is removed through a subfolder that is a link. Returns the names left in the folder (files
    kebr did not write; empty when the folder is gone)."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return []
    refuse_link_on_the_way(folder, inside)
    if not folder.is_dir():
        return [folder.name]  # a file where kebr writes a folder: someone else's
    subfolders = set()
    for name in names:
        path = folder / name
        parents = [folder / p for p in reversed(Path(name).parents) if str(p) != "."]
        if any(not stat.S_ISDIR(_lstat_mode(p)) for p in parents):
            continue  # a link (or a file) where kebr writes a subfolder: someone else's, and never followed
        subfolders.update(parents)
        if stat.S_ISREG(_lstat_mode(path)):
            path.unlink()
    for sub in sorted(subfolders, key=lambda p: len(p.parts), reverse=True):
        if not os.listdir(sub):
            sub.rmdir()
    left = sorted(os.listdir(folder))
    if not left:
        folder.rmdir()
    return left


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
