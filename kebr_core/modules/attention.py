"""Cross-modal attention: text queries attend to one non-verbal modality (paper Eq. 3–6, docs/design.md §5).

    Q = LN(X_{k-1}) W_Q          (B, Lt, dt)   Eq. 3 (the caller passes LN(X_{k-1}): Eq. 7 reuses it)
    K = LN(X0m) W_K              (B, Lm, dt)   Eq. 4
    V = LN(X0m) W_V              (B, Lm, dt)   Eq. 5
    CMA = softmax(Q Kᵀ / √d) V   (B, Lt, dt)   Eq. 6

With `width` w (the authors' code: 256, models.py:67–79), Q, K, V are (·, w) and CMA is projected back:
CMA = softmax(Q Kᵀ / √w) V W_O, W_O a Linear(w, dt); without it (the paper) d = dt and there is no W_O.
Unlike the authors' code, padded modality frames are masked out of the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(softmax(Q Kᵀ / √d_head) masked) V, the same as SDPA with dropout_p = p.

    q (B, H, Lt, d), k and v (B, H, Lm, d), mask broadcastable to (B, H, Lt, Lm), True = attend; every
    row must attend somewhere. SDPA has no CPU kernel with dropout; its fallback rescales the keys on
    each call, a strided copy of (B, H, d, Lm) that took ~6 % of a CPU pretraining step. Scaling the
    queries instead (Lt ≪ Lm) computes the same thing.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, Lt, Lm)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return F.dropout(weights, p) @ v  # (B, H, Lt, d)


class CrossModalAttention(nn.Module):
    """Text → modality attention with key-padding mask.

    Attention width w is `width` or, unset, `d_text` (the paper's d_t); with `heads` > 1 it is split
    into heads of w / heads, each scaled by 1/√(w / heads) (heads = 1, no width: the paper's 1/√d_t).
    Without `width`, as in Eq. 6, there is no output projection: the heads' outputs are concatenated;
    with it, `w_o` (w → d_t) maps them back to the text's width, as the authors' `proj`.
    """

    def __init__(self, d_text: int, d_modality: int, heads: int = 1, dropout: float = 0.0,
                 width: int | None = None) -> None:
        super().__init__()
        self.width = width if width is not None else d_text
        if self.width % heads != 0:
            raise ValueError(f"attention width {self.width} is not divisible by heads={heads}")
        self.d_text = d_text
        self.heads = heads
        self.dropout = dropout
        self.ln_modality = nn.LayerNorm(d_modality)
        self.w_q = nn.Linear(d_text, self.width)
        self.w_k = nn.Linear(d_modality, self.width)
        self.w_v = nn.Linear(d_modality, self.width)
        self.w_o = nn.Linear(self.width, d_text) if width is not None else None

    def project(self, modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K = LN(X0m) W_K and V = LN(X0m) W_V (Eq. 4–5): (B, Lm, dm) → (B, Lm, w) each.

        They depend on X0m only, so a TCMF layer applied K times (shared weights) computes them once.
        """
        modality_ln = self.ln_modality(modality)
        return self.w_k(modality_ln), self.w_v(modality_ln)

    def forward(
        self,
        text_ln: torch.Tensor,
        modality: torch.Tensor,
        modality_mask: torch.Tensor,
        keys_values: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from (already layer-normed) text to a padded modality sequence.

        Args:
            text_ln: LN(X_{k-1}), (B, Lt, dt).
            modality: X0m, (B, Lm, dm); padded frames may hold any finite values.
            modality_mask: (B, Lm) bool, True = valid frame.
            keys_values: `project(modality)` when the caller already has it.
        Returns:
            out: CMA, (B, Lt, dt); all zeros for a sample with no valid frame (its CMA term drops out
                of Eq. 7 rather than attending to padding).
            value: V = LN(X0m) W_V, (B, Lm, w) (MCC's "projected" alignment reads it, through
                `value_in_text_width`).
        """
        batch, text_len, _ = text_ln.shape
        mod_len = modality.shape[1]
        key, value = keys_values if keys_values is not None else self.project(modality)
        if mod_len == 0:  # a batch in which no sample has this modality: a shape, not a value, check
            return text_ln.new_zeros(batch, text_len, self.d_text), value

        d_head = self.width // self.heads
        q = self.w_q(text_ln).view(batch, text_len, self.heads, d_head).transpose(1, 2)
        k = key.view(batch, mod_len, self.heads, d_head).transpose(1, 2)
        v = value.view(batch, mod_len, self.heads, d_head).transpose(1, 2)

        # SDPA turns an all-masked row into NaN. For a sample with no valid frame we unmask frame 0 so
        # the softmax is defined, then zero that sample's output; both steps are tensor ops, so no
        # host-device synchronisation is needed.
        has_frames = modality_mask.any(dim=1)  # (B,)
        first_frame = torch.zeros_like(modality_mask)
        first_frame[:, 0] = True
        attend = modality_mask | (first_frame & ~has_frames[:, None])
        mask = attend[:, None, None, :]  # (B, 1, 1, Lm), broadcast over heads and queries
        dropout = self.dropout if self.training else 0.0
        if dropout > 0 and q.device.type == "cpu":
            out = attention_with_dropout(q, k, v, mask, dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, text_len, self.width)
        if self.w_o is not None:
            out = self.w_o(out)
        out = torch.where(has_frames[:, None, None], out, torch.zeros_like(out))
        return out, value

    def value_in_text_width(self, value: torch.Tensor) -> torch.Tensor:
        """V (B, Lm, w) → (B, Lm, dt): V W_O with a `width`, else V itself. Only MCC's "projected"
        alignment needs V in d_t, so this is not done in `forward` (it would cost Lm·w·dt per layer)."""
        return self.w_o(value) if self.w_o is not None else value
