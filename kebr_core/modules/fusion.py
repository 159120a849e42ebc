"""The two non-text-based fusions of ablation C3 ("no TCMF", paper §4.5, docs/design.md §8).

Table 4's caption says C3 removes "only the text-based part" and retains "the overall network
architecture of cross-modal fusion". Two readings, each a `--fusion` (and `kebr ablate --c3`) name:

- "late" (`LateFusion`, kebr's first reading): no cross-modal network at all; each stream is pooled on
  its own and the pooled vectors are combined once, at the end.
- "symmetric" (`SymmetricFusion`, our reading of the caption): the same cross-modal attention network
  with no stream at its centre; text, audio and vision are three equal streams, each attending to the
  other two at every layer.

Late fusion. Text is NOT injected with audio or vision:

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

from kebr_core.modules.attention import CrossModalAttention
from kebr_core.modules.pooling import masked_mean
from kebr_core.modules.tcmf import FusionSettings, make_ffn


class LateFusionOutput(NamedTuple):
    """fused: h as a sequence (B, 1, dt); fused_mask: (B, 1) all True; value_audio: V_a (B, La, dt);
    value_vision: V_v (B, Lv, dt)."""

    fused: torch.Tensor
    fused_mask: torch.Tensor
    value_audio: torch.Tensor
    value_vision: torch.Tensor


class PooledFusion(nn.Module):
    """What C3's two fusions share: audio and vision projected to d_t, V_m = LN(X0m) W_m (B, Lm, dt),
    one fused vector h (B, dt) from `pool`, returned as a `LateFusionOutput`."""

    def _add_stream_projections(self, d_text: int, d_audio: int, d_vision: int) -> None:
        self.ln_audio = nn.LayerNorm(d_audio)
        self.ln_vision = nn.LayerNorm(d_vision)
        self.proj_audio = nn.Linear(d_audio, d_text)
        self.proj_vision = nn.Linear(d_vision, d_text)

    def pool(self, text: torch.Tensor, text_mask: torch.Tensor, value_audio: torch.Tensor, audio_mask: torch.Tensor,
             value_vision: torch.Tensor, vision_mask: torch.Tensor) -> torch.Tensor:
        """X0t (B, Lt, dt), V_a (B, La, dt), V_v (B, Lv, dt) and their masks → h (B, dt)."""
        raise NotImplementedError

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
        h = self.pool(text, text_mask, value_audio, audio_mask, value_vision, vision_mask)
        fused_mask = torch.ones(h.shape[0], 1, dtype=torch.bool, device=h.device)
        return LateFusionOutput(h[:, None, :], fused_mask, value_audio, value_vision)


class LateFusion(PooledFusion):
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
        self.proj_text = nn.Linear(d_text, d_text)  # drawn before the streams' projections, as always
        self._add_stream_projections(d_text, d_audio, d_vision)
        self.ln_fused = nn.LayerNorm(d_text)
        self.ffn = make_ffn(d_text, ffn, ffn_mult, dropout)

    @classmethod
    def from_config(cls, cfg: FusionSettings, d_text: int) -> "LateFusion":
        return cls(d_text, cfg.d_audio, cfg.d_vision, ffn=cfg.ffn, ffn_mult=cfg.ffn_mult, dropout=cfg.dropout)

    def pool(self, text, text_mask, value_audio, audio_mask, value_vision, vision_mask) -> torch.Tensor:
        pooled_text = self.proj_text(self.ln_text(masked_mean(text, text_mask)))
        z = pooled_text + masked_mean(value_audio, audio_mask) + masked_mean(value_vision, vision_mask)
        return self.ffn(self.ln_fused(z)) + z


STREAMS = ("text", "audio", "vision")


class SymmetricLayer(nn.Module):
    """One symmetric cross-modal layer over three streams of width d (B, L_s, d), s ∈ {t, a, v}:

        M_s = LN(X_s) + Σ_{o ≠ s} CMA_{s←o}(LN(X_s), X_o)      (Eq. 7 with no stream at the centre)
        X_s' = FFN(LN(M_s)) + M_s                              (Eq. 8, one FFN per stream)

    CMA_{s←o} is `CrossModalAttention` (Eq. 3–6): queries from s, keys and values from o (padding
    masked); six of them per layer."""

    def __init__(self, d: int, heads: int = 1, ffn: Literal["mlp", "linear"] = "mlp", ffn_mult: int = 4,
                 dropout: float = 0.0, attention_width: int | None = None) -> None:
        super().__init__()
        self.ln_in = nn.ModuleDict({s: nn.LayerNorm(d) for s in STREAMS})
        self.attend = nn.ModuleDict({
            f"{s}_from_{o}": CrossModalAttention(d, d, heads=heads, dropout=dropout, width=attention_width)
            for s in STREAMS for o in STREAMS if o != s
        })
        self.ln_fused = nn.ModuleDict({s: nn.LayerNorm(d) for s in STREAMS})
        self.ffn = nn.ModuleDict({s: make_ffn(d, ffn, ffn_mult, dropout) for s in STREAMS})

    def forward(self, streams: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """streams: {s: X_s (B, L_s, d)}; masks: {s: (B, L_s) bool, True = valid} → {s: X_s' (B, L_s, d)}."""
        out = {}
        for s in STREAMS:
            x_ln = self.ln_in[s](streams[s])
            fused = x_ln
            for o in STREAMS:
                if o != s:
                    fused = fused + self.attend[f"{s}_from_{o}"](x_ln, streams[o], masks[o])[0]
            out[s] = self.ffn[s](self.ln_fused[s](fused)) + fused
        return out


class SymmetricFusion(PooledFusion):
    """C3 as Table 4's caption reads: a cross-modal fusion network without the text-centred part.

        X_t^0 = X0t,  X_a^0 = LN(X0a) W_a,  X_v^0 = LN(X0v) W_v          (B, L_s, dt): equal widths
        X^k = SymmetricLayer(X^{k−1}), k = 1..K (one shared layer, as TCMF's default, or K)
        h = masked_mean(X_t^K) + masked_mean(X_a^K) + masked_mean(X_v^K)  (B, dt): equal shares

    Unlike TCMF, audio and vision are updated too and text is one stream of three: nothing is injected
    into the text to make it the carrier. The output mimics `LateFusion`'s (`LateFusionOutput`):
    h as a one-step sequence, an all-True mask, and V_a = X_a^0, V_v = X_v^0 for MCC's "projected"
    alignment. A stream with no frames in a sample contributes zeros (its attention output is zero).
    """

    def __init__(self, d_text: int, d_audio: int, d_vision: int, layers: int = 4, shared: bool = True,
                 heads: int = 1, ffn: Literal["mlp", "linear"] = "mlp", ffn_mult: int = 4, dropout: float = 0.0,
                 attention_width: int | None = None) -> None:
        super().__init__()
        self._add_stream_projections(d_text, d_audio, d_vision)
        self.num_layers = layers
        self.shared = shared
        self.layers = nn.ModuleList(
            SymmetricLayer(d_text, heads=heads, ffn=ffn, ffn_mult=ffn_mult, dropout=dropout,
                           attention_width=attention_width)
            for _ in range(1 if shared else layers)
        )

    @classmethod
    def from_config(cls, cfg: FusionSettings, d_text: int) -> "SymmetricFusion":
        return cls(d_text, cfg.d_audio, cfg.d_vision, layers=cfg.layers, shared=cfg.shared_layers, heads=cfg.heads,
                   ffn=cfg.ffn, ffn_mult=cfg.ffn_mult, dropout=cfg.dropout, attention_width=cfg.attention_width)

    def pool(self, text, text_mask, value_audio, audio_mask, value_vision, vision_mask) -> torch.Tensor:
        streams = {"text": text, "audio": value_audio, "vision": value_vision}
        masks = {"text": text_mask, "audio": audio_mask, "vision": vision_mask}
        for k in range(self.num_layers):
            streams = self.layers[0 if self.shared else k](streams, masks)
        return sum(masked_mean(streams[s], masks[s]) for s in STREAMS)
