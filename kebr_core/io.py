"""Writing a user's output file so that it exists only when complete (importers, `kebr data synth`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

from kebr_core.errors import KebrError


@contextlib.contextmanager
def atomic_output(out: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield `OUT.tmp` to write; rename it to OUT on success, delete it on any failure.

    OUT may not be one of `inputs` (not even with `overwrite`). A `StoreWriter` opened on `OUT.tmp`
    builds it from `OUT.tmp.creating`; a leftover of either, from a killed run, is removed first."""
    out = Path(out)
    inputs = {Path(p).resolve() for p in inputs}
    if out.resolve() in inputs:
        raise KebrError(f"Output {out} is also an input; write to a new file.")
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
