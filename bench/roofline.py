"""Benchmark: a roofline for kebr's CPU training step (issue 19, part 3).

How close is a pretraining / fine-tuning step to what this CPU's matrix units can do, and where does the
rest of the time go? For each stage, on the same MOSI-like store and model as `bench/train_step.py`
(real MOSI transcripts, random audio 33-d / vision 709-d of MOSI-like lengths, embedded MiniLM, K = 4
shared TCMF layers, FFN ×4, batch 32, texts ≤ 39 tokens, paper preset), through the recipe's own code
path (`kebr_core.training.train_epoch` on `train_step.kebr_setup`'s dataset, Collator and text cache):

  FLOPs per step   counted by `torch.utils.flop_counter.FlopCounterMode` over the timed batches (forward
                   and backward of every matmul-like op: the encoder when it trains, TCMF's projections,
                   attention scores and FFN, the heads; 2 FLOPs per multiply-add), split by module;
  step time        best of `--repeats` passes over the same `--steps` batches (same epoch seed, so the
                   same length-bucketed batches and dropout masks every pass), variants interleaved;
  matmul peak      `torch.mm` in fp32 and bf16 at the step's dominant matmul shapes (taken from the
                   profile, weighted by FLOPs) and at 2048², with the threads the step uses, same run;
  where time goes  `torch.profiler`'s top ops by self CPU time; the share of it in matmul kernels;
  floor            Σ over the step's matmul shapes of FLOPs / (bf16 or fp32 peak at that shape): the step
                   time if only matmuls cost time, each at `torch.mm`'s measured rate.

Variants (A/B, same run, same batches): fp32 eager (the default, with the recipes' fused Adam);
`bf16` = `--bf16` autocast on the CPU; `compile` = `torch.compile` of TCMF and the heads
(`nn.Module.compile`, dynamic shapes: the bucketed batches vary in length), fp32 and bf16;
`fp32+adam-loop` = Adam's per-parameter loop (torch's default on the CPU, kebr before the fused one). The authors' pipeline (`train_step.authors_epoch`,
fp32) is timed on the same samples for the epoch ratio of issue 19's target (≥ 6× for pretraining).

    python bench/roofline.py --variants fp32 bf16 fp32+adam-loop   # the run in bench/results/roofline.txt
    python bench/roofline.py                                  # every variant, both stages, 8 steps, best of 3
    python bench/roofline.py --stage pretrain --variants fp32 bf16
    python bench/roofline.py --no-authors --steps 4           # quicker

Writes bench/results/roofline.txt (the printed report, with the machine). Numbers and what they mean:
docs/bench-training.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from torch.utils.data import Subset
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_label_csv_option, check_label_csv, cpu_name  # noqa: E402
from train_step import (  # noqa: E402
    D_AUDIO, FIXED_TEXT, AuthorsDataset, authors_epoch, build_base_model, build_store, kebr_setup,
    optimizer_for, read_label_csv, stage_config,
)
from kebr_core.data.store import FeatureStore  # noqa: E402
from kebr_core.distributed import DistInfo  # noqa: E402
from kebr_core.training import train_epoch  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "roofline.txt"
VARIANTS = ("fp32", "bf16", "compile", "bf16+compile", "fp32+adam-loop")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}
BIG_SQUARE = 2048


# ───────────────────────── counting FLOPs ─────────────────────────


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows SDPA's CUDA kernels but not the CPU flash kernel the encoder uses without dropout.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_flops(fn) -> tuple[int, dict[str, int]]:
    """Run fn() under FlopCounterMode: (total FLOPs, forward FLOPs per top-level module of the model).

    The total counts forward and backward (backward ops run inside the mode too); 2 FLOPs per
    multiply-add. The per-module split ("fusion", "encoder", …) holds the forward ops only: the
    backward ops run from autograd's engine, outside any module's forward."""
    counter = FlopCounterMode(display=False, depth=2, custom_mapping=CPU_SDPA_FLOPS)
    with counter:
        fn()
    per_module = {name.split(".", 1)[1]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()
                  if name.startswith("KEBRModel.") and name.count(".") == 1}
    return counter.get_total_flops(), per_module


# ───────────────────────── matmul peak at given shapes ─────────────────────────


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, batch: int = 0, min_seconds: float = 0.15) -> float:
    """Best-of-3 GFLOP/s of torch.mm (or torch.bmm when batch > 0) of (m, k) @ (k, n) in `dtype`."""
    gen = torch.Generator().manual_seed(0)
    shape_a, shape_b = ((batch, m, k), (batch, k, n)) if batch else ((m, k), (k, n))
    a = torch.randn(shape_a, generator=gen).to(dtype)
    b = torch.randn(shape_b, generator=gen).to(dtype)
    mm = torch.bmm if batch else torch.mm
    flops = 2 * m * k * n * max(batch, 1)
    for _ in range(3):
        mm(a, b)
    once = time.perf_counter()
    mm(a, b)
    iters = max(1, int(min_seconds / max(time.perf_counter() - once, 1e-6)))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(iters):
            mm(a, b)
        best = min(best, (time.perf_counter() - start) / iters)
    return flops / best / 1e9


def mm_shape(name: str, shapes: list) -> tuple[int, int, int, int] | None:
    """(batch, m, k, n) of a profiled matmul event from its input shapes; None for other events."""
    if name == "aten::mm" and len(shapes) >= 2 and len(shapes[0]) == 2:
        (m, k), (_, n) = shapes[0], shapes[1]
        return 0, m, k, n
    if name == "aten::addmm" and len(shapes) >= 3 and len(shapes[1]) == 2:
        (m, k), (_, n) = shapes[1], shapes[2]
        return 0, m, k, n
    if name == "aten::bmm" and len(shapes) >= 2 and len(shapes[0]) == 3:
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return b, m, k, n
    return None


# ───────────────────────── one stage ─────────────────────────


def compile_fusion_and_heads(model) -> None:
    """torch.compile TCMF and both heads in place (state_dict keys unchanged); dynamic shapes, since
    length-bucketed batches differ in length."""
    for module in (model.fusion, model.pretrain_head, model.finetune_head):
        module.compile(dynamic=True)


def profile_epoch(epoch_fn) -> torch.profiler.profile:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True,
                                with_flops=True) as prof:
        epoch_fn()
    return prof


def summarise_profile(prof, steps: int, top: int = 10) -> dict:
    """Top ops by self CPU time, the matmul share of it, and FLOPs per matmul shape (per step)."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    top_ops = [(e.key, e.self_cpu_time_total / steps / 1e6, e.self_cpu_time_total / total, e.count // steps)
               for e in rows[:top]]
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    shapes: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0])  # shape → [FLOPs, self seconds] per step
    for e in prof.key_averages(group_by_input_shape=True):
        shape = mm_shape(e.key, e.input_shapes)
        if shape is not None and e.flops:
            shapes[shape][0] += e.flops / steps
            shapes[shape][1] += e.self_cpu_time_total / 1e6 / steps
    return {"total_s": total / 1e6 / steps, "matmul_share": matmul / total if total else 0.0, "top": top_ops,
            "shapes": dict(shapes)}


def run_stage(stage: str, store_path: Path, base_model, tokenizer, args, device: torch.device) -> dict:
    cfg = stage_config(stage, base_model, device, bf16=False, workers=0)
    data, collate, cache, fresh = kebr_setup(stage, store_path, base_model, tokenizer, cfg, device)
    bsz = cfg.train.batch_size
    rng = np.random.default_rng(1)
    order = rng.permutation(len(data))
    warm_idx, timed_idx = order[: 2 * bsz].tolist(), order[2 * bsz: (2 + args.steps) * bsz].tolist()
    warm, timed = Subset(data, warm_idx), Subset(data, timed_idx)
    steps = math.ceil(len(timed_idx) / bsz)

    sides = {}
    for variant in args.variants:
        model = copy.deepcopy(fresh)
        if "compile" in variant:
            compile_fusion_and_heads(model)
        variant_cfg = copy.deepcopy(cfg)
        variant_cfg.train.bf16 = variant.startswith("bf16")
        opt = optimizer_for(model, variant_cfg, stage, fused="adam-loop" not in variant)

        def epoch(subset, model=model, opt=opt, variant_cfg=variant_cfg):
            # epoch 1 every time: the same batches (and dropout streams) in every pass and variant
            return train_epoch(model, subset, collate, cache, opt, variant_cfg, device, 1, task=stage,
                               frozen=stage == "pretrain", info=DistInfo(), seed=cfg.train.seed)
        sides[variant] = epoch
    if args.authors:
        authors_model = copy.deepcopy(fresh)
        authors_opt = optimizer_for(authors_model, cfg, stage, fused=False)
        store = FeatureStore(store_path)
        authors_data = AuthorsDataset(store, store.indices(None if stage == "pretrain" else "train"), tokenizer,
                                      stage, device, seed=cfg.train.seed)
        sides["authors"] = lambda subset: authors_epoch(authors_model, Subset(authors_data, subset.indices),
                                                        authors_opt, cfg, stage, device, 1)

    # Warm-up (allocator, threads; torch.compile compiles here, timed as a one-off cost).
    warm_seconds = {}
    for name, epoch in sides.items():
        start = time.perf_counter()
        epoch(warm)
        epoch(warm)
        warm_seconds[name] = time.perf_counter() - start
    best = {name: math.inf for name in sides}
    for _ in range(args.repeats):  # interleaved: a busy moment on the shared CPU hits every variant
        for name, epoch in sides.items():
            start = time.perf_counter()
            epoch(timed)
            best[name] = min(best[name], time.perf_counter() - start)
    per_step = {name: t / steps for name, t in best.items()}

    flops, per_module = count_flops(lambda: sides["fp32"](timed) if "fp32" in sides else None)
    flops /= steps
    per_module = {k: v / steps for k, v in per_module.items()}
    profiles = {}
    for variant in ("fp32", "bf16"):
        if variant in sides:
            profiles[variant] = summarise_profile(profile_epoch(lambda: sides[variant](timed)), steps)
    return {"stage": stage, "steps": steps, "per_step": per_step, "warm_seconds": warm_seconds,
            "flops": flops, "per_module": per_module, "profiles": profiles}



# ───────────────────────── report ─────────────────────────


def measure_peaks(shapes: list[tuple[int, int, int, int]]) -> dict[tuple, dict[str, float]]:
    """GFLOP/s of torch.mm/bmm in fp32 and bf16 at each (batch, m, k, n), the two dtypes interleaved."""
    return {shape: {name: matmul_rate(*shape[1:], dtype=dtype, batch=shape[0])
                    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))} for shape in shapes}


def dominant_shapes(results: list[dict], share: float) -> list[tuple[int, int, int, int]]:
    """The fewest matmul shapes (by FLOPs, over all stages' fp32 profiles) that cover `share` of the FLOPs."""
    flops: dict[tuple, float] = defaultdict(float)
    for r in results:
        for shape, (f, _) in r["profiles"]["fp32"]["shapes"].items():
            flops[shape] += f
    chosen, covered, total = [], 0.0, sum(flops.values())
    for shape, f in sorted(flops.items(), key=lambda kv: -kv[1]):
        if covered >= share * total:
            break
        chosen.append(shape)
        covered += f
    return chosen


def matmul_floor(shapes: dict[tuple, list[float]], peaks: dict[tuple, dict[str, float]], dtype: str) -> float:
    """Seconds per step if only the matmuls cost time, each at torch.mm's rate at its shape (the big
    square's rate for shapes that were not measured)."""
    square = peaks[(0, BIG_SQUARE, BIG_SQUARE, BIG_SQUARE)][dtype]
    return sum(f / 1e9 / peaks.get(shape, {}).get(dtype, square) for shape, (f, _) in shapes.items())


def shape_name(shape: tuple[int, int, int, int]) -> str:
    b, m, k, n = shape
    return f"{b}×({m}×{k} @ {k}×{n})" if b else f"({m}×{k} @ {k}×{n})"


def report(results: list[dict], peaks: dict, args, machine: str, load: tuple[float, float]) -> list[str]:
    square = peaks[(0, BIG_SQUARE, BIG_SQUARE, BIG_SQUARE)]
    lines = [f"machine: {machine}", f"command: python {' '.join(sys.argv)}",
             f"model: embedded MiniLM (d_t 384), TCMF K=4 shared, FFN ×4, batch 32, texts ≤{FIXED_TEXT} tokens, "
             f"audio {D_AUDIO}-d, vision {args.d_vision}-d; {args.steps} steps per variant, best of {args.repeats}",
             "", "matmul peak, torch.mm/bmm, same run (GFLOP/s):", "| shape | fp32 | bf16 |", "|---|---:|---:|"]
    for shape, rate in peaks.items():
        lines.append(f"| {shape_name(shape)} | {rate['fp32']:.0f} | {rate['bf16']:.0f} |")
    for r in results:
        stage, steps, per_step = r["stage"], r["steps"], r["per_step"]
        prof = r["profiles"]["fp32"]
        floor32 = matmul_floor(prof["shapes"], peaks, "fp32")
        floor16 = matmul_floor(prof["shapes"], peaks, "bf16")
        mm_flops = sum(f for f, _ in prof["shapes"].values())
        lines += ["", f"## {stage}: {r['flops'] / 1e9:.1f} GFLOP per step (FlopCounterMode, forward + backward; "
                  f"profiler's matmul shapes: {mm_flops / 1e9:.1f}), {steps} steps",
                  "forward FLOPs by module: " + ", ".join(f"{k} {v / 1e9:.2f} G"
                                                  for k, v in sorted(r["per_module"].items(), key=lambda kv: -kv[1])),
                  f"matmul floor (step's matmul shapes at torch.mm's rate, nothing else): fp32 {floor32 * 1e3:.0f} ms, "
                  f"bf16 {floor16 * 1e3:.0f} ms",
                  "", "| variant | s/step | GFLOP/s | of fp32 peak (2048²) | of bf16 peak (2048²) | floor/time fp32 | "
                  "floor/time bf16 | vs fp32 | vs authors' | one-off s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, s in per_step.items():
            rate = r["flops"] / s / 1e9
            vs_authors = f"{per_step['authors'] / s:.2f}×" if "authors" in per_step else "–"
            lines.append(f"| {name} | {s:.3f} | {rate:.0f} | {rate / square['fp32']:.0%} | {rate / square['bf16']:.0%} | "
                         f"{floor32 / s:.0%} | {floor16 / s:.0%} | {per_step['fp32'] / s:.2f}× | {vs_authors} | "
                         f"{r['warm_seconds'][name]:.1f} |")
        for variant, p in r["profiles"].items():
            lines += ["", f"top ops by self CPU time, {variant} ({p['total_s'] * 1e3:.0f} ms of self time per step; "
                      f"matmul kernels {p['matmul_share']:.0%}):", "| op | ms/step | share | calls/step |",
                      "|---|---:|---:|---:|"]
            lines += [f"| {key} | {sec * 1e3:.1f} | {share:.0%} | {calls} |" for key, sec, share, calls in p["top"]]
        lines += ["", f"matmul shapes by FLOPs (fp32 profile; top 6 of {len(prof['shapes'])}):",
                  "| shape | GFLOP/step | achieved GFLOP/s (fp32 step) |", "|---|---:|---:|"]
        for shape, (f, sec) in sorted(prof["shapes"].items(), key=lambda kv: -kv[1][0])[:6]:
            lines.append(f"| {shape_name(shape)} | {f / 1e9:.2f} | {f / 1e9 / max(sec, 1e-9):.0f} |")
    lines += ["", f"load average (1 min) at start {load[0]:.1f}, at end {load[1]:.1f} on {os.cpu_count()} cores"
              + (" (shared with other work: compare ratios, not seconds)" if max(load) > (os.cpu_count() or 1) else "")]
    return lines


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return cpu_name()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{fields.get('Model name', cpu_name()).strip()} ({', '.join(isa) or 'no AVX-512'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_label_csv_option(parser)
    parser.add_argument("--stage", choices=["both", "pretrain", "finetune"], default="both")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--authors", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the authors' pipeline (fp32) on the same samples")
    parser.add_argument("--d-vision", type=int, default=709, help="vision feature width (OpenFace: 709)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per variant; the fastest counts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--shape-share", type=float, default=0.3,
                        help="measure the peak at the fewest matmul shapes covering this share of the FLOPs")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    check_label_csv(parser, args.label_csv)
    if "fp32" not in args.variants:
        parser.error("--variants must include fp32 (the FLOPs are counted on it)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    machine = (f"{lscpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads "
               f"(matmuls and steps alike); mkldnn bf16 {'yes' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'}")
    print(machine, flush=True)
    load_start = os.getloadavg()[0]
    stages = ["pretrain", "finetune"] if args.stage == "both" else [args.stage]
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "mosi-like.h5"
        build_store(store_path, read_label_csv(args.label_csv), args.d_vision)
        from kebr_core.text_encoder import load_tokenizer

        base_model, tokenizer = build_base_model("embedded", args.d_vision), load_tokenizer("embedded")
        results = []
        for stage in stages:
            print(f"{stage}: timing {', '.join(args.variants)}{', authors' if args.authors else ''} …", flush=True)
            results.append(run_stage(stage, store_path, base_model, tokenizer, args, device))
    shapes = dominant_shapes(results, args.shape_share) + [(0, BIG_SQUARE, BIG_SQUARE, BIG_SQUARE)]
    peaks = measure_peaks(shapes)
    lines = report(results, peaks, args, machine, (load_start, os.getloadavg()[0]))
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
