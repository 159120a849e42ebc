"""Masked mean pooling over a padded sequence: the utterance vector of the fine-tuning head (Eq. 15),
late fusion's per-modality pools (ablation C3) and MCC's "projected" alignment (Eq. 9)."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over its valid positions: x (B, L, d), mask (B, L) bool → (B, d) in the dtype of the sum.

    A sample with no valid position gives a zero vector (the count is floored at 1). Padding is never
    read: `where`, not a product with the mask, so a non-finite value there cannot leak in as NaN.
    The count is cast to the sum's dtype, which is float32 when autocast runs `sum` in float32 (CUDA):
    a count above 256 would round in bf16. Callers that need float32 from bf16 input upcast x first.
    """
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    summed = torch.where(mask[:, :, None], x, zero).sum(dim=1)
    return summed / mask.sum(dim=1, keepdim=True).clamp_min(1).to(summed.dtype)
