"""Text-based Cross-Modal Fusion, TCMF (paper §3.3, Eq. 2 and 7–8, docs/design.md §5).

One layer injects the low-level audio and vision features into the text sequence:

    M_k = CMA_a(LN(X_{k-1}), X0a) + LN(X_{k-1}) + CMA_v(LN(X_{k-1}), X0v)     Eq. 7
    X_k = FFN(LN(M_k)) + M_k                                                   Eq. 8

and K layers are stacked with X0a, X0v re-injected at every layer (Eq. 2). The authors apply one
shared layer K times ("the capacity of the fused feature parameters remains unchanged"); that is the
default here, independent layers are an option.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

import torch
from torch import nn

from kebr_core.errors import KebrError
from kebr_core.modules.attention import CrossModalAttention


class TCMFOutput(NamedTuple):
    """fused: X_K (B, Lt, dt); value_audio: V_a (B, La, w) and value_vision: V_v (B, Lv, w) of the
    last layer, w the attention width (MCC's "projected" alignment compares the fused text with them,
    mapped to d_t by `TCMF.values_in_text_width`)."""

    fused: torch.Tensor
    value_audio: torch.Tensor
    value_vision: torch.Tensor


def make_ffn(d: int, kind: Literal["mlp", "linear"], mult: int, dropout: float) -> nn.Module:
    """The FFNN of Eq. 8: "mlp" = Linear(d, mult·d) → GELU → Dropout → Linear(mult·d, d);
    "linear" = a single Linear(d, d), as the authors' code."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d, mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * d, d))
    if kind == "linear":
        return nn.Linear(d, d)
    raise KebrError(f"Unknown FFN kind {kind!r}: use 'mlp' or 'linear'.")


class TCMFLayer(nn.Module):
    """One TCMF layer (Eq. 7–8): text (B, Lt, dt), audio (B, La, da), vision (B, Lv, dv) → (B, Lt, dt)."""

    def __init__(
        self,
        d_text: int,
        d_audio: int,
        d_vision: int,
        heads: int = 1,
        ffn: Literal["mlp", "linear"] = "mlp",
        ffn_mult: int = 4,
        dropout: float = 0.0,
        attention_width: int | None = None,
    ) -> None:
        super().__init__()
        self.ln_text = nn.LayerNorm(d_text)
        self.cma_audio = CrossModalAttention(d_text, d_audio, heads=heads, dropout=dropout, width=attention_width)
        self.cma_vision = CrossModalAttention(d_text, d_vision, heads=heads, dropout=dropout, width=attention_width)
        self.ln_fused = nn.LayerNorm(d_text)
        self.ffn = make_ffn(d_text, ffn, ffn_mult, dropout)

    def forward(
        self,
        text: torch.Tensor,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        vision: torch.Tensor,
        vision_mask: torch.Tensor,
        kv_audio: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_vision: tuple[torch.Tensor, torch.Tensor] | None = None,
        token_index: torch.Tensor | None = None,
    ) -> TCMFOutput:
        """text: X_{k-1} (B, Lt, dt); audio: X0a (B, La, da); vision: X0v (B, Lv, dv); masks (B, L·)
        bool, True = valid; kv_audio/kv_vision: this layer's K, V of X0a/X0v if already computed;
        token_index: (N,) flat positions b·Lt + t of the valid text tokens (the Collator's `text_index`).

        Every operation here is position-wise in the text, so text padding positions never affect
        valid ones and are ignored downstream. Without token_index they are computed like any other;
        with it, the FFN of Eq. 8 (most of a layer's arithmetic) runs on the N valid tokens only and
        padding positions keep M_k."""
        text_ln = self.ln_text(text)  # shared by the queries (Eq. 3) and the residual (Eq. 7)
        cma_a, value_a = self.cma_audio(text_ln, audio, audio_mask, kv_audio)
        cma_v, value_v = self.cma_vision(text_ln, vision, vision_mask, kv_vision)
        fused = cma_a + text_ln + cma_v  # Eq. 7: M_k
        if token_index is None:
            return TCMFOutput(self.ffn(self.ln_fused(fused)) + fused, value_a, value_v)  # Eq. 8
        flat = fused.reshape(-1, fused.shape[-1])  # (B·Lt, dt)
        update = self.ffn(self.ln_fused(flat.index_select(0, token_index)))  # (N, dt)
        # Eq. 8 at the valid tokens; under autocast the FFN's output is bf16 while M_k is float32, and
        # index_add (unlike `+`) does not promote
        fused = flat.index_add(0, token_index, update.to(flat.dtype)).view_as(fused)
        return TCMFOutput(fused, value_a, value_v)


class FusionSettings(Protocol):
    """What `from_config` of the fusions reads (`kebr_core.config.ModelConfig` has these fields): modules/
    imports only torch and its siblings, so the configuration comes in as any object with them."""

    d_audio: int
    d_vision: int
    layers: int
    shared_layers: bool
    heads: int
    ffn: str
    ffn_mult: int
    dropout: float
    attention_width: int | None


class TCMF(nn.Module):
    """K TCMF layers (Eq. 2): X_k = TCMF_k(X0a, X_{k-1}, X0v), k = 1..K.

    shared=True applies one layer K times (the authors' code, K-fold compute, 1× parameters);
    shared=False stacks K independent layers (K× parameters).
    """

    def __init__(
        self,
        d_text: int,
        d_audio: int,
        d_vision: int,
        layers: int = 4,
        shared: bool = True,
        heads: int = 1,
        ffn: Literal["mlp", "linear"] = "mlp",
        ffn_mult: int = 4,
        dropout: float = 0.0,
        attention_width: int | None = None,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise KebrError(f"The number of TCMF layers must be at least 1, got {layers}.")
        width = attention_width if attention_width is not None else d_text
        if width % heads != 0:
            what = "attention width" if attention_width is not None else "text width"
            raise KebrError(f"The {what} {width} is not divisible by the number of heads {heads}.")
        self.num_layers = layers
        self.shared = shared
        n_modules = 1 if shared else layers
        self.layers = nn.ModuleList(
            TCMFLayer(d_text, d_audio, d_vision, heads=heads, ffn=ffn, ffn_mult=ffn_mult, dropout=dropout,
                      attention_width=attention_width)
            for _ in range(n_modules)
        )

    @classmethod
    def from_config(cls, cfg: FusionSettings, d_text: int) -> "TCMF":
        """Build from a `ModelConfig` (`FusionSettings`); d_text is the text encoder's hidden size."""
        return cls(
            d_text,
            cfg.d_audio,
            cfg.d_vision,
            layers=cfg.layers,
            shared=cfg.shared_layers,
            heads=cfg.heads,
            ffn=cfg.ffn,
            ffn_mult=cfg.ffn_mult,
            dropout=cfg.dropout,
            attention_width=cfg.attention_width,
        )

    def forward(
        self,
        text: torch.Tensor,
        audio: torch.Tensor,
        audio_mask: torch.Tensor,
        vision: torch.Tensor,
        vision_mask: torch.Tensor,
        token_index: torch.Tensor | None = None,
    ) -> TCMFOutput:
        """text: X0t (B, Lt, dt); audio (B, La, da); vision (B, Lv, dv); masks bool, True = valid;
        token_index: optional (N,) flat positions of the valid text tokens (see `TCMFLayer.forward`).
        Returns X_K (B, Lt, dt) and the last layer's V_a (B, La, dt), V_v (B, Lv, dt)."""
        x = text
        kv_audio = kv_vision = None
        if self.shared:
            # X0a and X0v are re-injected unchanged at every k (Eq. 2), so the shared layer's keys and
            # values are the same each time: project once instead of K times (most of the FLOPs).
            kv_audio = self.layers[0].cma_audio.project(audio)
            kv_vision = self.layers[0].cma_vision.project(vision)
        for k in range(self.num_layers):  # num_layers >= 1, so the values below are always bound
            layer = self.layers[0 if self.shared else k]
            x, value_a, value_v = layer(x, audio, audio_mask, vision, vision_mask, kv_audio, kv_vision, token_index)
        return TCMFOutput(x, value_a, value_v)

    def values_in_text_width(self, value_audio: torch.Tensor, value_vision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's V_a, V_v (B, L·, w) in d_t (B, L·, dt): through its output projection W_O
        when the attention has its own width, unchanged otherwise."""
        last = self.layers[-1]
        return last.cma_audio.value_in_text_width(value_audio), last.cma_vision.value_in_text_width(value_vision)
