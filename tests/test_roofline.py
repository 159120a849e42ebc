"""bench/roofline.py's FLOP count against a hand count of one TCMF layer (Eq. 3–8), and CPU bf16
autocast (`--bf16`) against float32 on a tiny model: the same epoch, numbers close."""

from __future__ import annotations

import copy
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
from kebr_core.modules.tcmf import TCMFLayer
from kebr_core.training import train_epoch
from tests.conftest import TINY_BERT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
roofline = pytest.importorskip("roofline")


def tcmf_layer_macs(b: int, lt: int, la: int, lv: int, dt: int, da: int, dv: int, mult: int) -> int:
    """Multiply-adds of one TCMF layer's forward pass, by hand from Eq. 3–8."""
    queries = 2 * b * lt * dt * dt  # W_Q for the audio and the vision attention (Eq. 3)
    keys_values = 2 * b * la * da * dt + 2 * b * lv * dv * dt  # W_K, W_V of each modality (Eq. 4–5)
    attention = 2 * b * lt * la * dt + 2 * b * lt * lv * dt  # Q Kᵀ and softmax(·) V (Eq. 6)
    ffn = 2 * b * lt * dt * mult * dt  # Linear(dt, mult·dt) and Linear(mult·dt, dt) (Eq. 8)
    return queries + keys_values + attention + ffn


@pytest.mark.parametrize("heads", [1, 2])
def test_flop_count_of_one_tcmf_layer_is_the_hand_count(heads: int) -> None:
    b, lt, la, lv, dt, da, dv, mult = 3, 5, 11, 7, 16, 6, 9, 4
    layer = TCMFLayer(dt, da, dv, heads=heads, ffn_mult=mult, dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(b, lt, dt, generator=gen, requires_grad=True)
    audio, vision = torch.randn(b, la, da, generator=gen), torch.randn(b, lv, dv, generator=gen)
    audio_mask = torch.arange(la)[None, :] < torch.tensor([11, 4, 1])[:, None]
    vision_mask = torch.ones(b, lv, dtype=torch.bool)
    forward_only, _ = roofline.count_flops(
        lambda: layer(text.detach(), audio, audio_mask, vision, vision_mask))
    step, _ = roofline.count_flops(
        lambda: layer(text, audio, audio_mask, vision, vision_mask).fused.square().sum().backward())
    macs = tcmf_layer_macs(b, lt, la, lv, dt, da, dv, mult)
    assert forward_only == 2 * macs
    # Backward: every matmul's two operands need a gradient (the text, the layer norms' outputs, the
    # weights), so each costs twice its forward; SDPA's CPU (flash) kernel also recomputes Q Kᵀ.
    recomputed_scores = b * lt * la * dt + b * lt * lv * dt
    assert step == 3 * 2 * macs + 2 * recomputed_scores


def test_mm_shape_reads_the_profiler_input_shapes() -> None:
    assert roofline.mm_shape("aten::mm", [[4, 5], [5, 6]]) == (0, 4, 5, 6)
    assert roofline.mm_shape("aten::addmm", [[6], [4, 5], [5, 6], [], []]) == (0, 4, 5, 6)
    assert roofline.mm_shape("aten::bmm", [[3, 4, 5], [3, 5, 6]]) == (3, 4, 5, 6)
    assert roofline.mm_shape("aten::add", [[4, 5], [4, 5]]) is None


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bf16 support in oneDNN")
def test_cpu_bf16_epoch_is_close_to_float32(tiny_store: Path) -> None:
    """The recipe's epoch (`train_epoch`) under `train.bf16` on the CPU: the same batches and dropout
    streams as float32, a loss within bf16's rounding (8 bits of mantissa: ~0.4 % per operation)."""
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.d_audio, cfg.model.d_vision = TINY_BERT, 7, 5
    cfg.train.batch_size, cfg.train.workers, cfg.train.unfreeze = 8, 0, True
    tokenizer = load_tokenizer(TINY_BERT)
    data = StoreDataset(tiny_store, split="train",
                        text_encoder=lambda texts: [{"input_ids": ids} for ids in tokenize_plain(texts, tokenizer, 20)])
    collate = Collator(20, cfg.model.max_audio_len, cfg.model.max_vision_len, pad_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    base = KEBRModel(cfg.model, cfg.mcc)
    rows = {}
    for bf16 in (False, True):
        model, run_cfg = copy.deepcopy(base), copy.deepcopy(cfg)
        run_cfg.train.bf16 = bf16
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rows[bf16] = [train_epoch(model, data, collate, None, opt, run_cfg, torch.device("cpu"), epoch,
                                  task="finetune", frozen=False, info=DistInfo(), seed=0) for epoch in (1, 2)]
    for fp32_row, bf16_row in zip(rows[False], rows[True]):
        assert bf16_row["loss"] != fp32_row["loss"]  # bf16 did run
        assert bf16_row["loss"] == pytest.approx(fp32_row["loss"], rel=0.02)
        assert bf16_row["task_l1"] == pytest.approx(fp32_row["task_l1"], rel=0.02)


def test_recipes_use_adams_loop_and_fused_gives_its_update() -> None:
    """Both recipes' optimisers are `training.adam`'s per-parameter loop; the fused kernel (bench option)
    gives the loop's updates."""
    from kebr_core.recipes.setup import finetune_optimizer, pretrain_optimizer
    from kebr_core.training import adam

    cfg = RunConfig()
    cfg.model.text_model, cfg.model.d_audio, cfg.model.d_vision = TINY_BERT, 7, 5
    cfg.train.unfreeze, cfg.train.weight_decay = True, 0.01
    torch.manual_seed(0)
    model = KEBRModel(cfg.model, cfg.mcc)
    assert not pretrain_optimizer(model, cfg).defaults["fused"]
    assert not finetune_optimizer(model, cfg)[0].defaults["fused"]

    models = {fused: copy.deepcopy(model.fusion).eval() for fused in (True, False)}  # eval: no dropout
    opts = {fused: adam([{"params": list(m.parameters()), "lr": 1e-2}], 0.01, fused=fused) for fused, m in models.items()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        text, audio, vision = (torch.randn(2, n, d, generator=gen) for n, d in ((4, 32), (6, 7), (3, 5)))
        masks = torch.ones(2, 6, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
        for fused, m in models.items():
            m(text, audio, masks[0], vision, masks[1]).fused.square().mean().backward()
            opts[fused].step()
            opts[fused].zero_grad()
    start = dict(model.fusion.named_parameters())
    for (name, p_fused), p_loop in zip(models[True].named_parameters(), models[False].parameters()):
        assert not torch.equal(p_fused, start[name])  # the steps moved it
        torch.testing.assert_close(p_fused, p_loop, rtol=1e-5, atol=1e-6)
