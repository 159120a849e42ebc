"""The validation layer of checkpoint files: a model folder's model.safetensors and config.json are checked
here, where `runs` reads them (`read_checkpoint_config`, `load_checkpoint_weights`), before anything is
built or allocated from them (README "Trust and safety").

A checkpoint is often a file someone else made. What it may do to kebr is bounded:

- model.safetensors (the format: an 8-byte little-endian header length N, N bytes of JSON naming each
  tensor's dtype, shape and byte range, then the data): a file shorter than its header, a header longer
  than `MAX_HEADER_BYTES` or than the file, a header that is not a JSON object of tensor entries, an
  unknown dtype, a shape or byte range that does not fit the data: one sentence naming the file, before
  safetensors reads it (its own errors are tracebacks: `SafetensorError`).
- config.json: a settings file read within `kebr_core.strict`'s bounds (size, nesting, integers), a JSON
  object whose model/mcc/train sections are a valid `RunConfig` (every size within `config.py`'s maxima),
  `includes_encoder` true or false, `features` (what `kebr predict` extracts) an object: anything else
  (a JSON list, another kind of file written over it) is one sentence naming the file.

The trainer state (trainer.pt) is checked by `checkpoints.load_trainer_state` (`weights_only=True`, its fields).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from kebr_core.config import RunConfig
from kebr_core.errors import KebrError
from kebr_core.strict import parse_settings_text, read_settings_data

# safetensors refuses headers over 100 MB itself; kebr's are a few KiB (one entry per weight).
MAX_HEADER_BYTES = 100 << 20
# Bytes per element of each dtype safetensors writes.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _natural(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_weights_file(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Check a safetensors file's layout (module docstring) without reading its data; return each
    tensor's (dtype, shape) by name. Every problem is one KebrError sentence naming the file."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise KebrError(f"Checkpoint weights {path} are missing or not a plain file.")
    size = path.stat().st_size

    def refuse(problem: str) -> KebrError:
        return KebrError(f"Checkpoint weights {path} are not a usable safetensors file: {problem}.")

    if size < 8:
        raise refuse("the file is empty" if size == 0 else f"the file has {size} bytes, fewer than its 8-byte header length")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise refuse(f"it declares a header of {header_len:,} bytes (at most {MAX_HEADER_BYTES:,})")
        if header_len > size - 8:
            raise refuse(f"it declares a header of {header_len:,} bytes but holds {size - 8:,} after the length (incomplete?)")
        raw = f.read(header_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse("its header is not UTF-8 text (not a safetensors file?)") from None
    try:
        header = parse_settings_text(text, "JSON", path, "The header of checkpoint weights")
    except KebrError:
        raise refuse("its header is not valid JSON (not a safetensors file?)") from None
    if not isinstance(header, dict):
        raise refuse("its header is not a JSON object")
    data_len, tensors = size - 8 - header_len, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shown = repr(name)[:80]
        if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= set(entry)):
            raise refuse(f"the entry {shown} is not a tensor (dtype, shape, data_offsets)")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise refuse(f"the tensor {shown} has the unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and len(shape) <= 32 and all(_natural(n) for n in shape)):
            raise refuse(f"the tensor {shown} has the shape {str(shape)[:60]}, not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(n) for n in offsets)
                and offsets[0] <= offsets[1] <= data_len):
            raise refuse(f"the tensor {shown} has the byte range {str(offsets)[:60]}, outside the {data_len:,} bytes of data")
        if (offsets[1] - offsets[0]) != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise refuse(f"the tensor {shown} of shape {tuple(shape)} and dtype {dtype} does not fill its byte range")
        tensors[name] = (dtype, tuple(shape))
    return tensors


def load_weights(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file (CPU), after `check_weights_file`; a file that is still refused
    by safetensors (tensors that overlap, data left over) is one sentence too."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_weights_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KebrError(f"Checkpoint weights {path} are not a usable safetensors file: {str(e)[:160]}.") from None


def read_config(path: Path) -> dict[str, Any]:
    """A checkpoint's config.json, checked (module docstring): a dict whose sections are a valid RunConfig."""
    path = Path(path)
    what = "Checkpoint configuration"
    data = read_settings_data(path, what, kind="JSON")
    if not isinstance(data, dict):
        raise KebrError(f"{what} {path} holds a JSON {type(data).__name__}, not the object of settings kebr writes "
                        "(was another file written over it?).")
    try:
        RunConfig.from_dict(data, source=f"{what} {path}")
    except KebrError as e:
        message = str(e)
        raise KebrError(message if str(path) in message else f"{what} {path}: {message}") from None
    if not isinstance(data.get("includes_encoder", False), bool):
        raise KebrError(f"{what} {path}: includes_encoder must be true or false.")
    features = data.get("features")
    names_ok = lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v))  # noqa: E731
    if features is not None and not (isinstance(features, dict) and isinstance(features.get("extractor") or {}, dict)
                                     and names_ok(features.get("audio_features")) and names_ok(features.get("vision_features"))):
        raise KebrError(f"{what} {path}: features must be an object with an extractor record and lists of feature "
                        "names, as kebr writes it.")
    return data
