"""bf16 autocast (the default on CUDA), checked on the CPU's bf16 autocast: MCC and the heads' last
layer stay in float32, `kebr predict` runs the encoder in the precision training used, and the text
encoder gets a padding mask that needs no host-device sync."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kebr_core.config import MCCConfig, RunConfig
from kebr_core.data.store import Sample
from kebr_core.model import KEBRModel, encoder_attention_mask
from kebr_core.text_encoder import load_text_encoder
from kebr_core.modules.mcc import mcc_loss
from kebr_core.recipes.predict import Scorer
from tests.conftest import TINY_BERT

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < lengths[:, None]


def mosi_like_batch(seed: int = 0, batch: int = 8) -> dict[str, torch.Tensor]:
    """float32 inputs of MOSI-like sizes (a fused text of 30×64, audio 120×33, vision 40×70): long
    flattened vectors, where bf16 dot products lose the most."""
    gen = torch.Generator().manual_seed(seed)
    lt, dt, la, da, lv, dv = 30, 64, 120, 33, 40, 70
    return dict(
        fused=torch.randn(batch, lt, dt, generator=gen) + 0.5,
        text_mask=lengths_to_mask(torch.randint(5, lt + 1, (batch,), generator=gen), lt),
        audio=torch.randn(batch, la, da, generator=gen) + 0.5,
        audio_mask=lengths_to_mask(torch.randint(10, la + 1, (batch,), generator=gen), la),
        vision=torch.randn(batch, lv, dv, generator=gen) + 0.5,
        vision_mask=lengths_to_mask(torch.randint(3, lv + 1, (batch,), generator=gen), lv),
        value_audio=torch.randn(batch, la, dt, generator=gen) + 0.5,
        value_vision=torch.randn(batch, lv, dt, generator=gen) + 0.5,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("align", ["tile", "projected", "authors"])
def test_mcc_under_bf16_autocast_is_the_float32_result(align: str, device: str) -> None:
    """The same float32 inputs with and without bf16 autocast: cosines within 1e-5 (autocast would cast
    the matmul/vecdot to bf16, ~1e-3 off), the loss too, and its gradient."""
    inputs = {k: v.to(device) for k, v in mosi_like_batch().items()}
    fused = inputs.pop("fused").requires_grad_()
    cfg = MCCConfig(align=align)
    plain = mcc_loss(fused, **inputs, cfg=cfg)
    (grad_plain,) = torch.autograd.grad(plain.loss, fused)
    with torch.autocast(device, dtype=torch.bfloat16):
        mixed = mcc_loss(fused, **inputs, cfg=cfg)
    (grad_mixed,) = torch.autograd.grad(mixed.loss, fused)
    for name in ("c_a", "c_v", "per_sample"):
        assert getattr(mixed, name).dtype == torch.float32
        torch.testing.assert_close(getattr(mixed, name), getattr(plain, name), atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed.loss, plain.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_mixed, grad_plain, atol=1e-6, rtol=1e-4)


def tiny_model(dropout: float = 0.0) -> KEBRModel:
    cfg = RunConfig().model
    cfg.text_model, cfg.d_audio, cfg.d_vision, cfg.head_hidden, cfg.dropout = TINY_BERT, 7, 5, 16, dropout
    torch.manual_seed(0)
    return KEBRModel(cfg, MCCConfig()).eval()


def tiny_batch(batch: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    text_len = torch.tensor([7, 3, 5, 7, 2, 4])[:batch]
    return {
        "input_ids": torch.randint(1000, 2000, (batch, 7), generator=gen),
        "attention_mask": lengths_to_mask(text_len, 7),
        "audio": torch.randn(batch, 9, 7, generator=gen), "audio_mask": lengths_to_mask(torch.full((batch,), 9), 9),
        "vision": torch.randn(batch, 4, 5, generator=gen), "vision_mask": lengths_to_mask(torch.full((batch,), 4), 4),
        "mask_pos": torch.ones(batch, dtype=torch.long),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task, head", [("finetune", "finetune_head"), ("pretrain", "pretrain_head")])
def test_heads_predict_in_float32_under_bf16_autocast(task: str, head: str, device: str) -> None:
    """pred is float32 and is the float32 last Linear of the head's (bf16) hidden layer, not a bf16
    number (bf16 steps are 1/64 for |y| in [2, 4))."""
    model = tiny_model().to(device)
    head_module = getattr(model, head)
    seen = {}
    head_module.net[-1].register_forward_pre_hook(lambda m, args: seen.update(hidden=args[0]))
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        out = model({k: v.to(device) for k, v in tiny_batch().items()}, task=task)
    assert out.pred.dtype == torch.float32 and seen["hidden"].dtype == torch.float32
    last = head_module.net[-1]
    expected = (seen["hidden"].double() @ last.weight.double().T + last.bias.double()).squeeze(-1)
    torch.testing.assert_close(out.pred.double(), expected, atol=1e-6, rtol=1e-6)
    # a bf16 last layer would land on bf16's grid; float32 predictions (scaled into [2, 4)) do not
    scaled = 3 + out.pred / (out.pred.abs().max() + 1)
    assert (scaled.bfloat16().float() != scaled).any()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_encoder_gets_a_prepared_mask_with_the_same_outputs(implementation: str) -> None:
    """The 4-D mask (no `mask.all()` sync in transformers) gives the 2-D mask's hidden states."""
    encoder = load_text_encoder(TINY_BERT).eval()
    encoder.config._attn_implementation = implementation
    batch = tiny_batch()
    mask = batch["attention_mask"]
    prepared = encoder_attention_mask(encoder, mask)
    assert prepared.ndim == 4
    with torch.no_grad():
        want = encoder(input_ids=batch["input_ids"], attention_mask=mask.long()).last_hidden_state
        got = encoder(input_ids=batch["input_ids"], attention_mask=prepared).last_hidden_state
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fine_tuned_encoder", [False, True])
def test_predict_runs_the_encoder_in_the_precision_of_training(fine_tuned_encoder: bool, tmp_path: Path) -> None:
    """bf16 run: a frozen encoder's training cache was float32 (build_text_cache, no autocast), so predict
    runs it without autocast; a fine-tuned encoder trained under autocast, so predict runs it under
    autocast. The fusion and heads run under autocast either way, as in training."""
    cfg = RunConfig()
    cfg.model.text_model, cfg.model.d_audio, cfg.model.d_vision, cfg.model.head_hidden = TINY_BERT, 7, 5, 16
    cfg.train.bf16 = True
    (tmp_path / "ckpt").mkdir()
    state = {k: v for k, v in tiny_model().state_dict().items() if fine_tuned_encoder or not k.startswith("encoder.")}
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"))
    scorer = Scorer(tmp_path / "ckpt", cfg, fine_tuned_encoder, torch.device("cpu"))
    autocast_in = {}
    scorer.model.encoder.register_forward_pre_hook(
        lambda m, args: autocast_in.update(encoder=torch.is_autocast_enabled("cpu")))
    scorer.model.fusion.register_forward_pre_hook(
        lambda m, args: autocast_in.update(fusion=torch.is_autocast_enabled("cpu")))
    rng = np.random.default_rng(0)
    samples = [Sample(id=f"s{i}", text="what a wonderful day", audio=rng.normal(size=(9, 7)).astype(np.float32),
                      vision=rng.normal(size=(4, 5)).astype(np.float32)) for i in range(2)]
    scores = scorer(samples)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert autocast_in == {"encoder": fine_tuned_encoder, "fusion": True}


def test_encoders_that_do_not_build_masks_with_masking_utils_get_the_2d_mask() -> None:
    """A 4-D mask means something else to a model with its own mask code (DeBERTa multiplies by it):
    only models built on transformers' `create_bidirectional_mask` get one."""

    class OwnMaskEncoder(torch.nn.Module):
        config = type("Config", (), {"_attn_implementation": "eager"})()

    mask = lengths_to_mask(torch.tensor([3, 1]), 3)
    assert torch.equal(encoder_attention_mask(OwnMaskEncoder(), mask), mask.long())
