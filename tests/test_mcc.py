"""MCC loss (paper Eq. 9–13; docs/design.md §5.5): alignments, forms, masks, gradients, where the loss is
zero, no host sync."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kebr_core.config import MCCConfig
from kebr_core.errors import KebrError
from kebr_core.modules.mcc import (
    ALIGNS,
    FORMS,
    authors_cosines,
    mcc_from_cosines,
    mcc_loss,
    projected_cosines,
    tile_cosines,
)


def lengths_to_mask(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]


def numpy_tile_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """kebr's pairwise tile, materialised: normalise, tile the shorter r times, zero-pad, cosine."""
    if a.size == 0 or b.size == 0:
        return 0.0
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    long, short = (a, b) if a.size >= b.size else (b, a)
    r = long.size // short.size
    tiled = np.concatenate([np.tile(short, r), np.zeros(long.size - r * short.size)])
    return float(long @ tiled / (np.linalg.norm(long) * np.linalg.norm(tiled)))


def numpy_tile_cosines(fused, t_len, modality, m_len) -> np.ndarray:
    pairs = [(fused[i, : t_len[i]], modality[i, : m_len[i]]) for i in range(len(t_len))]
    return np.array([numpy_tile_cosine(t.reshape(-1).numpy(), m.reshape(-1).numpy()) for t, m in pairs])


def paper_f(c_a: float, c_v: float, g: float, s: float) -> float:
    """Eq. 11–12 on Python floats."""
    th_a, th_v = math.acos(c_a), math.acos(c_v)
    y = math.cos((th_a + th_v) / 2) * math.exp(abs(th_a - th_v))
    f = s * abs(math.cos(math.pi * (y + g)))
    return f if (c_a >= 0 and c_v >= 0) else s + f


def reference_f(c_a: float, c_v: float, g: float, s: float) -> float:
    if c_a >= 0 and c_v >= 0:
        return s * abs(math.cos(math.pi * ((c_a + c_v) / 2 + g) * math.exp(0.5 * abs(c_a - c_v))))
    return s * (1 + abs(c_a) + abs(c_v))


def mean_cosine_f(c_a: float, c_v: float, g: float, s: float) -> float:
    """The authors' pretraining code: sim = (c_a + c_v)/2; (1 − sim)·s if sim < 0 else |cos(π(sim + angle))|·s."""
    sim = (c_a + c_v) / 2
    return (1 - sim) * s if sim < 0 else abs(math.cos(math.pi * (sim + g))) * s


def balanced_f(c_a: float, c_v: float, g: float, s: float) -> float:
    """kebr's balanced form: s·((c_a − c*)² + (c_v − c*)²), c* = 0.5 − g, on both branches."""
    return s * ((c_a - (0.5 - g)) ** 2 + (c_v - (0.5 - g)) ** 2)


FORMULAS = {"paper": paper_f, "reference": reference_f, "mean-cosine": mean_cosine_f, "balanced": balanced_f}


# ---------------------------------------------------------------- tile alignment


def test_tile_cosines_hand_computed() -> None:
    """dt = 3, dm = 2; every value below is worked out on paper (garbage in the padding)."""
    pad = 7.0
    fused = torch.tensor(
        [
            [[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]],  # n_t = 6
            [[1.0, 0.0, 0.0], [pad, pad, pad]],  # n_t = 3
            [[0.0, 1.0, 0.0], [pad, -pad, pad]],  # n_t = 3
            [[-1.0, 0.0, 0.0], [pad, pad, pad]],  # n_t = 3
        ]
    )
    modality = torch.tensor(
        [
            [[1.0, 1.0], [pad, pad], [pad, pad]],  # n_m = 2
            [[1.0, 0.0], [0.0, 1.0], [pad, pad]],  # n_m = 4
            [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],  # n_m = 6
            [[1.0, 0.0], [pad, -pad], [pad, pad]],  # n_m = 2
        ]
    )
    text_mask = lengths_to_mask([2, 1, 1, 1], 2)
    mod_mask = lengths_to_mask([1, 2, 3, 1], 3)
    # 0: text longer, r = 3: t = [1,2,0,1,0,0], tile = [1,1,1,1,1,1]: 4 / (√6 · √6) = 2/3
    # 1: modality longer, r = 1: tile(t) = [1,0,0,0], m = [1,0,0,1]: 1 / (1 · √2)
    # 2: modality longer, r = 2: tile(t) = [0,1,0,0,1,0], m = [1,0,0,1,1,1]: 1 / (√2 · 2)
    # 3: text longer, r = 1: t = [-1,0,0], tile = [1,0,0]: -1
    expected = torch.tensor([2 / 3, 1 / math.sqrt(2), 1 / (2 * math.sqrt(2)), -1.0])
    torch.testing.assert_close(tile_cosines(fused, text_mask, modality, mod_mask), expected)


def test_tile_cosines_two_samples_match_materialised_tiles() -> None:
    gen = torch.Generator().manual_seed(1)
    fused = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    modality = torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)
    t_len, m_len = [5, 2], [3, 7]  # sample 0: text longer (40 vs 9); sample 1: modality (16 vs 21)
    got = tile_cosines(fused, lengths_to_mask(t_len, 5), modality, lengths_to_mask(m_len, 7))
    np.testing.assert_allclose(got.numpy(), numpy_tile_cosines(fused, t_len, modality, m_len), atol=1e-12)


@pytest.mark.parametrize(
    "text_shape, mod_shape",
    [((6, 4), (9, 3)), ((3, 7), (20, 2)), ((5, 2), (2, 11)), ((4, 16), (3, 5)), ((2, 6), (4, 3))],
)
def test_tile_cosines_random_lengths_match_materialised_tiles(text_shape, mod_shape) -> None:
    """All regimes: text or modality longer, equal lengths, r = 1 to ~30, a frame wider than a row."""
    gen = torch.Generator().manual_seed(sum(text_shape) * 31 + sum(mod_shape))
    batch = 16
    (lt, dt), (lm, dm) = text_shape, mod_shape
    fused = torch.randn(batch, lt, dt, generator=gen, dtype=torch.float64)
    modality = torch.randn(batch, lm, dm, generator=gen, dtype=torch.float64)
    t_len = torch.randint(1, lt + 1, (batch,), generator=gen).tolist()
    m_len = torch.randint(1, lm + 1, (batch,), generator=gen).tolist()
    got = tile_cosines(fused, lengths_to_mask(t_len, lt), modality, lengths_to_mask(m_len, lm))
    np.testing.assert_allclose(got.numpy(), numpy_tile_cosines(fused, t_len, modality, m_len), atol=1e-12)
    assert got.abs().max() <= 1.0


def test_tile_cosine_of_equal_lengths_is_the_plain_cosine() -> None:
    gen = torch.Generator().manual_seed(2)
    fused = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64)
    modality = torch.randn(3, 4, 3, generator=gen, dtype=torch.float64)
    ones_t, ones_m = torch.ones(3, 2, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)
    expected = torch.nn.functional.cosine_similarity(fused.reshape(3, -1), modality.reshape(3, -1), dim=1)
    torch.testing.assert_close(tile_cosines(fused, ones_t, modality, ones_m), expected)


def test_tile_cosine_does_not_swap_audio_and_vision() -> None:
    """The authors' code put the audio vector in the vision slot; here each cosine uses its own."""
    fused = torch.tensor([[[1.0, 0.0]]])
    audio = torch.tensor([[[1.0, 0.0]]])
    vision = torch.tensor([[[0.0, 1.0]]])
    ones = torch.ones(1, 1, dtype=torch.bool)
    out = mcc_loss(fused, ones, audio, ones, vision, ones, MCCConfig())
    torch.testing.assert_close(out.c_a, torch.tensor([1.0]))
    torch.testing.assert_close(out.c_v, torch.tensor([0.0]))


# ---------------------------------------------------------------- projected alignment


def test_authors_alignment_hand_computed() -> None:
    """The authors' matrix_alignment, by hand: all three flattened PADDED tensors, normalised, tiled towards the
    longest (N = 3 here) and zero-padded; text padding counts, and the text is tiled too when it is shorter."""
    # text (1, 2, 1) = [1, 5] where 5 is padding; audio (1, 1, 1) = [3]; vision (1, 3, 1) = [1, 0, −1]
    fused = torch.tensor([[[1.0], [5.0]]])
    audio = torch.tensor([[[3.0]]])
    vision = torch.tensor([[[1.0], [0.0], [-1.0]]])
    c_a, c_v = authors_cosines(fused, audio, vision)
    # N = 3. text: [1, 5]/√26, r = 1, padded → [1, 5, 0]/√26; audio: [1], r = 3 → [1, 1, 1] (norm √3);
    # vision: [1, 0, −1]/√2. c_a = 6 / (√26 · √3); c_v = (1 − 0)/(√26 · √2)
    torch.testing.assert_close(c_a, torch.tensor([6 / (math.sqrt(26) * math.sqrt(3))]))
    torch.testing.assert_close(c_v, torch.tensor([1 / (math.sqrt(26) * math.sqrt(2))]))
    # Through mcc_loss (masks decide only which samples count) and against kebr's pairwise tile, which
    # reads the valid text [1] only and tiles audio to its length: cos([1], [1]) = 1.
    text_mask = torch.tensor([[True, False]])
    one = torch.ones(1, 1, dtype=torch.bool)
    out = mcc_loss(fused, text_mask, audio, one, vision, torch.ones(1, 3, dtype=torch.bool), MCCConfig(align="authors"))
    torch.testing.assert_close(out.c_a, c_a)
    assert tile_cosines(fused, text_mask, audio, one).item() == pytest.approx(1.0)


def test_authors_alignment_tiles_both_sides_and_differs_from_the_pairwise_tile() -> None:
    """Text shorter than audio but longer than vision: under "authors" the text (n = 2) and vision (n = 1) are
    both tiled to N = 4 (audio's size); kebr's tile pairs text with each modality on its own."""
    fused = torch.tensor([[[1.0, 2.0]]])  # n_t = 2
    audio = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # n_a = 4: [1, 0, 0, 1]
    vision = torch.tensor([[[2.0]]])  # n_v = 1
    c_a, c_v = authors_cosines(fused, audio, vision)
    # text → [1, 2, 1, 2]/√5 (norm √2); audio [1, 0, 0, 1]/√2; vision → [1, 1, 1, 1] (norm 2)
    torch.testing.assert_close(c_a, torch.tensor([(1 + 2) / (math.sqrt(5) * math.sqrt(2) * math.sqrt(2))]))
    torch.testing.assert_close(c_v, torch.tensor([6 / (math.sqrt(5) * math.sqrt(2) * 2)]))
    m1, m2, m1v = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
    # pairwise: text vs vision, vision tiled to [1, 1]: 3/(√5·√2) ≠ c_v above
    assert tile_cosines(fused, m1, vision, m1v).item() == pytest.approx(3 / math.sqrt(10))
    assert tile_cosines(fused, m1, audio, m2).item() == pytest.approx(c_a.item())  # equal here: r_t = 2 either way


def test_authors_alignment_matches_a_loop_over_the_authors_steps() -> None:
    """Random padded batch: authors_cosines equals the authors' steps written out per sample in numpy
    (flatten, normalise, repeat N // n, zero-pad to N, cosine)."""
    inputs, _ = random_batch(5, seed=13)
    c_a, c_v = authors_cosines(inputs["fused"], inputs["audio"], inputs["vision"])
    flats = [inputs[k].reshape(5, -1).numpy() for k in ("fused", "audio", "vision")]
    longest = max(f.shape[1] for f in flats)
    for i in range(5):
        aligned = []
        for f in flats:
            unit = f[i] / np.linalg.norm(f[i])
            tiled = np.tile(unit, longest // unit.size)
            aligned.append(np.concatenate([tiled, np.zeros(longest - tiled.size)]))
        t, a, v = aligned
        assert c_a[i].item() == pytest.approx(t @ a / (np.linalg.norm(t) * np.linalg.norm(a)), abs=1e-12)
        assert c_v[i].item() == pytest.approx(t @ v / (np.linalg.norm(t) * np.linalg.norm(v)), abs=1e-12)


def test_projected_cosines_hand_computed() -> None:
    fused = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])  # valid mean [2, 1]
    value = torch.tensor([[[1.0, 2.0], [-5.0, 5.0]]])  # valid mean [1, 2]
    got = projected_cosines(fused, lengths_to_mask([2], 3), value, lengths_to_mask([1], 2))
    torch.testing.assert_close(got, torch.tensor([4.0 / 5.0]))  # (2·1 + 1·2) / (√5 · √5)


# ---------------------------------------------------------------- f_i from cosines


@pytest.mark.parametrize("g", [-0.4, -0.1, 0.0, 0.2, 0.45])
@pytest.mark.parametrize("form", FORMS)
def test_balanced_zero_gives_zero_loss(g: float, form: str) -> None:
    c = torch.full((1,), 0.5 - g, dtype=torch.float64)
    f = mcc_from_cosines(c, c, g=g, s=1.0, form=form)
    assert f.item() == pytest.approx(0.0, abs=1e-9)
    # moving one cosine a little away raises the loss (it is not the only zero: see the next tests)
    assert mcc_from_cosines(c, c + 0.05, g=g, s=1.0, form=form).item() > 1e-3


def paper_y(c_a: float, c_v: float) -> float:
    th_a, th_v = math.acos(min(c_a, 1 - 1e-6)), math.acos(c_v)
    return math.cos((th_a + th_v) / 2) * math.exp(abs(th_a - th_v))


@pytest.mark.parametrize("c_a, c_v_rounded, half_integer", [(0.0, 0.393, 0.5), (0.1, 0.357, 0.5),
                                                             (0.9, 0.535, 1.5), (1.0, 0.963, 1.5)])
def test_paper_form_has_zeros_far_off_the_diagonal(c_a: float, c_v_rounded: float, half_integer: float) -> None:
    """Eq. 12's y reaches 3.40 (not 1), so y + g crosses 0.5 and 1.5 away from θ_a = θ_v: at g = 0.2 these
    (c_a, c_v), with |c_a − c_v| up to 0.44, give f = 0 as well (c_v solved by bisection in float64)."""
    g = 0.2
    low, high = c_v_rounded - 0.002, c_v_rounded + 0.002  # y + g − half_integer changes sign inside
    sign_low = paper_y(c_a, low) + g - half_integer
    assert sign_low * (paper_y(c_a, high) + g - half_integer) < 0
    for _ in range(60):
        mid = (low + high) / 2
        if (paper_y(c_a, mid) + g - half_integer) * sign_low > 0:
            low = mid
        else:
            high = mid
    c_v = (low + high) / 2
    assert round(c_v, 3) == c_v_rounded
    f = mcc_from_cosines(torch.tensor([c_a], dtype=torch.float64), torch.tensor([c_v], dtype=torch.float64), g, 1.0)
    assert f.item() < 1e-12


def test_paper_form_y_range_and_many_near_zeros_off_the_diagonal() -> None:
    c = torch.linspace(0, 1, 201, dtype=torch.float64)
    c_a, c_v = torch.meshgrid(c, c, indexing="ij")
    theta_a, theta_v = torch.acos(c_a.clamp(max=1 - 1e-6)), torch.acos(c_v.clamp(max=1 - 1e-6))
    y = torch.cos((theta_a + theta_v) / 2) * torch.exp((theta_a - theta_v).abs())
    assert y.min().item() >= 0 and y.max().item() == pytest.approx(math.cos(math.pi / 4) * math.exp(math.pi / 2), abs=1e-2)
    f = mcc_from_cosines(c_a.flatten(), c_v.flatten(), 0.2, 1.0).view_as(c_a)
    far = (c_a - c_v).abs() > 0.3
    assert int(((f < 1e-2) & far).sum()) > 100  # whole curves of (near-)zeros, not one point


def paper_grid(n: int = 2001, g: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """c_a, c_v on an n × n grid over [0, 1]² (float64) and the paper form's f there."""
    c = torch.linspace(0, 1, n, dtype=torch.float64)
    c_a, c_v = torch.meshgrid(c, c, indexing="ij")
    return c_a, c_v, mcc_from_cosines(c_a.flatten(), c_v.flatten(), g, 1.0).view_as(c_a)


def level_curve_point(c_a: float, level: float, low: float, high: float) -> float:
    """The c_v in [low, high] with y(c_a, c_v) = level, by bisection (y − level changes sign once there)."""
    sign_low = paper_y(c_a, low) - level
    assert sign_low * (paper_y(c_a, high) - level) < 0
    for _ in range(80):
        mid = (low + high) / 2
        if (paper_y(c_a, mid) - level) * sign_low > 0:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def test_paper_zero_set_is_whole_level_curves_with_the_reviews_numbers() -> None:
    """docs/design.md §5.5, measured on a 2001 × 2001 grid over (c_a, c_v) ∈ [0, 1]² at g = 0.2:
    - the zeros are the level curves y = 0.3, 1.3, 2.3, 3.3 (y ≤ 3.394 on the grid);
    - the y = 0.3 curve is the only one that meets the diagonal (at 0.3, 0.3); on it the angle gap
      |θ_a − θ_v| reaches 0.4035 rad (at (0, 0.393)), with f exactly 0 there;
    - the y = 1.3 curve passes (1.0, 0.963): both cosines near 1 at zero loss;
    - of the region where f < 0.05, 62.0 % has |c_a − c_v| > 0.2."""
    g = 0.2
    c_a, c_v, f = paper_grid(g=g)
    near = f < 0.05
    share = ((c_a - c_v).abs() > 0.2)[near].double().mean().item()
    assert share == pytest.approx(0.620, abs=0.005)

    # the largest angle gap at exactly zero loss on the y = 0.3 curve: sweep c_a along the curve
    gaps = []
    for a in np.linspace(0.0, 0.3, 61):
        v = level_curve_point(float(a), 0.5 - g, float(a), 1.0) if a < 0.3 else 0.3
        f_here = mcc_from_cosines(torch.tensor([float(a)], dtype=torch.float64),
                                  torch.tensor([v], dtype=torch.float64), g, 1.0).item()
        assert f_here < 1e-9
        gaps.append(abs(math.acos(a) - math.acos(v)))
    assert max(gaps) == pytest.approx(0.4035, abs=5e-4)
    assert int(np.argmax(gaps)) == 0  # at c_a = 0, the curve's end
    assert min(gaps) == pytest.approx(0.0, abs=1e-6)  # and at the diagonal, (0.3, 0.3)

    # on the diagonal y = cos θ ≤ 1, so 1.3, 2.3, 3.3 are never reached there: one diagonal zero
    diagonal = torch.linspace(0, 1, 100001, dtype=torch.float64)
    f_diag = mcc_from_cosines(diagonal, diagonal, g, 1.0)
    local_minima = (f_diag[1:-1] < f_diag[:-2]) & (f_diag[1:-1] < f_diag[2:])
    assert int(local_minima.sum()) == 1
    assert diagonal[1:-1][local_minima].item() == pytest.approx(0.3, abs=1e-4)

    # the y = 1.3 curve: c_v for c_a = 1 (clamped as the loss clamps), and zero loss there
    v = level_curve_point(1.0, 1.5 - g, 0.0, 1.0)
    assert v == pytest.approx(0.963, abs=5e-4)
    assert mcc_from_cosines(torch.tensor([1.0], dtype=torch.float64), torch.tensor([v], dtype=torch.float64),
                            g, 1.0).item() < 1e-6
    # each of the four curves holds grid points where f is (near) zero
    theta_a, theta_v = torch.acos(c_a.clamp(max=1 - 1e-6)), torch.acos(c_v.clamp(max=1 - 1e-6))
    y = torch.cos((theta_a + theta_v) / 2) * torch.exp((theta_a - theta_v).abs())
    assert y.max().item() == pytest.approx(3.394, abs=1e-3)
    for level in (0.3, 1.3, 2.3, 3.3):
        on_curve = (y - level).abs() < 2e-3
        assert on_curve.any() and f[on_curve].max().item() < 0.02


# ---------------------------------------------------------------- the balanced form (kebr's, not the paper's)


@pytest.mark.parametrize("g", [-0.3, 0.0, 0.2, 0.4])
def test_balanced_form_has_its_unique_grid_minimum_at_the_balanced_point(g: float) -> None:
    c = torch.linspace(-1, 1, 801, dtype=torch.float64)  # step 0.0025: 0.5 − g lies on the grid
    c_a, c_v = torch.meshgrid(c, c, indexing="ij")
    f = mcc_from_cosines(c_a.flatten(), c_v.flatten(), g, 1.0, "balanced").view_as(c_a)
    k = int(torch.argmin(f))
    assert c_a.flatten()[k].item() == pytest.approx(0.5 - g, abs=1e-12)
    assert c_v.flatten()[k].item() == pytest.approx(0.5 - g, abs=1e-12)
    assert f.flatten()[k].item() == pytest.approx(0.0, abs=1e-24)
    assert int((f < 1e-12).sum()) == 1  # one zero, not a curve
    # the paper's own zero curve y = 0.3 (g = 0.2) costs the balanced form (0 − 0.3)² + (0.393 − 0.3)² there
    if g == 0.2:
        f_end = mcc_from_cosines(torch.tensor([0.0], dtype=torch.float64), torch.tensor([0.3927], dtype=torch.float64),
                                 g, 1.0, "balanced").item()
        assert f_end == pytest.approx(0.09 + 0.0927**2, abs=1e-9)


@pytest.mark.parametrize("c_a, c_v", [(0.9, 0.3), (-0.5, 0.3), (0.3, 0.95), (0.3, -0.8), (0.8, 0.8), (-0.6, -0.6),
                                      (0.9, -0.2), (0.0, 0.6), (0.31, 0.29)])
def test_balanced_form_gradient_points_to_the_balanced_point_from_every_side(c_a: float, c_v: float) -> None:
    """−∇f is 2s·(c* − c): exactly towards (c*, c*) from every side, and a small step lowers f."""
    g, s = 0.2, 1.5
    a = torch.tensor([c_a], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([c_v], dtype=torch.float64, requires_grad=True)
    f = mcc_from_cosines(a, v, g, s, "balanced")
    f.sum().backward()
    target = 0.5 - g
    assert a.grad.item() == pytest.approx(2 * s * (c_a - target), abs=1e-12)
    assert v.grad.item() == pytest.approx(2 * s * (c_v - target), abs=1e-12)
    step = 1e-3
    moved = mcc_from_cosines(a.detach() - step * a.grad, v.detach() - step * v.grad, g, s, "balanced")
    assert moved.item() < f.item()


def test_balanced_form_penalises_the_gap_explicitly() -> None:
    """(c_a − c*)² + (c_v − c*)² = 2(m − c*)² + (c_a − c_v)²/2: at equal mean cosine, a gap costs."""
    c_a = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    c_v = torch.tensor([0.3, 0.1, -0.1], dtype=torch.float64)
    f = mcc_from_cosines(c_a, c_v, 0.2, 1.0, "balanced")
    torch.testing.assert_close(f, torch.tensor([0.0, 0.08, 0.32], dtype=torch.float64), atol=1e-12, rtol=0)


def test_balanced_form_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(3)
    c_a = (torch.rand(7, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    c_v = (torch.rand(7, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, v: mcc_from_cosines(a, v, 0.15, 1.3, "balanced"), (c_a, c_v))


def test_paper_form_is_v_shaped_at_the_balanced_zero() -> None:
    """On the diagonal f = s·|cos(π(c + g))|: each cosine's gradient is ±π·s/2 just either side of c = 0.5 − g."""
    g, s = 0.2, 1.5
    for delta, sign in ((1e-6, 1.0), (-1e-6, -1.0)):
        c_a = torch.tensor([0.3 + delta], dtype=torch.float64, requires_grad=True)
        c_v = torch.tensor([0.3 + delta], dtype=torch.float64, requires_grad=True)
        mcc_from_cosines(c_a, c_v, g, s).sum().backward()
        assert c_a.grad.item() == pytest.approx(sign * math.pi * s / 2, rel=1e-4)
        assert c_v.grad.item() == pytest.approx(sign * math.pi * s / 2, rel=1e-4)


def test_mean_cosine_form_hand_computed() -> None:
    """The authors' pretraining form, by hand: m = (c_a + c_v)/2; s·|cos(π(m + g))| for m ≥ 0, else s·(1 − m)."""
    c_a = torch.tensor([0.3, -0.4, 0.5, 0.2, -0.1], dtype=torch.float64)
    c_v = torch.tensor([0.1, 0.2, 0.0, -0.2, 0.0], dtype=torch.float64)
    f = mcc_from_cosines(c_a, c_v, g=0.25, s=1.0, form="mean-cosine")
    expected = [
        math.cos(0.45 * math.pi),  # m = 0.2: |cos(0.45π)| = 0.156434…
        1.1,  # m = −0.1: 1 − (−0.1); one negative cosine alone does not switch the branch, the mean does
        0.0,  # m = 0.25: cos(π/2), the zero at m = 0.5 − g
        math.cos(0.25 * math.pi),  # m = 0 takes the |cos| branch: cos(π/4)
        1.05,  # m = −0.05
    ]
    torch.testing.assert_close(f, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)
    assert f[0].item() == pytest.approx(0.15643446504, abs=1e-10)
    assert mcc_from_cosines(c_a[1:2], c_v[1:2], 0.25, 2.0, "mean-cosine").item() == pytest.approx(2.2)


@pytest.mark.parametrize(
    "c_a, c_v", [(0.6, 0.2), (0.0, 0.9), (-0.3, 0.5), (0.4, -0.01), (-0.7, -0.2), (0.95, 0.1)]
)
@pytest.mark.parametrize("form", FORMS)
def test_f_matches_the_formulas(c_a: float, c_v: float, form: str) -> None:
    g, s = 0.2, 1.5
    ref = FORMULAS[form]
    c_a_t, c_v_t = torch.tensor([c_a], dtype=torch.float64), torch.tensor([c_v], dtype=torch.float64)
    got = mcc_from_cosines(c_a_t, c_v_t, g, s, form)
    assert got.item() == pytest.approx(ref(c_a, c_v, g, s), abs=1e-9)


def test_branch_conditions_hand_values() -> None:
    g, s = 0.2, 1.0
    c_a = torch.tensor([0.0, -1e-4, 0.3, 0.3], dtype=torch.float64)
    c_v = torch.tensor([0.0, 0.5, 0.3, -0.3], dtype=torch.float64)
    f = mcc_from_cosines(c_a, c_v, g, s, "paper")
    # c_a = c_v = 0: θ = π/2 both, y = cos(π/2)·e^0 = 0, f = |cos(0.2π)| (the c ≥ 0 branch)
    assert f[0].item() == pytest.approx(math.cos(0.2 * math.pi), abs=1e-5)
    # a tiny negative cosine takes the "s + f" branch
    th_a, th_v = math.acos(-1e-4), math.acos(0.5)
    y = math.cos((th_a + th_v) / 2) * math.exp(abs(th_a - th_v))
    assert f[1].item() == pytest.approx(s + s * abs(math.cos(math.pi * (y + g))), abs=1e-9)
    # the balanced zero (0.3 = 0.5 − g) and its negative mirror: the extra loss is exactly s
    assert f[2].item() == pytest.approx(0.0, abs=1e-9)
    assert f[3].item() >= 1.0
    ref = mcc_from_cosines(c_a, c_v, g, s, "reference")
    assert ref[1].item() == pytest.approx(1 + 1e-4 + 0.5)
    assert ref[3].item() == pytest.approx(1.6)
    assert mcc_from_cosines(c_a[3:], c_v[3:], g, 2.0, "reference").item() == pytest.approx(3.2)


def test_clamped_cosines_keep_gradients_finite() -> None:
    c = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([1.0, 0.5, -1.0], dtype=torch.float64, requires_grad=True)
    mcc_from_cosines(c, d, 0.2, 1.0, "paper").sum().backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(d.grad).all()


def test_unknown_form_and_alignment_are_user_errors() -> None:
    x = torch.randn(1, 2, 3)
    m = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(KebrError, match="mcc.form must be one of paper, reference, mean-cosine"):
        MCCConfig(form="papr")  # refused on construction (kebr_core.config) ...
    with pytest.raises(KebrError, match="mcc.align must be one of tile, authors, projected"):
        MCCConfig(align="tiles")
    bad_form, bad_align = MCCConfig(), MCCConfig()
    bad_form.form, bad_align.align = "papr", "tiles"  # ... and by the loss when set by hand afterwards
    with pytest.raises(KebrError, match="form"):
        mcc_loss(x, m, x, m, x, m, bad_form)
    with pytest.raises(KebrError, match="alignment"):
        mcc_loss(x, m, x, m, x, m, bad_align)
    with pytest.raises(ValueError, match="value_audio"):
        mcc_loss(x, m, x, m, x, m, MCCConfig(align="projected"))


# ---------------------------------------------------------------- the batched loss


def random_batch(batch: int, seed: int, dtype=torch.float64, lt=6, dt=8, la=10, da=3, lv=4, dv=7):
    gen = torch.Generator().manual_seed(seed)
    t_len = torch.randint(1, lt + 1, (batch,), generator=gen).tolist()
    a_len = torch.randint(1, la + 1, (batch,), generator=gen).tolist()
    v_len = torch.randint(1, lv + 1, (batch,), generator=gen).tolist()
    return dict(
        fused=torch.randn(batch, lt, dt, generator=gen, dtype=dtype),
        text_mask=lengths_to_mask(t_len, lt),
        audio=torch.randn(batch, la, da, generator=gen, dtype=dtype),
        audio_mask=lengths_to_mask(a_len, la),
        vision=torch.randn(batch, lv, dv, generator=gen, dtype=dtype),
        vision_mask=lengths_to_mask(v_len, lv),
        value_audio=torch.randn(batch, la, dt, generator=gen, dtype=dtype),
        value_vision=torch.randn(batch, lv, dt, generator=gen, dtype=dtype),
    ), (t_len, a_len, v_len)


def test_mcc_loss_hand_computed() -> None:
    """Tile cosines known by hand (see test_tile_cosines_hand_computed), f from the formulas."""
    fused = torch.tensor([[[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
    audio = torch.tensor([[[1.0, 1.0], [3.0, 3.0]], [[1.0, 0.0], [0.0, 1.0]]])
    vision = torch.tensor([[[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]])
    text_mask = lengths_to_mask([2, 1], 2)
    audio_mask = lengths_to_mask([1, 2], 2)
    vision_mask = lengths_to_mask([1, 1], 1)
    # sample 0: c_a = 2/3 (r = 3); c_v: t = [1,2,0,1,0,0], v = [1,0,0,1,0,0]: 2 / (√6·√2) = 1/√3
    # sample 1: c_a: tile(t) = [0,1,0,0], a = [1,0,0,1]: 0
    #           c_v: tile(t) = [0,1,0,0,1,0], v = [0,1,0,0,0,0]: 1 / (√2 · 1)
    c_a, c_v = [2 / 3, 0.0], [1 / math.sqrt(3), 1 / math.sqrt(2)]
    for form, ref in FORMULAS.items():
        out = mcc_loss(fused, text_mask, audio, audio_mask, vision, vision_mask, MCCConfig(form=form))
        torch.testing.assert_close(out.c_a, torch.tensor(c_a))
        torch.testing.assert_close(out.c_v, torch.tensor(c_v))
        f = [ref(a, v, 0.2, 1.0) for a, v in zip(c_a, c_v)]
        torch.testing.assert_close(out.per_sample, torch.tensor(f), atol=1e-5, rtol=1e-5)
        assert out.loss.item() == pytest.approx(sum(f) / 2, abs=1e-5)


@pytest.mark.parametrize("align", ["tile", "projected"])  # "authors" reads padding: cropping changes it
@pytest.mark.parametrize("form", FORMS)
def test_batched_loss_equals_per_sample_loop(align: str, form: str) -> None:
    inputs, (t_len, a_len, v_len) = random_batch(7, seed=3)
    cfg = MCCConfig(g=0.1, s=2.0, form=form, align=align)
    out = mcc_loss(**inputs, cfg=cfg)
    per_sample = []
    for i in range(7):  # each sample alone, cropped to its own lengths (no padding at all)
        crop = dict(
            fused=inputs["fused"][i : i + 1, : t_len[i]],
            text_mask=torch.ones(1, t_len[i], dtype=torch.bool),
            audio=inputs["audio"][i : i + 1, : a_len[i]],
            audio_mask=torch.ones(1, a_len[i], dtype=torch.bool),
            vision=inputs["vision"][i : i + 1, : v_len[i]],
            vision_mask=torch.ones(1, v_len[i], dtype=torch.bool),
            value_audio=inputs["value_audio"][i : i + 1, : a_len[i]],
            value_vision=inputs["value_vision"][i : i + 1, : v_len[i]],
        )
        per_sample.append(mcc_loss(**crop, cfg=cfg).loss)
    torch.testing.assert_close(out.per_sample, torch.stack(per_sample))
    torch.testing.assert_close(out.loss, torch.stack(per_sample).mean())
    if align == "tile":  # and against the materialised numpy tiles
        expected = numpy_tile_cosines(inputs["fused"], t_len, inputs["audio"], a_len)
        np.testing.assert_allclose(out.c_a.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("align", ["tile", "projected"])
def test_padding_garbage_changes_nothing(align: str) -> None:
    inputs, _ = random_batch(5, seed=4)
    cfg = MCCConfig(align=align)
    base = mcc_loss(**inputs, cfg=cfg)
    gen = torch.Generator().manual_seed(5)
    padded = {}
    for name, mask_name, extra in (
        ("fused", "text_mask", 3), ("audio", "audio_mask", 4), ("vision", "vision_mask", 2)
    ):
        x, mask = inputs[name], inputs[mask_name]
        garbage = 100 * torch.randn(x.shape[0], extra, x.shape[2], generator=gen, dtype=x.dtype)
        # also overwrite the existing padding with garbage
        padded[name] = torch.cat([torch.where(mask[:, :, None], x, 55.0), garbage], dim=1)
        padded[mask_name] = torch.cat([mask, torch.zeros(x.shape[0], extra, dtype=torch.bool)], dim=1)
    for name, mask_name in (("value_audio", "audio_mask"), ("value_vision", "vision_mask")):
        x = inputs[name]
        extra = padded[mask_name].shape[1] - x.shape[1]
        padded[name] = torch.cat([x, -77 * torch.ones(x.shape[0], extra, x.shape[2], dtype=x.dtype)], dim=1)
    out = mcc_loss(**padded, cfg=cfg)
    torch.testing.assert_close(out.per_sample, base.per_sample)
    torch.testing.assert_close(out.c_a, base.c_a)
    torch.testing.assert_close(out.c_v, base.c_v)


@pytest.mark.parametrize("align", ["tile", "projected"])
def test_sample_without_a_modality_is_excluded(align: str) -> None:
    inputs, _ = random_batch(4, seed=6)
    inputs["audio_mask"][1] = False  # sample 1 has no audio
    inputs["vision_mask"][3] = False  # sample 3 has no face
    fused = inputs.pop("fused").requires_grad_()
    out = mcc_loss(fused=fused, **inputs, cfg=MCCConfig(align=align))
    assert out.valid.tolist() == [True, False, True, False]
    assert out.per_sample[1].item() == 0.0 and out.per_sample[3].item() == 0.0
    assert out.loss.item() == pytest.approx((out.per_sample[0] + out.per_sample[2]).item() / 2)
    out.loss.backward()
    assert torch.isfinite(fused.grad).all()
    assert fused.grad[1].abs().sum() == 0 and fused.grad[3].abs().sum() == 0
    assert fused.grad[0].abs().sum() > 0


def test_no_valid_sample_gives_zero_loss_with_a_graph() -> None:
    inputs, _ = random_batch(3, seed=7)
    inputs["vision"] = inputs["vision"][:, :0]  # nobody in the batch has a face
    inputs["vision_mask"] = inputs["vision_mask"][:, :0]
    fused = inputs.pop("fused").requires_grad_()
    out = mcc_loss(fused=fused, **inputs, cfg=MCCConfig())
    assert out.loss.item() == 0.0 and not out.valid.any()
    out.loss.backward()
    assert torch.equal(fused.grad, torch.zeros_like(fused))


@pytest.mark.parametrize("batch", [1, 32])
def test_shapes(batch: int) -> None:
    inputs, _ = random_batch(batch, seed=8, dtype=torch.float32)
    out = mcc_loss(**inputs, cfg=MCCConfig())
    assert out.loss.shape == ()
    for t in (out.per_sample, out.c_a, out.c_v, out.valid):
        assert t.shape == (batch,)
    assert torch.isfinite(out.per_sample).all()


def test_bf16_inputs_are_computed_in_float32() -> None:
    """bf16 inputs give what float32 arithmetic gives on the same (rounded) values; the only error left
    is the inputs' rounding (measured ≤ 2.7e-3 here)."""
    inputs, _ = random_batch(4, seed=9, dtype=torch.float32)
    low = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    out = mcc_loss(**low, cfg=MCCConfig())
    same_values = mcc_loss(**{k: v.float() if v.is_floating_point() else v for k, v in low.items()}, cfg=MCCConfig())
    exact = mcc_loss(**inputs, cfg=MCCConfig())
    for name in ("c_a", "c_v", "per_sample", "loss"):
        assert getattr(out, name).dtype == torch.float32
        torch.testing.assert_close(getattr(out, name), getattr(same_values, name), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(getattr(out, name), getattr(exact, name), atol=5e-3, rtol=0)


def kink_distance(c_a: torch.Tensor, c_v: torch.Tensor, g: float, form: str) -> float:
    """Distance of the cosines from the non-differentiable points of f (|·| zeros, branch edges)."""
    if form == "paper":
        th_a, th_v = torch.acos(c_a), torch.acos(c_v)
        inner = math.pi * (torch.cos((th_a + th_v) / 2) * torch.exp((th_a - th_v).abs()) + g)
        gap = (th_a - th_v).abs()
    elif form == "mean-cosine":
        mean = (c_a + c_v) / 2
        return min(mean.abs().min().item(), torch.cos(math.pi * (mean + g)).abs().min().item())
    elif form == "balanced":
        return math.inf  # smooth everywhere: no kink to stay away from
    else:
        inner = math.pi * ((c_a + c_v) / 2 + g) * torch.exp(0.5 * (c_a - c_v).abs())
        gap = (c_a - c_v).abs()
    distances = (c_a.abs(), c_v.abs(), torch.cos(inner).abs(), gap)
    return min(d.min().item() for d in distances)


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("form", FORMS)
def test_gradcheck(align: str, form: str) -> None:
    inputs, _ = random_batch(3, seed=10, lt=3, dt=4, la=4, da=2, lv=2, dv=3)
    # a shared direction gives larger, more varied cosines than pure noise
    inputs["fused"] = inputs["fused"] + 0.8
    inputs["value_audio"] = inputs["value_audio"] + 0.5
    cfg = MCCConfig(g=0.1, s=1.3, form=form, align=align)
    out = mcc_loss(**inputs, cfg=cfg)
    assert kink_distance(out.c_a, out.c_v, cfg.g, form) > 1e-3  # gradcheck must not straddle a kink
    negative = (out.c_a < 0) | (out.c_v < 0)
    assert negative.any() and not negative.all()  # both branches of Eq. 11 are exercised

    grads = ["fused", "value_audio", "value_vision"] if align == "projected" else ["fused", "audio", "vision"]
    leaves = [inputs[name].clone().requires_grad_() for name in grads]

    def loss(*xs: torch.Tensor) -> torch.Tensor:
        return mcc_loss(**{**inputs, **dict(zip(grads, xs))}, cfg=cfg).loss

    assert torch.autograd.gradcheck(loss, leaves)


def test_gradcheck_tile_cosines_with_variable_lengths() -> None:
    inputs, (t_len, a_len, _) = random_batch(4, seed=11, lt=3, dt=4, la=6, da=3)
    fused = inputs["fused"].requires_grad_()
    audio = inputs["audio"].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, a: tile_cosines(f, inputs["text_mask"], a, inputs["audio_mask"]), (fused, audio)
    )


@pytest.mark.cuda
@pytest.mark.parametrize("align", ["tile", "projected"])
def test_no_host_device_sync_on_cuda(align: str) -> None:
    inputs, _ = random_batch(8, seed=12, dtype=torch.float32)
    inputs = {k: v.cuda() for k, v in inputs.items()}
    inputs["vision_mask"][2] = False  # a sample without a face on the way
    fused = inputs.pop("fused").requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = mcc_loss(fused=fused, **inputs, cfg=MCCConfig(align=align))
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_inputs = {k: v.cpu() for k, v in inputs.items()}
    cpu = mcc_loss(fused=fused.detach().cpu(), **cpu_inputs, cfg=MCCConfig(align=align))
    torch.testing.assert_close(out.per_sample.cpu(), cpu.per_sample, atol=1e-5, rtol=1e-5)
