"""The one masked mean (kebr_core.modules.pooling): used by the fine-tuning head, late fusion and MCC."""

import pytest
import torch

from kebr_core.modules.pooling import masked_mean


def test_masked_mean_by_hand() -> None:
    """Sample 0 has valid positions 0 and 2 (padding is never at the front in kebr, but the mean must not
    care), sample 1 only position 0, sample 2 none: a zero vector."""
    x = torch.tensor([[[1.0, 2.0], [100.0, 100.0], [4.0, -6.0]],
                      [[3.0, 5.0], [7.0, 7.0], [9.0, 9.0]],
                      [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, False, False], [False, False, False]])
    expected = torch.tensor([[(1 + 4) / 2, (2 - 6) / 2], [3.0, 5.0], [0.0, 0.0]], dtype=torch.float64)
    out = masked_mean(x, mask)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_masked_mean_ignores_non_finite_padding_and_passes_gradient_to_valid_positions_only() -> None:
    x = torch.tensor([[[2.0], [float("nan")], [float("inf")]]], requires_grad=True)
    mask = torch.tensor([[True, False, False]])
    out = masked_mean(x, mask)
    assert out.item() == 2.0
    out.sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0]


@pytest.mark.cuda  # CUDA autocast runs sum in float32; CPU autocast does not
def test_masked_mean_under_cuda_autocast_divides_by_the_exact_count() -> None:
    """301 valid bf16 ones: autocast sums them in float32 (301), and 301 is no bf16 number (it rounds
    to 300), so a count cast to x's dtype would give 301/300; cast to the sum's, the mean is 1."""
    x = torch.ones(2, 301, 3, dtype=torch.bfloat16, device="cuda")
    mask = torch.ones(2, 301, dtype=torch.bool, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = masked_mean(x, mask)
    assert out.dtype == torch.float32
    assert out.eq(1.0).all()
