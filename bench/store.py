"""Benchmark: a feature store larger than 1 GB read through the DataLoader, against an in-memory list.

    python bench/store.py                      # 20,000 MOSI-shaped samples (≈2.4 GB), 2 workers, batch 32
    python bench/store.py --n 2000             # a quick run
    python bench/store.py --sweep              # chunk size × compression: write speed, size, read speed

Samples have MOSI-like shapes with variable lengths: audio 50–400 frames × 33, vision 10–55 × 709.
Frames are random float32 (incompressible, so the file really is as large as its data). The store is
built in a child process, so the reading process's peak RSS (VmHWM of the main process and of each
DataLoader worker) measures reading only. The baseline is the same DataLoader and collate over a
Python list of the same samples held in memory (a subset of --baseline-n samples, since the whole
store does not fit the memory target).
Targets: ≥ 2,000 samples/s through the DataLoader and peak RSS < 1 GB while the store is > 1 GB.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kebr_core.data.dataset import Collator, StoreDataset  # noqa: E402
from kebr_core.data.store import FeatureStore, Sample, StoreWriter  # noqa: E402

D_AUDIO, D_VISION = 33, 709
MAX_AUDIO, MAX_VISION = 400, 55


def build(path: Path, n: int, compression: str | None, chunk_kb: int, seed: int = 0) -> float:
    """Write n random MOSI-shaped samples; returns seconds."""
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with StoreWriter(path, [f"a{i}" for i in range(D_AUDIO)], [f"v{i}" for i in range(D_VISION)],
                     source="bench", flush_every=512, flush_seconds=1e9, compression=compression,
                     chunk_bytes=chunk_kb * 1024) as writer:
        for i in range(n):
            la, lv = int(rng.integers(50, MAX_AUDIO + 1)), int(rng.integers(10, MAX_VISION + 1))
            writer.add(Sample(
                id=f"clip{i:06d}", text=f"bench sample number {i}",
                audio=rng.standard_normal((la, D_AUDIO), dtype=np.float32),
                vision=rng.standard_normal((lv, D_VISION), dtype=np.float32),
                label=float(rng.uniform(-3, 3)), split="train",
            ))
    return time.perf_counter() - start


def _build_child(path: str, n: int, compression: str | None, chunk_kb: int, queue: mp.Queue) -> None:
    queue.put(build(Path(path), n, compression, chunk_kb))


def encode(texts: list[str]) -> list[dict]:
    """A stand-in tokenizer: 12–40 ids per text (the store, not tokenisation, is what is measured)."""
    return [{"input_ids": [101] + [1000 + (i + k) % 500 for k in range(12 + i % 29)] + [102]} for i in range(len(texts))]


class ListDataset(Dataset):
    """The baseline: items already in memory."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        return self.items[k]


def _hwm_kb(pid: int) -> int:
    """Peak resident set (VmHWM) of a process, in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def loader_rate(dataset: Dataset, workers: int, batch: int, max_batches: int | None) -> tuple[float, int, list[int]]:
    """(samples/s, samples, peak RSS kB of each worker) for one shuffled pass."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        collate_fn=Collator(50, MAX_AUDIO, MAX_VISION), persistent_workers=False,
                        generator=torch.Generator().manual_seed(0))
    seen = 0
    it = iter(loader)
    first = next(it)  # worker start-up is not throughput
    workers_pids = _children(os.getpid()) if workers else []
    worker_hwm = {pid: 0 for pid in workers_pids}
    start = time.perf_counter()
    for b, batch_dict in enumerate(it):
        seen += batch_dict["label"].shape[0]
        for pid in workers_pids:  # workers exit with the last batch: keep their peak as we go
            try:
                worker_hwm[pid] = max(worker_hwm[pid], _hwm_kb(pid))
            except OSError:
                pass
        if max_batches is not None and b + 1 >= max_batches:
            break
    elapsed = time.perf_counter() - start
    del it, first
    return seen / elapsed, seen, list(worker_hwm.values())


def sweep(tmp: Path, n: int) -> None:
    print(f"sweep: {n} samples per store; write MB/s, size, single-process random reads/s")
    print(f"{'compression':>11} {'chunk KB':>8} {'write MB/s':>10} {'size MB':>8} {'reads/s':>8}")
    for compression in (None, "lzf", "gzip"):
        for chunk_kb in (64, 256, 1024):
            path = tmp / f"sweep-{compression}-{chunk_kb}.h5"
            seconds = build(path, n, compression, chunk_kb)
            size = path.stat().st_size / 1e6
            store = FeatureStore(path)
            order = np.random.default_rng(0).permutation(len(store))[:1000]
            start = time.perf_counter()
            for i in order:
                store.audio(i), store.vision(i)
            reads = len(order) / (time.perf_counter() - start)
            store.close()
            print(f"{str(compression):>11} {chunk_kb:>8} {size / seconds:>10.0f} {size:>8.0f} {reads:>8.0f}")
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="samples in the store")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--baseline-n", type=int, default=2_000, help="samples held in memory for the baseline")
    parser.add_argument("--max-batches", type=int, default=None, help="stop each pass after this many batches")
    parser.add_argument("--compression", choices=["none", "lzf", "gzip"], default="none")
    parser.add_argument("--chunk-kb", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store file")
    parser.add_argument("--sweep", action="store_true", help="measure chunk size × compression on --n samples")
    args = parser.parse_args()
    compression = None if args.compression == "none" else args.compression

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        if args.sweep:
            sweep(tmp, args.n)
            return
        path = tmp / "bench.h5"
        queue: mp.Queue = mp.get_context("fork").Queue()
        child = mp.get_context("fork").Process(target=_build_child, args=(str(path), args.n, compression, args.chunk_kb, queue))
        child.start()
        child.join()
        write_s = queue.get()
        size = path.stat().st_size
        print(f"store: {args.n} samples, {size / 1e9:.2f} GB on disk ({'>' if size > 1e9 else 'NOT >'} 1 GB), "
              f"written in {write_s:.1f} s ({size / 1e6 / write_s:.0f} MB/s), compression={args.compression}, "
              f"chunks ≈{args.chunk_kb} KB")

        dataset = StoreDataset(path, text_encoder=encode)
        rate, seen, worker_hwm = loader_rate(dataset, args.workers, args.batch, args.max_batches)
        main_hwm = _hwm_kb(os.getpid())
        total_mb = (main_hwm + sum(worker_hwm)) / 1024
        print(f"store DataLoader ({args.workers} workers, batch {args.batch}): {rate:,.0f} samples/s over {seen} samples")
        print(f"peak RSS: main {main_hwm / 1024:.0f} MB, workers {', '.join(f'{w / 1024:.0f}' for w in worker_hwm) or '-'} MB; "
              f"sum {total_mb:.0f} MB (shared pages counted once per process, so an upper bound)")

        subset = min(args.baseline_n, len(dataset))
        items = [dataset[k] for k in range(subset)]
        base_rate, base_seen, _ = loader_rate(ListDataset(items), args.workers, args.batch, args.max_batches)
        print(f"in-memory list DataLoader ({subset} samples): {base_rate:,.0f} samples/s over {base_seen} samples")
        print(f"ratio store / in-memory: {rate / base_rate:.2f}")
        ok = rate >= 2000 and total_mb < 1024 and size > 1e9
        print(f"targets (≥2000 samples/s, RSS < 1 GB, store > 1 GB): {'met' if ok else 'NOT met'}")
        dataset.store.close()
        if args.keep:
            kept = Path.cwd() / "bench-store.h5"
            os.replace(path, kept)
            print(f"kept {kept}")


if __name__ == "__main__":
    main()
