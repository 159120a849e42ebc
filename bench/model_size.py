"""Benchmark: what one `best-model/` costs on disk, by how the text encoder was used (issue 27, item 11).

An ablation writes one best-model/ per configuration, and `kebr eval` one per run. This measures its
size with the embedded all-MiniLM-L6-v2 (22.7 M parameters) on a tiny synthetic store, 1 epoch, 1 seed:

    frozen, by name        --freeze-encoder, the embedded model's name: the encoder resolves on every
                           machine, so best-model/ holds TCMF, the heads and the tokenizer only
    frozen, local path     --freeze-encoder, the same model given as a local folder: the folder must
                           carry the encoder (text-encoder/model.safetensors)
    fine-tuned (default)   the encoder was trained: its weights differ per model and are stored once,
                           in model.safetensors

`--repo DIR` measures another checkout (e.g. the code before self-contained folders) with the same
commands; the sizes are bytes of every file below best-model/.

    python bench/model_size.py [--repo /path/to/kebr] [--json out.json]
    (results: bench/results/model_size.txt)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import cpu_name  # noqa: E402

HERE = Path(__file__).resolve().parents[1]


def folder_bytes(folder: Path) -> dict[str, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    side = sum(p.stat().st_size for p in files if "text-encoder" in p.relative_to(folder).parts)
    weights = (folder / "model.safetensors").stat().st_size
    return {"total": sum(p.stat().st_size for p in files), "model.safetensors": weights, "text-encoder/": side}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=HERE, help="the kebr checkout to measure (default: this one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the sizes as JSON here")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from kebr_core.data.synth import SynthConfig, generate_synth
    from kebr_core.text_encoder import embedded_model_dir

    env = dict(os.environ, PYTHONPATH=str(args.repo.resolve()))
    cases = {"frozen, by name": ["--freeze-encoder"],
             "frozen, local path": ["--freeze-encoder", "--text-model", str(embedded_model_dir())],
             "fine-tuned (default)": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "synth.h5"
        generate_synth(store, SynthConfig(n=60, audio_len=(5, 10), vision_len=(2, 5)))
        for name, options in cases.items():
            run = Path(tmp) / name.replace(" ", "-").replace(",", "")
            cmd = [sys.executable, "-m", "kebr_cli", "-q", "eval", "-d", str(store), "-o", str(run), "--epochs", "1",
                   "--seeds", "1", "--batch-size", "16", "--device", "cpu", *options]
            subprocess.run(cmd, env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)  # cwd: not this checkout
            sizes[name] = folder_bytes(run / "best-model")
    print(f"best-model/ size, embedded all-MiniLM-L6-v2, kebr at {args.repo.resolve()}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs (sizes do not depend on it)")
    print(f"{'encoder':22} {'total MB':>9} {'model.safetensors MB':>21} {'text-encoder/ MB':>17}")
    for name, s in sizes.items():
        print(f"{name:22} {s['total'] / 1e6:9.2f} {s['model.safetensors'] / 1e6:21.2f} {s['text-encoder/'] / 1e6:17.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(sizes, indent=2) + "\n")


if __name__ == "__main__":
    main()
