"""Benchmark: cross-modal attention through SDPA (fused kernels) vs the explicit path of
`kebr_core.modules.attention.attention_with_dropout` (scores, masked softmax, dropout, matmul).

On the CPU the module takes the explicit path when dropout is on (SDPA's CPU fallback rescales the
keys on every call); on CUDA it always calls SDPA. This times both on the same inputs, forward and
backward, with and without dropout, and checks that without dropout they give the same output; a
sample with no valid frame is included (the module zeroes its row).

Shapes: MOSI-like text queries 50×768 attending to 400 audio frames, batch 32, one head (the paper's).

    python bench/attention.py --device cuda            # bf16 autocast, as training on a GPU
    python bench/attention.py --device cpu --tiny      # a quick run of the same code on the CPU
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kebr_core.modules.attention import attention_with_dropout  # noqa: E402

from mcc import timed  # noqa: E402  (bench/mcc.py: the fns take turns, median ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="small shapes (a smoke run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    batch, text_len, width, frames = (4, 8, 32, 20) if args.tiny else (32, 50, 768, 400)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 1, text_len, width, generator=gen).to(device).requires_grad_()
    k = torch.randn(batch, 1, frames, width, generator=gen).to(device).requires_grad_()
    v = torch.randn(batch, 1, frames, width, generator=gen).to(device).requires_grad_()
    lengths = torch.randint(1, frames + 1, (batch,), generator=gen)
    lengths[1] = 0  # no valid frame: the module unmasks frame 0 and zeroes the row afterwards
    valid = torch.arange(frames)[None, :] < lengths[:, None]
    attend = valid.clone()
    attend[:, 0] |= ~valid.any(dim=1)
    mask = attend[:, None, None, :].to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def run(fn, p: float):
        def step() -> torch.Tensor:
            q.grad = k.grad = v.grad = None
            with autocast:
                out = fn(q, k, v, mask, p)
            out.float().square().sum().backward()
            return out
        return step

    def sdpa(q, k, v, mask, p):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    with torch.no_grad(), autocast:
        fused, explicit = sdpa(q, k, v, mask, 0.0), attention_with_dropout(q, k, v, mask, 0.0)
    difference = (fused.float() - explicit.float()).abs().max().item()
    finite = bool(torch.isfinite(fused).all() and torch.isfinite(explicit).all())
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, bf16 {'on' if device.type == 'cuda' else 'off'}; batch {batch}, "
          f"text {text_len}×{width}, {frames} frames (one sample without a valid frame)")
    print(f"check (dropout 0): max |SDPA − explicit| {difference:.2e}; all finite: {finite}")
    for p in (0.0, 0.1):
        ms_fused, ms_explicit = timed([run(sdpa, p), run(attention_with_dropout, p)], device, args.reps)
        print(f"dropout {p}: fwd+bwd SDPA {ms_fused:8.3f} ms, explicit {ms_explicit:8.3f} ms "
              f"(explicit/SDPA {ms_explicit / ms_fused:.2f}×)")


if __name__ == "__main__":
    main()
