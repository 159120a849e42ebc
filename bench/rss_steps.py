"""Does pretraining's memory grow with the steps it runs? RSS after every step over several epochs (issue 30).

    python bench/rss_steps.py --store /tmp/kebr-scale/synth-2000.h5 --epochs 6

bench/scale.py compares peak RSS across corpus sizes at a fixed number of steps; this checks the other axis:
one store (the 2 K synthetic store of bench/scale.py: `python bench/scale.py --sizes 2000` makes it),
the embedded MiniLM frozen, disk text cache, batch 32, CPU, one thread, several epochs, and the process's
VmRSS after each step, printed every 25 steps with the epoch. A leak grows without end; the allocator's
warm-up levels off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_name  # noqa: E402


def rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--every", type=int, default=25, help="print every this many steps")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from kebr_core.config import RunConfig
    from kebr_core.recipes.pretrain import pretrain

    cfg = RunConfig.for_stage("pretrain")
    cfg.model.text_model = "embedded"
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device, cfg.train.text_cache = args.epochs, 32, "cpu", "disk"
    seen: list[int] = []
    print(f"machine: {cpu_name()}; store {args.store}; {args.epochs} epochs\n\n| step | epoch | RSS MB |\n| ---: | ---: | ---: |")

    def progress(stage, done, total, info):
        if stage == "batch":
            seen.append(rss_mb())
            if len(seen) % args.every == 0:
                print(f"| {len(seen)} | {info.get('epoch')} | {seen[-1]} |", flush=True)

    with tempfile.TemporaryDirectory() as run:
        pretrain(args.store, Path(run) / "run", cfg, progress=progress)
    half = len(seen) // 2
    print(f"\nsteps {len(seen)}: RSS {seen[0]} MB after the first, {max(seen[:half])} MB most in the first half, "
          f"{max(seen[half:])} MB most in the second half, {seen[-1]} MB after the last")


if __name__ == "__main__":
    main()
