"""Benchmark: vectorised MCC loss vs a per-sample loop in the style of the authors' code.

Forward + backward at batch 32 with MOSI-like shapes: fused text 50×768, audio 400×33, vision 55×709,
random valid lengths (padding at the end). Compared:

  (a) loop: for each sample, slice its valid part, flatten, L2-normalise, materialise the tiled shorter
      vector of each pair (torch `repeat` + zero padding up to the longer one), take dot products,
      branch in Python on `c >= 0` (a host-device sync per sample on CUDA), reference-form
      arithmetic, then the mean;
  (b) `kebr_core.modules.mcc.mcc_loss` (align "tile", form "reference"): one batched computation.

Both compute the same numbers (checked below). Then one row per MCC form (`FORMS`: paper, reference,
mean-cosine, balanced), each the vectorised `mcc_loss` with align "tile", timed in turns: the forms
differ only in a few element-wise operations on (B,) cosines, so their rows should match. With --step, also a fine-tuning-step proxy (a 4-layer
shared TCMF forward + backward at the same shapes, plus the loss) to put the loss's cost in context.
The timed variants take turns in every repetition, so load from other processes hits them alike.

    python bench/mcc.py [--device cpu|cuda] [--reps 20] [--threads N] [--step]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from kebr_core.config import MCCConfig
from kebr_core.modules.mcc import FORMS, mcc_loss
from kebr_core.modules.tcmf import TCMF

B, LT, DT, LA, DA, LV, DV = 32, 50, 768, 400, 33, 55, 709


def tiled_cosine_loop(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Authors' style: normalise both, materialise the shorter one tiled and zero-padded, dot."""
    u = F.normalize(u, dim=0)
    v = F.normalize(v, dim=0)
    if u.numel() < v.numel():
        u, v = v, u
    r = u.numel() // v.numel()
    tiled = torch.cat([v.repeat(r), v.new_zeros(u.numel() - r * v.numel())])
    return (u * tiled).sum() / tiled.norm()


def mcc_loop(fused, t_len, audio, a_len, vision, v_len, g: float) -> torch.Tensor:
    """Per-sample Python loop (lengths as Python ints, as a loop over a padded batch needs)."""
    losses = []
    for i in range(fused.shape[0]):
        t = fused[i, : t_len[i]].reshape(-1)
        c_a = tiled_cosine_loop(t, audio[i, : a_len[i]].reshape(-1))
        c_v = tiled_cosine_loop(t, vision[i, : v_len[i]].reshape(-1))
        if c_a >= 0 and c_v >= 0:  # Python branch on a tensor value: a device sync per sample
            f = torch.abs(torch.cos(math.pi * ((c_a + c_v) / 2 + g) * torch.exp(0.5 * torch.abs(c_a - c_v))))
        else:
            f = 1 + torch.abs(c_a) + torch.abs(c_v)
        losses.append(f)
    return torch.stack(losses).mean()


def timed(fns, device: torch.device, reps: int, warmup: int = 3) -> list[float]:
    """Median wall time in milliseconds of each fn in fns. The fns take turns in every repetition,
    so on a shared machine a burst of load hits all of them alike and their ratio stays fair."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, fn_times in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            fn_times.append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--step", action="store_true", help="also time a fine-tuning-step proxy (slow on CPU)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    t_len = torch.randint(5, LT + 1, (B,), generator=gen)
    a_len = torch.randint(20, LA + 1, (B,), generator=gen)
    v_len = torch.randint(5, LV + 1, (B,), generator=gen)
    fused = torch.randn(B, LT, DT, generator=gen).to(device).requires_grad_()
    audio = torch.randn(B, LA, DA, generator=gen).to(device)
    vision = torch.randn(B, LV, DV, generator=gen).to(device)
    text_mask = (torch.arange(LT)[None] < t_len[:, None]).to(device)
    audio_mask = (torch.arange(LA)[None] < a_len[:, None]).to(device)
    vision_mask = (torch.arange(LV)[None] < v_len[:, None]).to(device)
    cfg = MCCConfig(form="reference", align="tile")
    lens = (t_len.tolist(), a_len.tolist(), v_len.tolist())

    def run_loop() -> torch.Tensor:
        fused.grad = None
        loss = mcc_loop(fused, lens[0], audio, lens[1], vision, lens[2], cfg.g)
        loss.backward()
        return loss

    def run_vec() -> torch.Tensor:
        fused.grad = None
        loss = mcc_loss(fused, text_mask, audio, audio_mask, vision, vision_mask, cfg).loss
        loss.backward()
        return loss

    loss_loop = run_loop().detach()
    grad_loop = fused.grad.clone()
    loss_vec = run_vec().detach()
    grad_vec = fused.grad.clone()
    print(f"device {device}, threads {torch.get_num_threads()}, batch {B}: "
          f"fused {LT}x{DT}, audio {LA}x{DA}, vision {LV}x{DV}")
    print(f"check: |loss diff| {abs(loss_loop - loss_vec).item():.2e}, "
          f"max |grad diff| {(grad_loop - grad_vec).abs().max().item():.2e}")

    ms_loop, ms_vec = timed([run_loop, run_vec], device, args.reps)
    print(f"MCC fwd+bwd  loop (authors' style): {ms_loop:8.2f} ms")
    print(f"MCC fwd+bwd  vectorised mcc_loss:   {ms_vec:8.2f} ms")
    print(f"speed-up: {ms_loop / ms_vec:.1f}x")

    def run_form(form: str):
        form_cfg = MCCConfig(form=form, align="tile")

        def run() -> torch.Tensor:
            fused.grad = None
            loss = mcc_loss(fused, text_mask, audio, audio_mask, vision, vision_mask, form_cfg).loss
            loss.backward()
            return loss
        return run

    for form, ms in zip(FORMS, timed([run_form(form) for form in FORMS], device, args.reps)):
        print(f"MCC fwd+bwd  vectorised, form {form:<12} {ms:8.2f} ms")

    if args.step:
        tcmf = TCMF(DT, DA, DV, layers=4, shared=True, dropout=0.1).to(device)
        text = torch.randn(B, LT, DT, generator=gen).to(device)

        def run_step(loss_fn) -> None:
            tcmf.zero_grad(set_to_none=True)
            out = tcmf(text, audio, audio_mask, vision, vision_mask)
            task = out.fused.mean()  # stands in for the head + L1 loss
            (task + loss_fn(out.fused)).backward()

        def with_loop(x: torch.Tensor) -> torch.Tensor:
            return mcc_loop(x, lens[0], audio, lens[1], vision, lens[2], cfg.g)

        def with_vec(x: torch.Tensor) -> torch.Tensor:
            return mcc_loss(x, text_mask, audio, audio_mask, vision, vision_mask, cfg).loss

        reps = max(3, args.reps // 4)
        ms_step_loop, ms_step_vec = timed(
            [lambda: run_step(with_loop), lambda: run_step(with_vec)], device, reps, warmup=1
        )
        print(f"TCMF(K=4) + MCC step proxy, loop MCC:       {ms_step_loop:8.2f} ms")
        print(f"TCMF(K=4) + MCC step proxy, vectorised MCC: {ms_step_vec:8.2f} ms")
        print(f"step speed-up: {ms_step_loop / ms_step_vec:.2f}x")


if __name__ == "__main__":
    main()
