"""Cross-modal attention (Eq. 3–6), TCMF (Eq. 2, 7–8) and the late fusion of ablation C3."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kebr_core.config import MCCConfig, ModelConfig
from kebr_core.errors import KebrError
from kebr_core.modules.attention import CrossModalAttention, attention_with_dropout
from kebr_core.modules.fusion import STREAMS, LateFusion, SymmetricFusion
from kebr_core.modules.mcc import mcc_loss
from kebr_core.modules.tcmf import TCMF, TCMFLayer

LN_EPS = 1e-5  # nn.LayerNorm's default


def lengths_to_mask(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]


def reference_cma(
    cma: CrossModalAttention, text_ln: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3–6 written out with explicit matrix products and a masked softmax, per head."""
    ln = cma.ln_modality
    m_ln = F.layer_norm(modality, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    q = text_ln @ cma.w_q.weight.T + cma.w_q.bias
    k = m_ln @ cma.w_k.weight.T + cma.w_k.bias
    v = m_ln @ cma.w_v.weight.T + cma.w_v.bias
    d_head = cma.d_text // cma.heads
    outs = []
    for h in range(cma.heads):
        sl = slice(h * d_head, (h + 1) * d_head)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d_head)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # no valid frame: weights 0, out 0
        outs.append(weights @ v[..., sl])
    return torch.cat(outs, dim=-1), v


def set_linear(layer: nn.Linear, weight: list[list[float]]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.zero_()


# ---------------------------------------------------------------- cross-modal attention


def test_cma_hand_computed_uniform_attention() -> None:
    """W_Q = 0 gives uniform attention: every text position gets the mean of V over valid frames."""
    cma = CrossModalAttention(d_text=3, d_modality=3)
    set_linear(cma.w_q, [[0.0] * 3] * 3)
    set_linear(cma.w_v, [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    modality = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 1.0, -1.0], [9.0, -4.0, 2.0]]])  # frame 2: padding
    text_ln = torch.randn(1, 2, 3)
    out, value = cma(text_ln, modality, lengths_to_mask([2], 3))
    c = 1 / math.sqrt(2 / 3 + LN_EPS)  # LN of [1, 0, -1]: mean 0, variance 2/3
    expected = torch.tensor([c / 2, c / 2, -c]).expand(1, 2, 3)  # mean of c·[1,0,-1] and c·[0,1,-1]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(value[0, :2], torch.tensor([[c, 0.0, -c], [0.0, c, -c]]))


def test_cma_hand_computed_softmax() -> None:
    """d_t = 1, query 2, two frames whose LN gives keys and values ±c: out = c·tanh(2c)."""
    cma = CrossModalAttention(d_text=1, d_modality=2)
    set_linear(cma.w_q, [[1.0]])
    set_linear(cma.w_k, [[1.0, 0.0]])
    set_linear(cma.w_v, [[1.0, 0.0]])
    modality = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # LN → ±c·[1, −1]
    out, _ = cma(torch.tensor([[[2.0]]]), modality, torch.ones(1, 2, dtype=torch.bool))
    c = 0.5 / math.sqrt(0.25 + LN_EPS)
    # scores 2c and −2c (scale 1/√1); softmax weights p = σ(4c) and 1 − p;
    # out = p·c − (1 − p)·c = c·(2p − 1) = c·tanh(2c)
    assert out.item() == pytest.approx(c * math.tanh(2 * c), rel=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_cma_matches_reference_with_masks(heads: int) -> None:
    torch.manual_seed(0)
    cma = CrossModalAttention(d_text=8, d_modality=5, heads=heads)
    text_ln = torch.randn(3, 4, 8)
    modality = torch.randn(3, 6, 5)
    mask = lengths_to_mask([6, 2, 0], 6)  # full, padded, and a sample with no frame at all
    out, value = cma(text_ln, modality, mask)
    ref_out, ref_value = reference_cma(cma, text_ln, modality, mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(value, ref_value)
    assert torch.equal(out[2], torch.zeros(4, 8))  # no frame: its CMA term drops out, no NaN


def test_cma_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="divisible"):
        CrossModalAttention(d_text=6, d_modality=3, heads=4)


def test_attention_with_dropout_is_sdpa_and_drops_unbiased() -> None:
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, n, 4, generator=gen, dtype=torch.float64) for n in (3, 5, 5))
    mask = lengths_to_mask([5, 2], 5)[:, None, None, :]
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention_with_dropout(q, k, v, mask, 0.0), sdpa)
    torch.manual_seed(0)
    draws = torch.stack([attention_with_dropout(q, k, v, mask, 0.5) for _ in range(4000)])
    assert (draws != sdpa).any(dim=(1, 2, 3, 4)).all()  # every draw drops something
    torch.testing.assert_close(draws.mean(0), sdpa, atol=0.08, rtol=0)  # E[dropout(w)] = w


def test_cma_training_with_dropout_on_cpu_uses_the_explicit_path() -> None:
    torch.manual_seed(4)
    cma = CrossModalAttention(d_text=8, d_modality=3, heads=2, dropout=0.3).train()
    text, modality = torch.randn(2, 4, 8), torch.randn(2, 5, 3)
    mask = lengths_to_mask([5, 3], 5)
    torch.manual_seed(5)
    out, _ = cma(text, modality, mask)
    key, value = cma.project(modality)

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, 8) → (B, 2 heads, L, 4)
        return x.view(2, -1, 2, 4).transpose(1, 2)

    torch.manual_seed(5)
    expected = attention_with_dropout(split(cma.w_q(text)), split(key), split(value), mask[:, None, None, :], 0.3)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(2, 4, 8))


def test_cma_empty_modality_tensor() -> None:
    cma = CrossModalAttention(d_text=4, d_modality=3)
    out, value = cma(torch.randn(2, 5, 4), torch.randn(2, 0, 3), torch.zeros(2, 0, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 5, 4)) and value.shape == (2, 0, 4)


# ---------------------------------------------------------------- TCMF


def small_inputs(batch: int, seed: int, dtype=torch.float32, lt=4, dt=8, la=5, da=3, lv=3, dv=6):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        text=torch.randn(batch, lt, dt, generator=gen, dtype=dtype),
        audio=torch.randn(batch, la, da, generator=gen, dtype=dtype),
        audio_mask=lengths_to_mask(torch.randint(1, la + 1, (batch,), generator=gen).tolist(), la),
        vision=torch.randn(batch, lv, dv, generator=gen, dtype=dtype),
        vision_mask=lengths_to_mask(torch.randint(1, lv + 1, (batch,), generator=gen).tolist(), lv),
    )


def reference_layer(layer: TCMFLayer, text, audio, audio_mask, vision, vision_mask) -> torch.Tensor:
    """Eq. 7–8 from the layer's weights, with explicit LN / FFN operations."""
    ln = layer.ln_text
    x_ln = F.layer_norm(text, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    m = reference_cma(layer.cma_audio, x_ln, audio, audio_mask)[0] + x_ln
    m = m + reference_cma(layer.cma_vision, x_ln, vision, vision_mask)[0]
    ln = layer.ln_fused
    h = F.layer_norm(m, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    first, last = layer.ffn[0], layer.ffn[3]
    return F.linear(F.gelu(F.linear(h, first.weight, first.bias)), last.weight, last.bias) + m


def test_tcmf_layer_follows_eq_7_and_8() -> None:
    torch.manual_seed(1)
    layer = TCMFLayer(8, 3, 6, heads=2).eval()
    inputs = small_inputs(3, seed=2)
    inputs["vision_mask"][1] = False  # no face in sample 1
    out = layer(**inputs)
    torch.testing.assert_close(out.fused, reference_layer(layer, **inputs))
    assert out.value_audio.shape == (3, 5, 8) and out.value_vision.shape == (3, 3, 8)


def test_ffn_kinds() -> None:
    mlp = TCMFLayer(8, 3, 6, ffn="mlp", ffn_mult=2, dropout=0.3).ffn
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert mlp[0].out_features == 16 and mlp[2].p == 0.3
    linear = TCMFLayer(8, 3, 6, ffn="linear").ffn
    assert isinstance(linear, nn.Linear) and linear.in_features == linear.out_features == 8
    with pytest.raises(KebrError, match="FFN"):
        TCMFLayer(8, 3, 6, ffn="conv")


def test_shared_stack_applies_one_layer_k_times() -> None:
    torch.manual_seed(3)
    tcmf = TCMF(8, 3, 6, layers=3, shared=True).eval()
    inputs = small_inputs(2, seed=4)
    x = inputs["text"]
    for _ in range(3):  # X0a and X0v are re-injected at every layer (Eq. 2)
        x, value_a, value_v = tcmf.layers[0](x, *list(inputs.values())[1:])
    out = tcmf(**inputs)
    torch.testing.assert_close(out.fused, x)
    torch.testing.assert_close(out.value_audio, value_a)
    torch.testing.assert_close(out.value_vision, value_v)


def test_independent_stack_chains_its_layers() -> None:
    torch.manual_seed(5)
    tcmf = TCMF(8, 3, 6, layers=3, shared=False).eval()
    inputs = small_inputs(2, seed=6)
    x = inputs["text"]
    for layer in tcmf.layers:
        x = reference_layer(layer, x, *list(inputs.values())[1:])
    torch.testing.assert_close(tcmf(**inputs).fused, x)


def test_shared_and_independent_parameter_counts() -> None:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    layer = count(TCMFLayer(16, 3, 5))
    assert count(TCMF(16, 3, 5, layers=4, shared=True)) == layer
    assert count(TCMF(16, 3, 5, layers=4, shared=False)) == 4 * layer
    # by hand: 3 LayerNorms over 16 (2·16 each), LN over 3 and 5, Q/K/V per modality, FFN 16→64→16
    expected = 2 * 16 * 2 + 2 * 3 + 2 * 5 + 2 * (16 * 16 + 16) + 2 * (3 * 16 + 16) + 2 * (5 * 16 + 16)
    expected += (16 * 64 + 64) + (64 * 16 + 16)
    assert layer == expected


def test_from_config() -> None:
    cfg = ModelConfig(
        d_audio=7, d_vision=9, layers=2, shared_layers=False, heads=2, ffn="linear", dropout=0.0
    )
    tcmf = TCMF.from_config(cfg, d_text=12)
    assert tcmf.num_layers == 2 and len(tcmf.layers) == 2 and not tcmf.shared
    layer = tcmf.layers[0]
    assert layer.cma_audio.heads == 2 and layer.cma_audio.w_k.in_features == 7
    assert layer.cma_vision.w_k.in_features == 9 and isinstance(layer.ffn, nn.Linear)
    default = TCMF.from_config(ModelConfig(), d_text=384)
    assert default.num_layers == 4 and default.shared and len(default.layers) == 1
    with pytest.raises(KebrError, match="heads"):
        TCMF(10, 3, 3, heads=4)
    with pytest.raises(KebrError, match="at least 1"):
        TCMF(8, 3, 3, layers=0)


def test_tcmf_layer_gradcheck() -> None:
    torch.manual_seed(7)
    layer = TCMFLayer(4, 2, 3, heads=2, dropout=0.0).double()
    inputs = small_inputs(2, seed=8, dtype=torch.float64, lt=3, dt=4, la=3, da=2, lv=2, dv=3)
    masks = inputs["audio_mask"], inputs["vision_mask"]
    leaves = [inputs[k].requires_grad_() for k in ("text", "audio", "vision")]
    assert torch.autograd.gradcheck(
        lambda t, a, v: layer(t, a, masks[0], v, masks[1]).fused, leaves, atol=1e-6
    )


def test_padding_changes_nothing() -> None:
    torch.manual_seed(9)
    tcmf = TCMF(8, 3, 6, layers=2, heads=2).eval()
    inputs = small_inputs(3, seed=10)
    base = tcmf(**inputs)
    gen = torch.Generator().manual_seed(11)
    padded = dict(inputs)
    padded["text"] = torch.cat([inputs["text"], 50 * torch.randn(3, 2, 8, generator=gen)], dim=1)
    for name, extra in (("audio", 3), ("vision", 2)):
        x, mask = inputs[name], inputs[f"{name}_mask"]
        x = torch.where(mask[:, :, None], x, 1e3)  # garbage in the existing padding too
        padded[name] = torch.cat([x, -30 * torch.randn(3, extra, x.shape[2], generator=gen)], dim=1)
        padded[f"{name}_mask"] = torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], dim=1)
    out = tcmf(**padded)
    torch.testing.assert_close(out.fused[:, :4], base.fused)
    valid = inputs["audio_mask"]
    torch.testing.assert_close(out.value_audio[:, :5][valid], base.value_audio[valid])


@pytest.mark.parametrize("shared", [True, False])
def test_token_index_skips_text_padding_exactly(shared: bool) -> None:
    """With the Collator's text_index, the FFN runs on valid tokens only: the same X_K there and the
    same weight gradients; padding positions (ignored downstream) differ, so the packed path ran."""
    torch.manual_seed(17)
    tcmf = TCMF(8, 3, 6, layers=3, shared=shared, heads=2).double().eval()
    inputs = small_inputs(3, seed=18, dtype=torch.float64)
    text_mask = lengths_to_mask([4, 1, 2], 4)
    token_index = torch.from_numpy(np.flatnonzero(text_mask.numpy()))
    full = tcmf(**inputs)
    packed = tcmf(**inputs, token_index=token_index)
    torch.testing.assert_close(packed.fused[text_mask], full.fused[text_mask])
    assert not torch.allclose(packed.fused[~text_mask], full.fused[~text_mask])
    torch.testing.assert_close(packed.value_audio, full.value_audio)
    grads = []
    for out in (full, packed):
        tcmf.zero_grad()
        (out.fused[text_mask] ** 2).sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in tcmf.parameters()])
    for g_full, g_packed in zip(*grads):
        torch.testing.assert_close(g_packed, g_full)


def test_token_index_under_bf16_autocast() -> None:
    torch.manual_seed(19)
    tcmf = TCMF(16, 3, 6, layers=2, heads=2).eval()
    inputs = small_inputs(3, seed=20, dt=16)
    text_mask = lengths_to_mask([4, 2, 3], 4)
    token_index = torch.from_numpy(np.flatnonzero(text_mask.numpy()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = tcmf(**inputs)
        packed = tcmf(**inputs, token_index=token_index)
    assert packed.fused.dtype == full.fused.dtype
    torch.testing.assert_close(packed.fused[text_mask], full.fused[text_mask])


def test_zero_length_modality_drops_its_cma_term() -> None:
    torch.manual_seed(12)
    layer = TCMFLayer(8, 3, 6).eval()
    inputs = small_inputs(3, seed=13)
    inputs["audio_mask"][0] = False  # sample 0 has no audio
    out = layer(**inputs)
    assert torch.isfinite(out.fused).all()
    text_ln = layer.ln_text(inputs["text"])
    cma_a, _ = layer.cma_audio(text_ln, inputs["audio"], inputs["audio_mask"])
    assert torch.equal(cma_a[0], torch.zeros_like(cma_a[0]))
    # sample 0 is exactly Eq. 7–8 without the audio term
    m = text_ln[0] + layer.cma_vision(text_ln, inputs["vision"], inputs["vision_mask"])[0][0]
    torch.testing.assert_close(out.fused[0], layer.ffn(layer.ln_fused(m)) + m)
    # the other samples are untouched by it
    alone = layer(**{k: v[1:] for k, v in inputs.items()})
    torch.testing.assert_close(out.fused[1:], alone.fused)


def test_batch_without_any_vision_frame() -> None:
    tcmf = TCMF(8, 3, 6, layers=2).eval()
    inputs = small_inputs(2, seed=14)
    inputs["vision"] = inputs["vision"][:, :0]
    inputs["vision_mask"] = inputs["vision_mask"][:, :0]
    out = tcmf(**inputs)
    assert torch.isfinite(out.fused).all() and out.value_vision.shape == (2, 0, 8)


@pytest.mark.parametrize("batch", [1, 32])
def test_shapes(batch: int) -> None:
    tcmf = TCMF(16, 3, 6, layers=2, heads=4, dropout=0.1)
    inputs = small_inputs(batch, seed=15, dt=16)
    out = tcmf(**inputs)
    assert out.fused.shape == (batch, 4, 16)
    assert out.value_audio.shape == (batch, 5, 16) and out.value_vision.shape == (batch, 3, 16)
    out.fused.sum().backward()
    assert all(p.grad is not None for p in tcmf.parameters())


# ---------------------------------------------------------------- late fusion (ablation C3)


def test_late_fusion_formula() -> None:
    torch.manual_seed(16)
    fusion = LateFusion(8, 3, 6).eval()
    inputs = small_inputs(3, seed=17)
    text_mask = lengths_to_mask([4, 2, 1], 4)
    inputs["audio_mask"][2] = False  # sample 2 has no audio: contributes a zero vector
    args = (inputs["audio"], inputs["audio_mask"], inputs["vision"], inputs["vision_mask"])
    out = fusion(inputs["text"], text_mask, *args)
    assert out.fused.shape == (3, 1, 8) and out.fused_mask.shape == (3, 1) and out.fused_mask.all()

    def pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = [x[i][mask[i]].mean(0) if mask[i].any() else torch.zeros(x.shape[2]) for i in range(len(x))]
        return torch.stack(rows)

    v_a = fusion.proj_audio(fusion.ln_audio(inputs["audio"]))
    v_v = fusion.proj_vision(fusion.ln_vision(inputs["vision"]))
    z = fusion.proj_text(fusion.ln_text(pool(inputs["text"], text_mask)))
    z = z + pool(v_a, inputs["audio_mask"]) + pool(v_v, inputs["vision_mask"])
    torch.testing.assert_close(out.fused[:, 0], fusion.ffn(fusion.ln_fused(z)) + z)
    torch.testing.assert_close(out.value_audio, v_a)
    torch.testing.assert_close(out.value_vision, v_v)


def test_late_fusion_does_not_inject_into_text_positions() -> None:
    """Only the pooled text matters: permuting valid text positions or changing padding changes nothing."""
    torch.manual_seed(18)
    fusion = LateFusion(8, 3, 6).eval()
    inputs = small_inputs(2, seed=19)
    text_mask = lengths_to_mask([4, 3], 4)
    args = (inputs["audio"], inputs["audio_mask"], inputs["vision"], inputs["vision_mask"])
    base = fusion(inputs["text"], text_mask, *args).fused
    shuffled = inputs["text"][:, [2, 0, 1, 3]].clone()
    shuffled[1, 3] = 1e4  # padding of sample 1
    torch.testing.assert_close(fusion(shuffled, text_mask, *args).fused, base)


@pytest.mark.parametrize("align", ["tile", "projected"])
def test_mcc_runs_on_late_fusion_output(align: str) -> None:
    torch.manual_seed(20)
    fusion = LateFusion(8, 3, 6)
    inputs = small_inputs(4, seed=21)
    out = fusion(inputs["text"], lengths_to_mask([4, 2, 3, 1], 4), inputs["audio"], inputs["audio_mask"],
                 inputs["vision"], inputs["vision_mask"])
    loss = mcc_loss(out.fused, out.fused_mask, inputs["audio"], inputs["audio_mask"], inputs["vision"],
                    inputs["vision_mask"], MCCConfig(align=align), out.value_audio, out.value_vision)
    assert loss.valid.all()
    loss.loss.backward()
    assert torch.isfinite(fusion.proj_text.weight.grad).all() and fusion.proj_text.weight.grad.abs().sum() > 0


def test_late_fusion_from_config() -> None:
    fusion = LateFusion.from_config(ModelConfig(d_audio=5, d_vision=7, ffn="linear"), d_text=12)
    assert fusion.proj_audio.in_features == 5 and fusion.proj_vision.in_features == 7
    assert isinstance(fusion.ffn, nn.Linear)


def test_attention_width_with_output_projection_hand_computed() -> None:
    """width w (the authors' 256, models.py:67–79): Q, K, V of width w, softmax(QKᵀ/√w) V, then W_O back
    to d_t; V comes back in w, and `value_in_text_width` maps it to d_t. Without a width: no W_O, the
    same parameter names as before (old checkpoints load)."""
    torch.manual_seed(0)
    d_text, d_mod, width = 6, 3, 4
    cma = CrossModalAttention(d_text, d_mod, width=width).double()
    text_ln = torch.randn(2, 5, d_text, dtype=torch.float64)
    modality = torch.randn(2, 7, d_mod, dtype=torch.float64)
    mask = lengths_to_mask([7, 3], 7)
    out, value = cma(text_ln, modality, mask)
    ln = cma.ln_modality
    m_ln = F.layer_norm(modality, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    q = text_ln @ cma.w_q.weight.T + cma.w_q.bias
    k = m_ln @ cma.w_k.weight.T + cma.w_k.bias
    v = m_ln @ cma.w_v.weight.T + cma.w_v.bias
    scores = (q @ k.transpose(1, 2) / math.sqrt(width)).masked_fill(~mask[:, None, :], float("-inf"))
    expected = scores.softmax(-1) @ v @ cma.w_o.weight.T + cma.w_o.bias
    assert out.shape == (2, 5, d_text) and value.shape == (2, 7, width)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(cma.value_in_text_width(value), v @ cma.w_o.weight.T + cma.w_o.bias)
    plain = CrossModalAttention(d_text, d_mod)
    assert plain.w_o is None and plain.value_in_text_width(value) is value
    assert set(plain.state_dict()) == set(cma.state_dict()) - {"w_o.weight", "w_o.bias"}


def test_tcmf_with_attention_width_runs_every_alignment() -> None:
    """A model with the authors' attention width trains under every MCC alignment; "projected" reads V
    in d_t through W_O."""
    torch.manual_seed(1)
    tcmf = TCMF(8, 3, 2, layers=2, attention_width=4)
    text = torch.randn(2, 5, 8)
    audio, vision = torch.randn(2, 6, 3), torch.randn(2, 4, 2)
    a_mask, v_mask = lengths_to_mask([6, 2], 6), lengths_to_mask([4, 1], 4)
    fused, value_a, value_v = tcmf(text, audio, a_mask, vision, v_mask)
    assert fused.shape == (2, 5, 8) and value_a.shape == (2, 6, 4) and value_v.shape == (2, 4, 4)
    value_a, value_v = tcmf.values_in_text_width(value_a, value_v)
    assert value_a.shape == (2, 6, 8) and value_v.shape == (2, 4, 8)
    t_mask = torch.ones(2, 5, dtype=torch.bool)
    for align in ("tile", "authors", "projected"):
        out = mcc_loss(fused, t_mask, audio, a_mask, vision, v_mask, MCCConfig(align=align),
                       value_audio=value_a, value_vision=value_v)
        assert torch.isfinite(out.loss)
    with pytest.raises(KebrError, match="attention width 6 is not divisible by the number of heads 4"):
        TCMF(8, 3, 2, heads=4, attention_width=6)


def test_symmetric_fusion_one_layer_hand_wired() -> None:
    """C3 "symmetric" (our reading of Table 4's caption): audio and vision projected to d_t, then each of
    the three streams attends to the other two (M_s = LN(X_s) + Σ_o CMA_{s←o}, X_s' = FFN(LN(M_s)) + M_s)
    and h = Σ_s masked_mean(X_s'); written out from the submodules for K = 1."""
    torch.manual_seed(30)
    fusion = SymmetricFusion(8, 3, 6, layers=1).eval()
    inputs = small_inputs(3, seed=31)
    text_mask = lengths_to_mask([4, 2, 3], 4)
    out = fusion(inputs["text"], text_mask, inputs["audio"], inputs["audio_mask"], inputs["vision"], inputs["vision_mask"])
    streams = {"text": inputs["text"],
               "audio": fusion.proj_audio(fusion.ln_audio(inputs["audio"])),
               "vision": fusion.proj_vision(fusion.ln_vision(inputs["vision"]))}
    masks = {"text": text_mask, "audio": inputs["audio_mask"], "vision": inputs["vision_mask"]}
    layer = fusion.layers[0]
    h = 0
    for s in STREAMS:
        x_ln = layer.ln_in[s](streams[s])
        m = x_ln + sum(layer.attend[f"{s}_from_{o}"](x_ln, streams[o], masks[o])[0] for o in STREAMS if o != s)
        x = layer.ffn[s](layer.ln_fused[s](m)) + m
        keep = masks[s][:, :, None].float()
        h = h + (x * keep).sum(1) / keep.sum(1).clamp_min(1)
    assert out.fused.shape == (3, 1, 8) and out.fused_mask.all()
    torch.testing.assert_close(out.fused[:, 0], h)
    torch.testing.assert_close(out.value_audio, streams["audio"])
    assert len(layer.attend) == 6  # every ordered pair: no stream is the centre


def test_symmetric_fusion_is_cross_modal_and_ignores_padding() -> None:
    """Cross-modal, unlike late fusion: the text stream attends to audio, so other audio moves it
    (LayerNorm would absorb a mere shift: new random frames); padding of any stream changes nothing;
    a sample without audio frames stays finite."""
    torch.manual_seed(32)
    fusion = SymmetricFusion(8, 3, 6, layers=2).eval()
    inputs = small_inputs(2, seed=33)
    text_mask = lengths_to_mask([4, 3], 4)
    args = (inputs["audio"], inputs["audio_mask"], inputs["vision"], inputs["vision_mask"])
    base = fusion(inputs["text"], text_mask, *args).fused
    padded = {k: v.clone() for k, v in inputs.items()}
    padded["text"][1, 3] = 1e4
    padded["audio"][~padded["audio_mask"]] = 1e4
    padded["vision"][~padded["vision_mask"]] = -1e4
    again = fusion(padded["text"], text_mask, padded["audio"], padded["audio_mask"], padded["vision"],
                   padded["vision_mask"]).fused
    torch.testing.assert_close(again, base)
    # the text stream alone, read through the layer: it changes when only the audio changes
    layer = fusion.layers[0]
    proj = lambda a: fusion.proj_audio(fusion.ln_audio(a))  # noqa: E731
    x_ln = layer.ln_in["text"](inputs["text"])
    from_audio = layer.attend["text_from_audio"](x_ln, proj(inputs["audio"]), inputs["audio_mask"])[0]
    from_other = layer.attend["text_from_audio"](x_ln, proj(torch.randn_like(inputs["audio"])), inputs["audio_mask"])[0]
    assert not torch.allclose(from_audio, from_other)
    no_audio = dict(inputs)
    no_audio["audio_mask"] = inputs["audio_mask"].clone()
    no_audio["audio_mask"][0] = False
    out = fusion(inputs["text"], text_mask, no_audio["audio"], no_audio["audio_mask"], inputs["vision"], inputs["vision_mask"])
    assert torch.isfinite(out.fused).all()
