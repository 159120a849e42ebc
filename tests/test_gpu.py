"""Checks that need a CUDA GPU (marker `cuda`: skipped without one; `bench/gpu.sh` runs them).

- a training step with `torch.cuda.set_sync_debug_mode("error")`, frozen and fine-tuned encoder,
  under the default bf16 autocast: the step never waits for the GPU (tests/test_sync.py counts the
  same on the CPU);
- SDPA's memory-efficient kernel with a sample that has no valid frame: finite, a zero row, the same
  as the CPU's explicit path;
- pretrain → resume → eval on the GPU, then the GPU-made run resumed on a machine without CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kebr_core.config import RunConfig
from kebr_core.data.dataset import Collator, StoreDataset
from kebr_core.distributed import DistInfo
from kebr_core.masking import tokenize_plain
from kebr_core.model import KEBRModel
from kebr_core.text_encoder import load_tokenizer
from kebr_core.modules.attention import CrossModalAttention
from kebr_core.recipes.finetune import finetune
from kebr_core.recipes.pretrain import pretrain
from kebr_core.training import build_text_cache, seed_everything, train_epoch
from tests.conftest import TINY_BERT, write_tiny_store

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("unfreeze", [False, True], ids=["frozen", "fine-tuned encoder"])
def test_training_step_under_sync_debug_mode_error(unfreeze: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step of an epoch runs with sync debug mode "error" (any .item(), D2H copy, nonzero, …
    raises); it is switched off for the epoch's one intended sync, the end-of-epoch all-reduce read."""
    import kebr_core.distributed as distributed

    device = torch.device("cuda")
    store = write_tiny_store(tmp_path / "s.h5", n=60)
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.head_hidden, cfg.model.d_audio, cfg.model.d_vision = TINY_BERT, 16, 7, 5
    cfg.train.batch_size, cfg.train.unfreeze, cfg.train.workers = 8, unfreeze, 0
    seed_everything(0)
    tokenizer = load_tokenizer(TINY_BERT)
    plain = StoreDataset(store, "train")
    token_ids = tokenize_plain(plain.store.texts, tokenizer, cfg.model.max_text_len)
    dataset = StoreDataset(store, "train", text_encoder=lambda texts: [{"input_ids": token_ids[i]} for i in plain.indices])
    model = KEBRModel(cfg.model, cfg.mcc).to(device)
    model.set_encoder_trainable(unfreeze)
    cache = None if unfreeze else build_text_cache(model.encoder, token_ids, device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def epoch(number: int) -> dict:
        return train_epoch(model, dataset, Collator(), cache, opt, cfg, device, number, task="finetune",
                           frozen=not unfreeze, info=DistInfo(), seed=0)

    epoch(1)  # warm-up: CUDA context, cuBLAS handles, kernel selection
    original = distributed.all_reduce_sum

    def end_of_epoch(t, info):
        torch.cuda.set_sync_debug_mode("default")
        return original(t, info)

    monkeypatch.setattr(distributed, "all_reduce_sum", end_of_epoch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        row = epoch(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items() if k != "epoch")


def test_sdpa_memory_efficient_kernel_with_a_sample_without_frames() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    attention = CrossModalAttention(d_text=64, d_modality=33, heads=2).eval()
    text = torch.randn(4, 12, 64)
    modality = torch.randn(4, 30, 33)
    mask = torch.arange(30)[None, :] < torch.tensor([30, 7, 0, 1])[:, None]  # sample 2 has no frame
    want, _ = attention(text, modality, mask)  # the CPU's path
    cuda = attention.cuda()
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        text_cuda = text.cuda().requires_grad_()
        got, _ = cuda(text_cuda, modality.cuda(), mask.cuda())
        got.float().sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(text_cuda.grad).all()
    assert (got[2] == 0).all()
    torch.testing.assert_close(got.float().cpu(), want, atol=3e-2, rtol=3e-2)  # bf16 vs float32


def test_pretrain_resume_eval_on_gpu_then_resume_on_cpu(tmp_path: Path) -> None:
    """A run made on the GPU resumes there, fine-tunes there, and resumes on a machine that has no CUDA
    (its trainer state, saved from CUDA tensors, is loaded onto the CPU)."""
    store = write_tiny_store(tmp_path / "s.h5", n=60)
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.head_hidden = TINY_BERT, 16
    cfg.train.epochs, cfg.train.batch_size, cfg.train.checkpoint_every, cfg.train.device = 2, 8, 1, "cuda"
    pretrain(store, tmp_path / "pre", cfg)
    cfg.train.epochs = 3
    resumed = pretrain(store, tmp_path / "pre", cfg, resume=True)
    assert resumed.epochs_done == 3
    ft = RunConfig.from_dict(cfg.to_dict())
    ft.train.epochs = 2
    result = finetune(store, tmp_path / "ft", ft, checkpoint=tmp_path / "pre", seeds=[0])
    assert torch.isfinite(torch.tensor(result.summary["mae"][0]))
    on_cpu = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
import torch
assert not torch.cuda.is_available()
from kebr_core.config import RunConfig
from kebr_core.recipes.pretrain import pretrain
cfg = RunConfig.from_dict(json.loads(open({str(tmp_path / "pre" / "config.json")!r}).read()))
cfg.train.device, cfg.train.epochs = "cpu", 4
print(pretrain({str(store)!r}, {str(tmp_path / "pre")!r}, cfg, resume=True).epochs_done)
"""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", on_cpu], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "4"
    rows = (tmp_path / "pre" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert json.loads((tmp_path / "pre" / "config.json").read_text())["train"]["device"] == "cpu"
