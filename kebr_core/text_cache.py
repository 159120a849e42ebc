"""The frozen encoder's text cache on disk: RAM that does not grow with the corpus (docs/design.md §6).

A frozen encoder's last hidden states of every text are computed once (`training.encode_texts`) and read
per batch. In memory (`training.TextCache`) they cost N × L × dt × 4 bytes: ~115 GB for VoxCeleb2's 947 K
clips of ~30 tokens with BERT-large. `DiskTextCache` keeps them in a file instead and reads each batch's
rows with `os.preadv` (no memory map, so read pages stay in the kernel's page cache, reclaimable, and
out of the process's RSS); what stays in RAM per clip is nothing but what a batch reads.

Layout of one cache, `<root>/<key>/`:

    states.npy   (T, dt)  the token states of all texts back to back, in store order (the loader's
                          chunk order, `data.store`): float32, float16, or bfloat16 kept as its uint16 bits
    offsets.npy  (N + 1,) int64: text i is rows offsets[i] .. offsets[i+1] − 1
    cache.json   the key, the storage dtype, N, T, dt

The key (`cache_key`) is a SHA-256 of the encoder's weights, the token ids of every text (masked, for
pretraining) and the storage dtype: one cache serves resume, every fine-tuning seed, and every ablation
configuration with the same encoder and texts. A cache is built in `<key>.tmp-<pid>/` and renamed when
complete, so a killed build leaves no cache that looks finished; a folder or file that is a symbolic link
is refused, and nothing but `<key>` folders kebr built is read.

`make_text_cache` chooses memory or disk (`train.text_cache`; "auto": disk when the states would take
more than `AUTO_DISK_BYTES`) and the storage precision (`train.text_cache_dtype`; float32 is bit for bit
the in-memory cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from kebr_core.errors import KebrError
from kebr_core.io import refuse_links
from kebr_core.training import ProgressFn, TextCache, build_text_cache, encode_texts, no_progress

STATES = "states.npy"
OFFSETS = "offsets.npy"
META = "cache.json"
FORMAT = 1
# numpy's dtype for each storage precision (bfloat16 has none: its 16 bits are kept as uint16)
STORAGE = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}
TORCH_STORAGE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO_DISK_BYTES = 256 * 2**20  # "auto" keeps smaller caches in memory: a file would save little


def encoder_sha256(encoder: torch.nn.Module) -> str:
    """SHA-256 of the encoder's weights (names, dtypes, shapes, bytes): two encoders of the same name whose
    weights differ (one fine-tuned with --unfreeze) get different caches."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy())  # the buffer itself: no copy of a large embedding
    return digest.hexdigest()


def cache_key(encoder_digest: str, token_ids: Sequence[Sequence[int]], dtype: str) -> str:
    """The cache's name: SHA-256 of the format, the encoder's weights, every text's token ids and the dtype."""
    digest = hashlib.sha256(f"kebr-text-cache:{FORMAT}:{encoder_digest}:{dtype}:".encode())
    lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
    digest.update(lengths.tobytes())
    for ids in token_ids:
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def states_bytes(token_ids: Sequence[Sequence[int]], dt: int, dtype: str) -> int:
    """How many bytes the cache's states take (memory or disk): total tokens × dt × the dtype's size."""
    return sum(len(t) for t in token_ids) * dt * STORAGE[dtype].itemsize


def to_float32(rows: np.ndarray, dtype: str) -> Tensor:
    """Rows read from a cache of storage `dtype` (numpy, `STORAGE`) as a float32 tensor."""
    if dtype == "bfloat16":
        return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(rows).float()


class DiskTextCache:
    """A cache folder (module docstring) read per batch: `gather` and `replace` as `training.TextCache`.

    Per clip, RAM holds nothing: offsets are read through a memory map (8 bytes a clip of page cache,
    when touched), states with one `os.preadv` per sample of a batch. With the random word redrawn per
    epoch, `replace` keeps the redrawn texts' states in memory (the cache file, shared, is never
    changed), with a 4-byte row number per clip."""

    def __init__(self, folder: Path, device: torch.device):
        folder = Path(folder)
        damaged = (f"The text cache {folder} is damaged or not kebr's (remove that folder: the next run builds it "
                   "again)")
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
            self.folder, self.device, self.dtype = folder, device, meta["dtype"]
            self.dt, self.samples, self.tokens = int(meta["dt"]), int(meta["samples"]), int(meta["tokens"])
            self.offsets = np.load(folder / OFFSETS, mmap_mode="r")  # (N + 1,) int64
            with open(folder / STATES, "rb") as f:  # the .npy header: where row 0 starts
                np.lib.format.read_magic(f)
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                self._start = f.tell()
            self._row_bytes = self.dt * STORAGE[self.dtype].itemsize
            size = (folder / STATES).stat().st_size
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise KebrError(f"{damaged}: {type(e).__name__}.") from None
        if (shape != (self.tokens, self.dt) or dtype != STORAGE[self.dtype] or size != self._start + self.tokens * self._row_bytes
                or self.offsets.shape != (self.samples + 1,) or int(self.offsets[-1]) != self.tokens):
            raise KebrError(f"{damaged}: its files do not match its {META}.")
        self._fd = os.open(folder / STATES, os.O_RDONLY | os.O_NOFOLLOW)
        self._overlay_rows: np.ndarray | None = None  # (N,) int32: row of `_overlay`, −1 = read the file
        self._overlay: TextCache | None = None

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    def gather(self, index: Tensor, length: int) -> Tensor:
        """index (B,) store-order sample numbers, length = padded Lt of the batch → (B, Lt, dt) float32.

        The same numbers, bit for bit in float32, as `TextCache.gather`: rows start[i] .. start[i] + Lt − 1
        (the last row repeated past the end of the file), multiplied by the (B, Lt) validity mask."""
        idx = index.cpu().numpy().astype(np.int64)
        start, stop = self.offsets[idx], self.offsets[idx + 1]
        rows = np.empty((len(idx), length, self.dt), dtype=STORAGE[self.dtype])
        for r, s in enumerate(start.tolist()):
            m = max(min(length, self.tokens - s), 1)  # rows before the end of the file
            s = min(s, self.tokens - 1)
            os.preadv(self._fd, [memoryview(rows[r, :m]).cast("B")], self._start + s * self._row_bytes)
            if m < length:
                rows[r, m:] = rows[r, m - 1]  # `TextCache.gather` clamps past the end to the last row
        out = to_float32(rows, self.dtype)
        valid = torch.arange(length).unsqueeze(0) < torch.as_tensor(stop - start).unsqueeze(1)  # (B, Lt)
        out = out * valid.unsqueeze(-1).to(out.dtype)
        if self._overlay is not None:
            moved = self._overlay_rows[idx]
            chosen = moved >= 0
            if chosen.any():
                out[torch.as_tensor(chosen)] = self._overlay.gather(torch.as_tensor(moved[chosen]), length).cpu()
        return out.to(self.device)

    def replace(self, index: Sequence[int], other: TextCache) -> None:
        """Read samples `index` (store order) from `other` (their states, in `other`'s order) from now on,
        rounded to the storage dtype; the file stays as built (other runs share it)."""
        if self._overlay_rows is None:
            self._overlay_rows = np.full(self.samples, -1, dtype=np.int32)
        self._overlay_rows[:] = -1
        self._overlay_rows[np.asarray(index, dtype=np.int64)] = np.arange(len(index), dtype=np.int32)
        flat = other.flat.cpu().to(TORCH_STORAGE[self.dtype]).float()
        self._overlay = TextCache(flat=flat, offsets=other.offsets.cpu(), dt=other.dt)


def check_cache_root(root: Path) -> None:
    """Refuse (one sentence) a cache folder that is, or holds below it, a symbolic link: kebr never writes
    or reads its caches through one."""
    root = Path(root)
    if root.is_symlink():
        raise KebrError(f"{root} is a symbolic link (to {os.readlink(root)}); kebr keeps text caches only in a "
                        "folder of its own: remove the link or choose another --text-cache-dir.")
    if root.is_dir():
        refuse_links(root, [p.name for p in root.iterdir()])
    elif root.exists():
        raise KebrError(f"{root} is a file, not a folder of text caches; choose another --text-cache-dir.")


@torch.no_grad()
def build_disk_text_cache(
    encoder: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    device: torch.device,
    root: Path,
    dtype: str = "float32",
    *,
    key: str | None = None,
    batch_size: int = 64,
    progress: ProgressFn = no_progress,
) -> DiskTextCache:
    """The cache of these texts under `root` (`<root>/<key>/`), built once: opened when a complete one is
    there (a resumed run, another seed or configuration), else encoded batch by batch (`encode_texts`)
    into `<key>.tmp-<pid>/` and renamed. RAM: one batch of states, whatever N."""
    root = Path(root)
    check_cache_root(root)
    key = key or cache_key(encoder_sha256(encoder), token_ids, dtype)
    folder = root / key
    if (folder / META).is_file():
        return DiskTextCache(folder, device)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        np.save(tmp / OFFSETS, offsets)
        dt = int(encoder.config.hidden_size)
        storage = STORAGE[dtype]
        states = np.lib.format.open_memmap(tmp / STATES, mode="w+", dtype=storage, shape=(int(offsets[-1]), dt))
        del states  # only the header: the rows are written with pwrite, never mapped
        with open(tmp / STATES, "r+b") as f:
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            first = f.tell()
            for idx, counts, hidden in encode_texts(encoder, token_ids, device, batch_size, progress):
                stored = hidden.to(TORCH_STORAGE[dtype])
                if dtype == "bfloat16":
                    stored = stored.view(torch.int16)
                stored = stored.numpy()
                for r, i in enumerate(idx.tolist()):
                    os.pwrite(f.fileno(), stored[r, : counts[r]].tobytes(), first + int(offsets[i]) * dt * storage.itemsize)
            f.flush()
            os.fsync(f.fileno())
        meta = {"format": FORMAT, "key": key, "dtype": dtype, "samples": len(lengths), "tokens": int(offsets[-1]), "dt": dt}
        (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if (folder / META).is_file():  # another job built it meanwhile: theirs is the same
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder of an older format
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DiskTextCache(folder, device)


def make_text_cache(
    encoder: torch.nn.Module,
    token_ids: Sequence[Sequence[int]],
    device: torch.device,
    train_cfg,
    run_cache_dir: Path | None,
    progress: ProgressFn = no_progress,
) -> TextCache | DiskTextCache:
    """The frozen encoder's cache as `train_cfg` (a TrainConfig) asks: `text_cache` memory, disk or auto
    (disk above AUTO_DISK_BYTES when there is a folder for it), stored as `text_cache_dtype`, on disk in
    `text_cache_dir` or else `run_cache_dir` (the run's text-cache/)."""
    dtype = train_cfg.text_cache_dtype
    root = Path(train_cfg.text_cache_dir) if train_cfg.text_cache_dir else run_cache_dir
    mode = train_cfg.text_cache
    if mode == "auto":
        big = states_bytes(token_ids, int(encoder.config.hidden_size), dtype) > AUTO_DISK_BYTES
        mode = "disk" if big and root is not None else "memory"
    if mode == "disk":
        if root is None:
            raise KebrError("--text-cache disk needs a folder for the cache: give --text-cache-dir.")
        return build_disk_text_cache(encoder, token_ids, device, root, dtype, progress=progress)
    cache = build_text_cache(encoder, list(token_ids), device, progress=progress)
    if dtype != "float32":  # stored rounded, read as float32 (`TextCache.gather`)
        cache.flat = cache.flat.to(TORCH_STORAGE[dtype])
    return cache
