"""User-facing errors.

Anything a user can cause (a bad file, a missing model, a wrong option) raises `KebrError` with one
sentence that names the file or value and the problem. The CLI prints that sentence and exits non-zero;
other exceptions are bugs and keep their traceback. OS errors a user can cause (a read-only or full
disk, a missing folder) are turned into one sentence by `os_error_message`.
"""

import errno as _errno
import os as _os
import re as _re


# How torch hands an exception from a DataLoader worker process to the main process: it builds a new one of
# the same type from "Caught <Type> in DataLoader worker process <N>.\nOriginal Traceback …" (torch/_utils.py,
# ExceptionWrapper.reraise), the worker's whole traceback, whose last lines are "<module>.<Type>: <sentence>".
_FROM_WORKER = _re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


class KebrError(Exception):
    """An error caused by the user's input, explained in one sentence. Raised in a DataLoader worker (a damaged
    sample read with workers > 0, the default on CUDA), it keeps that sentence, not the worker's traceback."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and (found := _FROM_WORKER.match(args[0])):
            text, name = args[0], found.group(1)
            last = max(text.rfind(f"\n{name}: "), text.rfind(f".{name}: "))  # the raised exception's own line
            if last >= 0:
                args = (text[text.index(f"{name}: ", last) + len(name) + 2:].strip(),)
        super().__init__(*args)


class EveryRankError(KebrError):
    """A KebrError that every rank of a DDP job raises alike (a decision broadcast from rank 0, a setting
    refused everywhere): rank 0 alone prints it."""


# What to do about each OS error a user can cause, by errno (the path is named before it).
_OS_ADVICE = {
    _errno.EACCES: "permission denied; choose a location you may write to (or read, for an input) or change its permissions",
    _errno.EPERM: "operation not permitted; choose another location or change its permissions",
    _errno.EROFS: "read-only file system; write the output somewhere writable",
    _errno.ENOSPC: "no space left on the device; free some space or write elsewhere, then rerun the same command",
    _errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere, then rerun the same command",
    _errno.ENOENT: "no such file or folder; check the path, or create the folder first",
    _errno.ENOTDIR: "a part of this path is a file, not a folder; check the path",
    _errno.EEXIST: "already exists and is a file, not a folder; check the path",
    _errno.EISDIR: "is a folder, not a file; give a file path",
    _errno.ENAMETOOLONG: "name too long for the file system; use a shorter path",
    _errno.ELOOP: "a symbolic link, and kebr does not write through links; remove it or choose another output",
}


def os_error_message(error: OSError) -> str:
    """One sentence for an OS error a user can cause (permissions, read-only or full disk, missing folder,
    name too long): the path and what to do. h5py reports errno and file name only inside its message."""
    text = str(error)
    code = error.errno
    if code is None:
        found = _re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    path = error.filename
    if path is None:
        found = _re.search(r"name = '([^']*)'", text)
        path = found.group(1) if found else None
    advice = _OS_ADVICE.get(code) if code is not None else None
    first_line = text.splitlines()[0] if text else type(error).__name__
    if advice is None:
        advice = error.strerror or first_line
    return f"{path}: {advice}." if path else f"{advice} ({first_line})."


def native_write_error(error: BaseException) -> str | None:
    """One sentence for a failed write that native code reports without an OSError, else None.

    safetensors raises SafetensorError("... (os error 28)"); torch.save raises RuntimeError from its
    C++ zip writer ("PytorchStreamWriter failed", "inline_container.cc", "basic_ios::clear"), which names
    neither the file nor the cause."""
    text = str(error)
    found = _re.search(r"os error (\d+)", text)
    if found:
        code = int(found.group(1))
        return f"writing a checkpoint failed: {_OS_ADVICE.get(code, _os.strerror(code))}."
    if any(marker in text for marker in ("PytorchStreamWriter", "inline_container.cc", "basic_ios")):
        return "writing a checkpoint failed (is the disk full or read-only?); free some space or write elsewhere."
    return None


def or_list(words) -> str:
    """Choices as a sentence lists them: ['a', 'b', 'c'] → 'a, b or c' (the registries' errors and help)."""
    words = list(words)
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)
