"""KEBRModel: encoder loading, both heads, MCC wiring, padding invariance, the embedded MiniLM offline."""

from __future__ import annotations

import torch
import pytest

from kebr_core.config import MCCConfig, ModelConfig
from kebr_core.errors import KebrError
from kebr_core.lexicon import load_lexicon
from kebr_core.masking import mask_sentiment_word
from kebr_core.model import KEBRModel
from kebr_core.text_encoder import load_text_encoder, load_tokenizer
from kebr_core.modules.pooling import masked_mean

TINY = "random-bert:hidden=32,layers=2,heads=2"


def make_batch(B: int, Lt: int, La: int, Lv: int, da: int = 7, dv: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lt = torch.randint(3, Lt + 1, (B,), generator=g)
    la = torch.randint(1, La + 1, (B,), generator=g)
    lv = torch.randint(1, Lv + 1, (B,), generator=g)
    return {
        "input_ids": torch.randint(1000, 2000, (B, Lt), generator=g),
        "attention_mask": torch.arange(Lt)[None] < lt[:, None],
        "audio": torch.randn(B, La, da, generator=g),
        "audio_mask": torch.arange(La)[None] < la[:, None],
        "vision": torch.randn(B, Lv, dv, generator=g),
        "vision_mask": torch.arange(Lv)[None] < lv[:, None],
        "mask_pos": torch.ones(B, dtype=torch.long),
        "label": torch.randn(B),
    }


def tiny_model(**kw) -> KEBRModel:
    torch.manual_seed(0)
    cfg = ModelConfig(text_model=TINY, d_audio=7, d_vision=5, dropout=0.0, head_hidden=16, **kw)
    return KEBRModel(cfg, MCCConfig()).eval()


@pytest.mark.parametrize("B", [1, 32])
@pytest.mark.parametrize("task", ["pretrain", "finetune"])
def test_shapes(B: int, task: str) -> None:
    model = tiny_model()
    out = model(make_batch(B, 9, 11, 6), task=task)
    assert out.pred.shape == (B,)
    assert out.fused.shape == (B, 9, 32)
    assert out.mcc.c_a.shape == (B,) and out.mcc.c_v.shape == (B,)
    assert torch.isfinite(out.pred).all() and torch.isfinite(out.mcc.loss)


def test_padding_appended_changes_nothing() -> None:
    """Appending padding (with garbage content) to every stream leaves predictions and MCC unchanged."""
    model = tiny_model()
    batch = make_batch(4, 8, 10, 6)
    ref = model(batch, task="finetune")
    padded = dict(batch)
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.randint(1000, 2000, (4, 3))], 1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(4, 3, dtype=torch.bool)], 1)
    for m, d in (("audio", 7), ("vision", 5)):
        padded[m] = torch.cat([batch[m], 100 * torch.randn(4, 5, d)], 1)
        padded[f"{m}_mask"] = torch.cat([batch[f"{m}_mask"], torch.zeros(4, 5, dtype=torch.bool)], 1)
    out = model(padded, task="finetune")
    torch.testing.assert_close(out.pred, ref.pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mcc.c_a, ref.mcc.c_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mcc.c_v, ref.mcc.c_v, atol=1e-5, rtol=1e-5)


def test_pretrain_head_reads_the_masked_position() -> None:
    model = tiny_model()
    batch = make_batch(3, 8, 10, 6)
    out = model(batch, task="pretrain")
    expected = model.pretrain_head(out.fused[torch.arange(3), batch["mask_pos"]])
    torch.testing.assert_close(out.pred, expected)
    moved = dict(batch, mask_pos=torch.full((3,), 2))
    assert not torch.allclose(model(moved, task="pretrain").pred, out.pred)


def test_finetune_head_pools_valid_positions_only() -> None:
    model = tiny_model()
    batch = make_batch(3, 8, 10, 6)
    out = model(batch, task="finetune")
    expected = model.finetune_head(masked_mean(out.fused, batch["attention_mask"]))
    torch.testing.assert_close(out.pred, expected)


def test_precomputed_text_hidden_equals_encoder_forward() -> None:
    model = tiny_model()
    batch = make_batch(4, 8, 10, 6)
    hidden = model.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(model(batch, text_hidden=hidden).pred, model(batch).pred)


def test_late_fusion_model_runs_both_tasks() -> None:
    model = tiny_model(fusion="late")
    batch = make_batch(5, 8, 10, 6)
    for task in ("pretrain", "finetune"):
        out = model(batch, task=task)
        assert out.pred.shape == (5,) and out.fused.shape == (5, 1, 32)


def test_random_spec_and_unknown_model_errors() -> None:
    with pytest.raises(KebrError, match="random-bert"):
        load_text_encoder("random-bert:hidden=x")
    with pytest.raises(KebrError, match="could not be loaded"):
        load_text_encoder("/nonexistent/model-folder")


def test_unknown_hub_name_fails_fast_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KebrError, match="bert-nonexistent-kebr-test"):
        load_text_encoder("bert-nonexistent-kebr-test")


@pytest.mark.slow
def test_embedded_minilm_forward_backward_on_a_real_sentence(monkeypatch) -> None:
    """The embedded MiniLM loads offline; a full forward+backward gives gradients everywhere."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded")
    masked = mask_sentiment_word("BUT IT WAS REALLY REALLY AWESOME", tokenizer, load_lexicon(), 50, rng=0)
    assert masked.word == "awesome"
    model = KEBRModel(ModelConfig(d_audio=33, d_vision=20))
    assert model.d_text == 384
    n = len(masked.input_ids)
    batch = {
        "input_ids": torch.tensor([masked.input_ids]),
        "attention_mask": torch.ones(1, n, dtype=torch.bool),
        "audio": torch.randn(1, 40, 33),
        "audio_mask": torch.ones(1, 40, dtype=torch.bool),
        "vision": torch.randn(1, 12, 20),
        "vision_mask": torch.ones(1, 12, dtype=torch.bool),
        "mask_pos": torch.tensor([masked.mask_pos]),
    }
    out = model(batch, task="pretrain")
    loss = (out.pred - masked.label).abs().mean() + out.mcc.loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for name, g in grads.items() if not name.startswith("finetune_head"))
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    layer = model.fusion.layers[0]
    assert layer.cma_audio.w_k.weight.grad.abs().sum() > 0 and layer.cma_vision.w_k.weight.grad.abs().sum() > 0
