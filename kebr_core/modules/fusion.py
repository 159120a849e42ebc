"""Late fusion: the non-text-based fusion of ablation C3 ("no TCMF", paper §4.5, docs/design.md §8).

Text is NOT injected with audio or vision. Each modality is pooled on its own and the pooled vectors
are combined once, at the end:

    p_t = masked_mean(X0t)                         (B, dt)
    V_a = LN(X0a) W_a,  V_v = LN(X0v) W_v          (B, La, dt), (B, Lv, dt)   (as the CMA values)
    z   = W_t LN(p_t) + masked_mean(V_a) + masked_mean(V_v)                    (B, dt)  sum, not concat
    h   = FFN(LN(z)) + z                           (B, dt)    (the same residual FFN as Eq. 8)

A sample with no audio (or vision) frame contributes a zero vector for that modality.

So that the rest of the model works unchanged, the output mimics TCMF's: `fused` is h as a one-step
sequence (B, 1, dt) with `fused_mask` (B, 1) all True, so the fine-tuning head's masked mean returns h
and MCC's "tile" alignment flattens it as a dt-long vector; `value_audio`/`value_vision` are V_a, V_v,
so MCC's "projected" alignment compares h with mean(V_a), mean(V_v). The pretraining head reads the
masked token's position of X_K, which this fusion does not have: a caller in C3 reads
h (the only position) instead.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from kebr_core.config import ModelConfig
from kebr_core.modules.pooling import masked_mean
from kebr_core.modules.tcmf import make_ffn


class LateFusionOutput(NamedTuple):
    """fused: h as a sequence (B, 1, dt); fused_mask: (B, 1) all True; value_audio: V_a (B, La, dt);
    value_vision: V_v (B, Lv, dt)."""

    fused: torch.Tensor
    fused_mask: torch.Tensor
    value_audio: torch.Tensor
    value_vision: torch.Tensor


class LateFusion(nn.Module):
    """Pool text, audio and vision separately, project each to dt, sum, then a residual FFN."""

    def __init__(
        self,
        d_text: int,
        d_audio: int,
        d_vision: int,
        ffn: Literal["mlp", "linear"] = "mlp",
        ffn_mult: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.ln_text = nn.LayerNorm(d_text)
        self.ln_audio = nn.LayerNorm(d_audio)
        self.ln_vision = nn.LayerNorm(d_vision)
        self.proj_text = nn.Linear(d_text, d_text)
        self.proj_audio = nn.Linear(d_audio, d_text)
        self.proj_vision = nn.Linear(d_vision, d_text)
        self.ln_fused = nn.LayerNorm(d_text)
        self.ffn = make_ffn(d_text, ffn, ffn_mult, dropout)

    @classmethod
    def from_config(cls, cfg: ModelConfig, d_text: int) -> "LateFusion":
        return cls(d_text, cfg.d_audio, cfg.d_vision, ffn=cfg.ffn, ffn_mult=cfg.ffn_mult, dropout=cfg.dropout)

    def forward(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        vision: torch.Tensor,
        vision_mask: torch.Tensor,
    ) -> LateFusionOutput:
        """text: X0t (B, Lt, dt); audio: X0a (B, La, da); vision: X0v (B, Lv, dv);
        masks (B, L·) bool, True = valid."""
        value_audio = self.proj_audio(self.ln_audio(audio))
        value_vision = self.proj_vision(self.ln_vision(vision))
        pooled_text = self.proj_text(self.ln_text(masked_mean(text, text_mask)))
        z = pooled_text + masked_mean(value_audio, audio_mask) + masked_mean(value_vision, vision_mask)
        h = self.ffn(self.ln_fused(z)) + z
        fused_mask = torch.ones(h.shape[0], 1, dtype=torch.bool, device=h.device)
        return LateFusionOutput(h[:, None, :], fused_mask, value_audio, value_vision)
