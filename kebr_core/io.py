"""Writing outputs safely: a user's output file exists only when complete (`atomic_output`: importers,
`kebr data synth`; `atomic_write_text`: a run's text files, which jobs may write at once, each through its
own temporary name, fsynced), and kebr writes only what it created (`check_output`, `refuse_links`, `refuse_foreign`,
`open_for_writing`: never onto an input, never through a symbolic link, never over someone else's file)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from kebr_core.errors import KebrError


@contextlib.contextmanager
def atomic_output(out: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield `OUT.tmp` to write; rename it to OUT on success, delete it on any failure.

    OUT may not be one of `inputs` (not even with `overwrite`). A `StoreWriter` opened on `OUT.tmp`
    builds it from `OUT.tmp.creating`; a leftover of either, from a killed run, is removed first."""
    out = Path(out)
    check_output(out, inputs, option="Output")
    if out.exists() and not overwrite:
        raise KebrError(f"Output {out} already exists; choose another path or allow overwriting (--force).")
    if out.is_dir():
        raise KebrError(f"Output {out} is a directory, not a file path.")
    tmp = out.with_name(out.name + ".tmp")
    leftovers = (tmp, tmp.with_name(tmp.name + ".creating"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        for path in leftovers:
            with contextlib.suppress(OSError):  # a read-only folder: report the first error, not this one
                path.unlink(missing_ok=True)
        raise


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, tmp: Path | None = None) -> None:
    """Write (UTF-8), fsync, rename: a reader sees the old or the new file, never half of one. The temporary
    name is the writer's own, so jobs writing the same file at once (seed shards' config.json) do not mix;
    `tmp` fixes it instead (a model folder's record, whose leftover removal knows by name). The temporary
    file is opened without following a link (O_NOFOLLOW): one planted under its name is refused, not
    written through, and left where it is."""
    tmp = tmp or path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# ───────────────────────── the rule: kebr writes only what it created ─────────────────────────
# Every command with an output checks it here (docs/architecture.md, "The run-directory contract"): an
# output is never one of the command's inputs, files are never written through a symbolic link, and
# a folder's files that kebr did not write are never overwritten or deleted.


def _input_files(path: Path, suffixes: Sequence[str] | None) -> Iterator[Path]:
    """`path` itself, and for a folder every file below it (a model folder's config.json is an input too),
    or only those ending in one of `suffixes` (a folder of videos: its videos)."""
    yield path
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for name in files:
                if suffixes is None or Path(name).suffix.lower() in suffixes:
                    yield Path(root) / name


def same_file(a: Path, b: Path) -> bool:
    """The same file by resolved path, or by device and inode (a hard link, or a link's target)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: they cannot be the same file
        return False


def check_output(out: str | Path, inputs: Iterable[str | Path | None], option: str = "--out",
                 folder: bool = False, suffixes: Sequence[str] | None = None) -> None:
    """Refuse (one sentence) an output that is one of the command's inputs.

    Each input is a file or a folder (then every file below it counts, e.g. a model folder's
    config.json; `suffixes` limits them to those, e.g. a folder of videos). A file output may not be any
    of those files: the same path after resolving links, or the same inode (a hard link). A folder output
    (`folder=True`: a run directory) may not be an input nor hold one below it (`--force` there removes
    run files). Inputs that are None or do not exist are skipped."""
    out = Path(out)
    for given in inputs:
        if given is None:
            continue
        given = Path(given)
        if not given.exists():
            continue
        if folder and out.exists() and same_file(out, given):
            raise KebrError(f"{option} {out} is the input {given}; give a new folder for the run (e.g. runs/NAME).")
        if folder and out.exists() and out.resolve() in given.resolve().parents:
            raise KebrError(f"{option} {out} holds the input {given}; give a new folder for the run (e.g. runs/NAME).")
        if folder:
            continue
        for path in _input_files(given, suffixes):
            if same_file(out, path):
                what = f"({given})" if path == given else f"({path}, a file of {given})"
                raise KebrError(f"{option} {out} is also an input {what}; write to a new file.")


def json_with_keys(path: Path, keys: set[str]) -> bool:
    """Whether `path` holds JSON that kebr writes: an object with `keys`, or a list of such objects (a
    file of predictions, an extraction report). What kebr would replace is recognised by its content."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    items = data if isinstance(data, list) else [data]
    return all(isinstance(item, dict) and keys <= set(item) for item in items)


def check_replaceable(out: str | Path, looks_ours: Callable[[Path], bool], what: str, option: str = "--out") -> None:
    """An existing file output is replaced only when it is kebr's (`looks_ours`, e.g. `json_with_keys`):
    a file of someone else's, or a symbolic link, is refused in one sentence."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not (out.is_file() and looks_ours(out))):
        raise KebrError(f"{option} {out} exists and is not {what} kebr wrote; kebr overwrites only its own files: "
                        "choose another path (or remove it).")


def refuse_links(root: Path, names: Iterable[str]) -> None:
    """Refuse (one sentence) when any of `names` below the output folder `root`, or anything below one of
    them, is a symbolic link: kebr writes (and --force removes) there, and never through a link."""
    root = Path(root)
    for name in names:
        top = root / name
        paths = [top]
        if top.is_dir() and not top.is_symlink():
            paths += [Path(r) / n for r, dirs, files in os.walk(top) for n in dirs + files]
        for path in paths:
            if path.is_symlink():
                raise KebrError(f"{path} is a symbolic link (to {os.readlink(path)}); kebr does not write through links "
                                "in its output folder: remove the link or choose another --out.")


def foreign_files(root: Path, names: Iterable[str]) -> list[str]:
    """Which of `names` exist in the folder `root` (as files, folders or links): in a folder kebr has no
    record of writing, these are someone else's and may not be overwritten."""
    return [name for name in names if os.path.lexists(Path(root) / name)]


def refuse_foreign(root: Path, names: list[str]) -> None:
    """Refuse, in one sentence naming the folder and (the first five of) the files, to write where `names`
    (found by `foreign_files`, or a caller's own record) are someone else's."""
    if names:
        shown = ", ".join(names[:5]) + (" …" if len(names) > 5 else "")
        raise KebrError(f"{root} holds {shown}, which kebr did not write there; kebr overwrites only its own files: "
                        "move them or choose another --out.")


def open_for_writing(path: str | Path, append: bool = False, newline: str | None = None) -> IO[str]:
    """Open a text file kebr writes in its output folder, never through a symbolic link (O_NOFOLLOW:
    a planted link to a file elsewhere is an error, ELOOP, not a write there)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, "a" if append else "w", encoding="utf-8", newline=newline)


def path_record(path: str | Path) -> dict[str, Any]:
    """What identifies a file or folder kebr wrote, so that a later run removes or replaces it only while
    it is still as kebr left it: a file's size, mtime (ns) and SHA-256; a folder's file count and the
    SHA-256 of its listing (each file's relative path, size and mtime; links are listed, not followed)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        listing = sorted((p.relative_to(path).as_posix(), p.lstat().st_size, p.lstat().st_mtime_ns)
                         for p in path.rglob("*") if p.is_symlink() or not p.is_dir())
        return {"files": len(listing), "sha256": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}
    info = path.lstat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def matches_record(path: str | Path, record: object) -> bool:
    """Whether `path` exists, is no link, and is still what `record` (`path_record`, read back) says."""
    path = Path(path)
    return (isinstance(record, dict) and not path.is_symlink() and (path.is_file() or path.is_dir())
            and path_record(path) == record)
