"""Pretraining at scale (issue 30): RAM, time and disk against the number of clips, and a projection.

    python bench/scale.py --sizes 2000,20000,200000 --steps 40 --work /tmp/kebr-scale

For each size, a synthetic store (`kebr_core.data.synth`, small features: 4-d audio of 5–20 frames, 4-d
vision of 3–8 frames, all clips unlabeled) and a pretraining run in its own process (the embedded MiniLM,
frozen, batch 32, CPU, one thread) stopped after --steps steps (the same number at every size: several
epochs of a small store, part of one of a large one, as 200 K clips are 6,250 steps). Measured per run: peak RSS (VmHWM of the process; the CPU loader
has no worker processes, and their maxrss is added when there are), RSS once the text cache is built,
seconds per sample over the steps after the first 5, cache build time and size, store size.
The text cache on disk (`--text-cache disk`) at every size; in memory (the former default) at sizes up
to 20 K, for comparison.

Also: the text cache's storage precision (float32/float16/bfloat16) at the smallest size (error of the
states, the metrics of one epoch); streaming reads through the real loader (samples/s from the store
and from the disk text cache, with the files' pages dropped from the page cache by
posix_fadvise(DONTNEED), checked with fincore, then warm); a BERT-large-shaped encoder (random weights,
hidden 1024, 24 layers, 16 heads: the same FLOPs) for its cache build rate and the step time at d_t = 1024;
and a projection for VoxCeleb1 (132 K clips) and VoxCeleb2 (947 K) from the measured per-clip costs.
Writes --out (JSON) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_name  # noqa: E402
import numpy as np  # noqa: E402

BERT_LARGE = "random-bert:hidden=1024,layers=24,heads=16"  # bert-large-uncased's shape, random weights
WIDE_TCMF = "random-bert:hidden=1024,layers=1,heads=16"  # d_t = 1024 for the step; one layer: a cheap cache
WARMUP = 5


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else 0


# ───────────────────────── one pretraining run, in its own process ─────────────────────────


class StopBench(Exception):
    pass


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from kebr_core.config import RunConfig
    from kebr_core.recipes.pretrain import pretrain

    cfg = RunConfig.for_stage("pretrain")
    cfg.model.text_model = args.text_model
    # as many epochs as --steps needs (a small store's epoch is short), so every size runs the same steps:
    # RSS grows over the first few hundred steps (bench/rss_steps.py), so sizes compare at equal steps
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device = 1000, 32, "cpu"
    cfg.train.text_cache, cfg.train.text_cache_dtype = args.mode, args.dtype
    seen: dict = {"encode": [], "steps": [], "rss_cache": None}
    t0 = time.perf_counter()

    def progress(stage, done, total, info):
        now = time.perf_counter()
        if stage == "encode text":
            seen["encode"].append((now, done))
            if done == total:
                seen["rss_cache"] = status_kb("VmRSS")
        elif stage == "batch":
            seen["steps"].append(now)
            seen["total_steps"] = total
            if args.steps and len(seen["steps"]) >= args.steps:
                raise StopBench

    try:
        pretrain(args.store, args.run, cfg, progress=progress, force=True)
    except StopBench:
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB; DataLoader workers, if any
    enc = seen["encode"]
    per_batch = (enc[-1][0] - enc[0][0]) / max(len(enc) - 1, 1)
    steps = seen["steps"]
    timed = len(steps) - WARMUP
    result = {
        "peak_rss_mb": (status_kb("VmHWM") + children) / 1024,
        "rss_after_cache_mb": (seen["rss_cache"] or 0) / 1024,
        "cache_build_s": enc[-1][0] - enc[0][0] + per_batch,  # the first batch's event comes after it
        "setup_s": steps[0] - t0 if steps else None,  # masking, tokenising, cache: until the first step
        "tokens": None,
        "seconds_per_sample": (steps[-1] - steps[WARMUP - 1]) / (timed * 32) if timed > 0 else None,
        # the median step: robust to the few steps another process on this shared machine slows down
        "seconds_per_sample_median": float(np.median(np.diff(steps[WARMUP - 1:]))) / 32 if timed > 0 else None,
        "steps": len(steps), "steps_per_epoch": seen.get("total_steps"),
        "cache_bytes": folder_bytes(Path(args.run) / "text-cache"),
    }
    Path(args.result).write_text(json.dumps(result))


def run_child(store: Path, run: Path, mode: str, steps: int, text_model: str = "embedded", dtype: str = "float32") -> dict:
    result = run.with_suffix(".json")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "child", "--store", str(store), "--run", str(run), "--mode", mode, "--steps",
           str(steps), "--text-model", text_model, "--dtype", dtype, "--result", str(result)]
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    out = json.loads(result.read_text())
    out["wall_s"] = time.perf_counter() - t
    return out


# ───────────────────────── stores, streaming reads, precision ─────────────────────────


def make_store(work: Path, n: int) -> tuple[Path, float]:
    from kebr_core.data.synth import SynthConfig, generate_synth

    path = work / f"synth-{n}.h5"
    if path.exists():
        return path, float("nan")
    t = time.perf_counter()
    generate_synth(path, SynthConfig(n=0, unlabeled=n, audio_dim=4, vision_dim=4, audio_len=(5, 20), vision_len=(3, 8)))
    return path, time.perf_counter() - t


def drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_fraction(path: Path) -> float | None:
    """The fraction of the file's pages in the page cache (fincore), None without fincore."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)],
                             capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]) / max(int(out[1]), 1)
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return None


def streaming(store: Path, cache_folder: Path | None, batches: int) -> dict:
    """samples/s through the real loader (StoreDataset, Collator, EpochBatches' shuffled batches of 32, no
    worker) and the disk text cache's gather, cold (pages dropped) then warm."""
    import numpy as np
    import torch

    from kebr_core.config import ModelConfig
    from kebr_core.data.dataset import Collator, StoreDataset
    from kebr_core.distributed import DistInfo, EpochBatches
    from kebr_core.text_cache import DiskTextCache, STATES

    out = {}
    for label in ("cold", "warm"):
        if label == "cold":
            drop_pages(store)
            if cache_folder is not None:
                drop_pages(cache_folder / STATES)
        out[f"store_resident_before_{label}"] = resident_fraction(store)
        dataset = StoreDataset(store, text_encoder=lambda texts: [{"input_ids": [101, 102]} for _ in texts])
        collate = Collator.from_config(ModelConfig(), 0)
        order = list(EpochBatches(len(dataset), 32, 0, 1, DistInfo()))[:batches]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, collate_fn=collate)
        t = time.perf_counter()
        n = sum(len(b["index"]) for b in loader)
        out[f"store_samples_per_s_{label}"] = n / (time.perf_counter() - t)
        if cache_folder is not None:
            out[f"cache_resident_before_{label}"] = resident_fraction(cache_folder / STATES)
            cache = DiskTextCache(cache_folder, torch.device("cpu"))
            t = time.perf_counter()
            for b in order:
                cache.gather(torch.as_tensor(np.asarray(b)), 20)
            out[f"cache_samples_per_s_{label}"] = sum(map(len, order)) / (time.perf_counter() - t)
    return out


def precision(store: Path, n: int) -> dict:
    """The states of the first n texts in each storage dtype against float32: max |error| / max |state|."""
    import torch

    from kebr_core.data.store import FeatureStore
    from kebr_core.masking import tokenize_plain
    from kebr_core.text_encoder import load_text_encoder, load_tokenizer
    from kebr_core.text_cache import to_float32
    from kebr_core.training import build_text_cache

    torch.set_num_threads(1)
    texts = FeatureStore(store).texts[:n]
    ids = tokenize_plain(texts, load_tokenizer("embedded"), 50)
    exact = build_text_cache(load_text_encoder("embedded"), ids, torch.device("cpu")).flat
    out = {}
    for dtype in ("float16", "bfloat16"):
        rounded = exact.to(getattr(torch, dtype)).float()
        err = (rounded - exact).abs()
        out[dtype] = {"max_abs_error": float(err.max()), "max_abs_state": float(exact.abs().max()),
                      "median_rel_error": float((err / exact.abs().clamp_min(1e-6)).median())}
    del to_float32
    return out


def encode_rate(store: Path, model: str, n: int) -> dict:
    """Seconds per token of the frozen encoder over the first n texts (batches of 64, one thread)."""
    import torch

    from kebr_core.data.store import FeatureStore
    from kebr_core.masking import tokenize_plain
    from kebr_core.text_encoder import load_text_encoder, load_tokenizer
    from kebr_core.training import encode_texts

    torch.set_num_threads(1)
    ids = tokenize_plain(FeatureStore(store).texts[:n], load_tokenizer(model), 50)
    encoder = load_text_encoder(model)
    t = time.perf_counter()
    for _ in encode_texts(encoder, ids, torch.device("cpu")):
        pass
    seconds = time.perf_counter() - t
    tokens = sum(map(len, ids))
    return {"texts": len(ids), "tokens": tokens, "seconds": seconds, "seconds_per_token": seconds / tokens,
            "tokens_per_text": tokens / n}


# ───────────────────────── the projection ─────────────────────────


def projection(r: dict) -> list[dict]:
    """VoxCeleb1/2 with MiniLM and BERT-large from the measured per-clip costs (module docstring)."""
    sizes = r["sizes"]
    big = str(max(int(k) for k in sizes))
    disk = sizes[big]["disk"]
    tokens = 30  # tokens per VoxCeleb transcript (issue 30's figure); the synthetic texts are shorter
    store_per_clip = sizes[big]["store_bytes"] / int(big)
    small = str(min(int(k) for k in sizes))
    # what RAM still grows per clip (the store's ids and splits, the dataset's arrays): RSS once the cache
    # is built, largest size against smallest
    per_clip = max(disk["rss_after_cache_mb"] - sizes[small]["disk"]["rss_after_cache_mb"], 0) * 2**20 / (int(big) - int(small))
    r["ram_bytes_per_clip"] = per_clip
    rows = []
    for corpus, n in (("VoxCeleb1", 132_000), ("VoxCeleb2", 947_000)):
        for model, d, rate, step, weights_gb in (
            ("MiniLM (384)", 384, r["encode"]["minilm"]["seconds_per_token"], disk["seconds_per_sample"], 0.09),
            ("BERT-large (1024)", 1024, r["encode"]["bert_large"]["seconds_per_token"], r["wide_step"]["seconds_per_sample"],
             1.34),
        ):
            rows.append({
                "corpus": corpus, "clips": n, "encoder": model,
                "cache_gb_fp32": n * tokens * d * 4 / 1e9, "cache_gb_bf16": n * tokens * d * 2 / 1e9,
                "store_gb_small_features": n * store_per_clip / 1e9,
                "ram_gb_disk_cache": sizes[small]["disk"]["peak_rss_mb"] / 1024 + weights_gb - 0.09 + n * per_clip / 2**30,
                "ram_gb_memory_cache_fp32": (sizes[small]["disk"]["peak_rss_mb"] / 1024 + weights_gb - 0.09
                                             + n * per_clip / 2**30 + n * tokens * d * 4 / 2**30),
                "cache_build_h_cpu": n * tokens * rate / 3600, "epoch_h_cpu": n * step / 3600,
                "gpu": "unmeasured",
            })
    return rows


def report(r: dict) -> str:
    lines = [f"machine: {r['machine']}", f"load average at start: {r['loadavg']}", "",
             "| clips | cache | store MB | peak RSS MB | RSS after cache MB | cache build s | cache MB | s/sample mean | "
             "s/sample median step | steps |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, row in r["sizes"].items():
        for mode in ("memory", "disk"):
            if mode in row:
                m = row[mode]
                median = f"{m['seconds_per_sample_median'] * 1e3:.2f} ms" if m.get("seconds_per_sample_median") else "–"
                lines.append(f"| {int(n):,} | {mode} | {row['store_bytes'] / 1e6:.1f} | {m['peak_rss_mb']:.0f} | "
                             f"{m['rss_after_cache_mb']:.0f} | {m['cache_build_s']:.1f} | {m['cache_bytes'] / 1e6:.1f} | "
                             f"{m['seconds_per_sample'] * 1e3:.2f} ms | {median} | {m['steps']} (epoch: {m['steps_per_epoch']}) |")
    lines += ["", "| corpus | encoder | cache GB fp32 / bf16 | RAM GB disk cache / memory cache | cache build h (CPU, 1 thread) "
              "| epoch h (CPU, 1 thread) | GPU |", "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for p in r["projection"]:
        lines.append(f"| {p['corpus']} ({p['clips']:,}) | {p['encoder']} | {p['cache_gb_fp32']:.0f} / {p['cache_gb_bf16']:.0f} | "
                     f"{p['ram_gb_disk_cache']:.1f} / {p['ram_gb_memory_cache_fp32']:.0f} | {p['cache_build_h_cpu']:.1f} | "
                     f"{p['epoch_h_cpu']:.1f} | {p['gpu']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("child")
    for name in ("store", "run", "mode", "text_model", "dtype", "result"):
        c.add_argument(f"--{name.replace('_', '-')}", required=True)
    c.add_argument("--steps", type=int, required=True)
    parser.add_argument("--sizes", default="2000,20000,200000")
    parser.add_argument("--steps", type=int, default=40, help="training steps measured per size (after 5 of warm-up)")
    parser.add_argument("--memory-up-to", type=int, default=2000, help="also run the in-memory cache up to this size")
    parser.add_argument("--small", type=int, default=500, help="the store of the precision and BERT-large-width runs")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kebr-scale"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--report-only", action="store_true", help="recompute the projection and tables of --out")
    parser.add_argument("--sizes-only", action="store_true",
                        help="rerun only the per-size runs, keeping the other measurements of an earlier --out")
    args = parser.parse_args()
    if args.command == "child":
        return child(args)

    if args.report_only:
        return finish(json.loads(args.out.read_text()), args.out)
    args.work.mkdir(parents=True, exist_ok=True)
    r: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, shared", "loadavg": Path("/proc/loadavg").read_text().split()[:3],
               "steps": args.steps, "sizes": {}}
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        store, synth_s = make_store(args.work, n)
        row = {"store_bytes": store.stat().st_size, "synth_s": synth_s}
        modes = ["memory", "disk"] if n <= args.memory_up_to else ["disk"]
        for mode in modes:
            run = args.work / f"run-{n}-{mode}"
            shutil.rmtree(run, ignore_errors=True)
            row[mode] = run_child(store, run, mode, args.steps)
            print(n, mode, row[mode], flush=True)
        r["sizes"][str(n)] = row
    if args.sizes_only:  # the rest from the earlier run, and its sizes not run now
        earlier = json.loads(args.out.read_text())
        r["sizes"] = {**{n: row for n, row in earlier["sizes"].items() if n not in r["sizes"]}, **r["sizes"]}
        r["sizes"] = dict(sorted(r["sizes"].items(), key=lambda item: int(item[0])))
        r |= {k: v for k, v in earlier.items() if k not in ("machine", "loadavg", "steps", "sizes")}
        r["rest_loadavg"] = earlier.get("loadavg")
        for p in r.get("precision", {}).values():  # the key's earlier name (it was the median then too)
            if "mean_rel_error" in p:
                p["median_rel_error"] = p.pop("mean_rel_error")
        return finish(r, args.out)
    small, _ = make_store(args.work, args.small)
    large = args.work / f"synth-{sizes[-1]}.h5"
    caches = list((args.work / f"run-{sizes[-1]}-disk" / "text-cache").iterdir())
    r["streaming"] = streaming(large, caches[0] if caches else None, batches=200)
    print("streaming", r["streaming"], flush=True)
    r["precision"] = precision(small, args.small)
    r["dtype_epoch"] = {}
    for dtype in ("float32", "float16", "bfloat16"):  # one whole epoch of the small store each
        run = args.work / f"run-{args.small}-{dtype}"
        shutil.rmtree(run, ignore_errors=True)
        run_child(small, run, "disk", 0, dtype=dtype)
        text = (run / "metrics.csv").read_text().splitlines()
        r["dtype_epoch"][dtype] = dict(zip(text[0].split(","), map(float, text[1].split(","))))
    print("precision", r["precision"], r["dtype_epoch"], flush=True)
    r["encode"] = {"minilm": encode_rate(small, "embedded", 1000), "bert_large": encode_rate(small, BERT_LARGE, 64)}
    run = args.work / f"run-{args.small}-wide"
    shutil.rmtree(run, ignore_errors=True)
    r["wide_step"] = run_child(small, run, "disk", min(args.steps, 16), text_model=WIDE_TCMF)
    finish(r, args.out)


def finish(r: dict, out: Path) -> None:
    r["projection"] = projection(r)
    r.setdefault("loadavg_end", Path("/proc/loadavg").read_text().split()[:3])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    text = report(r)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
