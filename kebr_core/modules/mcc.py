"""Multimodal Cosine Constraint, MCC (paper §3.4, Eq. 9–13; docs/design.md §5.5).

Per sample i, with cosines c_a = cos(X_K, X0a) and c_v = cos(X_K, X0v) and angles
θ_m = arccos(clamp(c_m, −1+ε, 1−ε)):

    y_i = cos((θ_a + θ_v) / 2) · exp(|θ_a − θ_v|)               Eq. 12 (|·|: "Δθ must be minimised")
    f_i = s · |cos(π (y_i + g))|       if c_a ≥ 0 and c_v ≥ 0    Eq. 11
    f_i = s + s · |cos(π (y_i + g))|   otherwise                 ("a larger loss s + f")
    L_mcc = mean_i f_i                                           Eq. 10

Where f_i is zero (docs/design.md §5.5 derives it): wherever y_i + g is a half-integer. y is
symmetric in the angles, equals cos θ on the diagonal and spans [0, 3.39] on non-negative cosines
(its maximum cos(π/4)·e^(π/2) at θ_a = 0, θ_v = π/2), so the zero set is the whole level curves
y = 0.5 − g, 1.5 − g, 2.5 − g, 3.5 − g that fall in that range. Only the first meets the diagonal, at
the balanced zero cos θ_a = cos θ_v = 0.5 − g; the others lie entirely off it. At g = 0.2 the y = 0.3
curve runs from (c_a, c_v) = (0, 0.393) through (0.3, 0.3), its angle gap |θ_a − θ_v| reaching 0.404
at the ends, and the y = 1.3 curve passes (1.0, 0.963). Around any zero the loss is V-shaped, |cos|
of a linear function: on the diagonal each cosine's gradient is ±π·s/2, its sign flipping at the
zero, as an L1 loss (tests/test_mcc.py pins these facts).

Forms (`FORMS`), the f_i of the two cosines:
- "paper": Eq. 11–12 above.
- "reference": the authors' fine-tuning code, s · |cos(π ((c_a + c_v)/2 + g) · exp(0.5 |c_a − c_v|))|,
  or s · (1 + |c_a| + |c_v|) when either cosine is negative (with s = 1 exactly their code).
- "mean-cosine": the authors' pretraining code, on the mean cosine m = (c_a + c_v)/2:
  s · |cos(π (m + g))|, or s · (1 − m) when m < 0. Their run used g = 1/4 and λ = 0.5
  (`--mcc-form mean-cosine --g 0.25 --lambda-mcc 0.5`).
- "balanced" (kebr's, NOT the paper's): with c* = 0.5 − g, s · ((c_a − c*)² + (c_v − c*)²)
  = s · (2 (m − c*)² + (c_a − c_v)²/2), m the mean cosine: one zero, at c_a = c_v = c*, smooth and
  convex everywhere, its gradient 2s(c_m − c*) pointing at that point from every side; no branch for
  negative cosines (the distance already grows there). Why this form: docs/design.md §5.5.

Alignments (`ALIGNS`), how X_K and a modality's sequence, of different sizes, give one cosine:
- "tile" (default; kebr's pairwise tile, not the authors'): per sample and per pair (text, modality),
  flatten each one's valid part, L2-normalise, tile the shorter vector by integer repetition up to the
  longer one's length and zero-pad the rest (`tile_cosines`). Padding is never read.
- "authors" (the authors' `matrix_alignment`): per batch, flatten each of the three PADDED tensors
  (text, audio, vision; padding included), L2-normalise, tile each by integer repetition towards the
  longest of the three and zero-pad to its length, then take the cosine of text with each modality
  (`authors_cosines`). Both sides may be tiled, with different periods, and padding counts. Two
  differences remain: vision is tiled from the vision tensor (their code tiles audio in its place, a
  bug), and kebr pads each batch to its own longest sequence where they padded to fixed lengths, so
  the padded sizes (hence the cosines) match theirs only on batches of the same padded shape.
- "projected": cosine between the masked means of X_K and of the modality's value projection V, both
  in d_t (`projected_cosines`).

Everything is vectorised over the batch and free of host-device synchronisation, so a CUDA training
step never waits on it. Padding is assumed to sit at the end of each sequence (as the collate pads).
The returned loss is unweighted: the caller multiplies by λ (`MCCConfig.weight`, Eq. 17). The settings come
as any object with g, s, form and align (`MCCSettings`; `kebr_core.config.MCCConfig` is one): this module
imports only torch and its siblings, and the config imports `FORMS` and `ALIGNS` from here.

One cohesive module over 400 lines: the cosines of every alignment (sharing the tile machinery)
and the forms of f_i, registered once by name in `FORMS` and `ALIGNS` (name → function), which the config
and the CLI read their choices from.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Protocol

import torch
from torch import Tensor

from kebr_core.errors import KebrError
from kebr_core.modules.pooling import masked_mean

_NORM_EPS = 1e-12  # as F.normalize: a zero vector stays zero instead of dividing by 0


class MCCOutput(NamedTuple):
    """loss: scalar mean of f_i over valid samples (0, still with a graph, if none is valid);
    per_sample: f_i (B,), 0 where not valid; c_a, c_v: the cosines (B,), 0 where not computable;
    valid: (B,) bool, samples with at least one text, audio and vision frame."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    c_a: torch.Tensor
    c_v: torch.Tensor
    valid: torch.Tensor


def full_precision(fn):
    """Run `fn` with autocast off on its tensors' device: autocast would cast the cosines' matmul and
    vecdot back to bf16 despite the float32 upcast, erring by up to ~3e-3 in a cosine."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)).device
        with torch.autocast(device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16/fp16 activations are upcast: sums over ~40k products need float32 accumulation
    return torch.promote_types(x.dtype, torch.float32)


def _safe_sqrt(sum_of_squares: torch.Tensor) -> torch.Tensor:
    """Norm from a sum of squares, floored at eps; clamping before the sqrt keeps the gradient finite
    for an all-zero vector (sqrt'(0) = inf would turn a zero upstream gradient into NaN)."""
    return sum_of_squares.clamp_min(_NORM_EPS**2).sqrt()


class _Side(NamedTuple):
    """A padded sequence for the tile alignment: seq (B, L, d) in the compute dtype, mask (B, L) bool,
    length (B,) int64 valid positions. Padding sits at the end and must hold finite values: it is
    never read by the alignment and never zeroed (that would be a pass over the data for nothing)."""

    seq: torch.Tensor
    mask: torch.Tensor
    length: torch.Tensor


def _side(x: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> _Side:
    return _Side(x.to(dtype), mask, mask.sum(dim=1))


def _masked_norm(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2 norm of the valid positions of x (B, L, d) → (B,), summed per position under the mask."""
    per_position = torch.linalg.vector_norm(x, dim=-1)  # one read of x; its backward is 0 at a 0 vector
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return _safe_sqrt(torch.where(mask, per_position.square(), zero).sum(dim=1))


class _TextProducts(torch.autograd.Function):
    """Squared norm of the text's valid part and its dot products with the partners, in one node.

    forward(x (B, L, d), mask (B, L), partners (B, L·d, P)) → (B, 1 + P):
        column 0: Σ_{valid l} ‖x_l‖²; column p: ⟨x_flat, partner_p⟩ (partners are 0 at padding).
    Written by hand because it is the loss's hot path: the P dot products are one batched matmul
    (no (B, L·d) temporaries) and the backward pass grad_x = 2·g_0·mask·x + partners·g is two passes
    over x, where autograd's chain (vector_norm, square, where, P vecdots, accumulation) takes ~3P.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        ctx.save_for_backward(x, mask, partners)
        per_position = torch.linalg.vector_norm(x, dim=-1)  # (B, L), one read of x, no temporary
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        sum_of_squares = torch.where(mask, per_position.square(), zero).sum(dim=1, keepdim=True)
        dots = torch.matmul(x.reshape(batch, 1, length * dim), partners)[:, 0]  # (B, P)
        return torch.cat([sum_of_squares, dots], dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, torch.Tensor | None]:
        x, mask, partners = ctx.saved_tensors
        batch, length, dim = x.shape
        grad_x = grad_partners = None
        if ctx.needs_input_grad[0]:
            zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
            grad_x = x * torch.where(mask, 2 * grad[:, :1], zero)[:, :, None]
            grad_x.view(batch, 1, length * dim).baddbmm_(grad[:, None, 1:], partners.transpose(1, 2))
        if ctx.needs_input_grad[2]:
            grad_partners = x.reshape(batch, length * dim, 1) * grad[:, None, 1:]
        return grad_x, None, grad_partners


def _tile_partners(text: _Side, modalities: list[_Side]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each modality aligned to the text's flattened layout: cos_p = ⟨t, partner_p⟩ / (‖t‖ ‖m_p‖ √r_p).

    Per sample, with n_t = Lt_i·dt and n_m = Lm_i·dm the flattened valid lengths and r = N // n
    (N the longer, n the shorter):
    - text longer: partner[k] = m[k mod n_m] for k < r·n_m, else 0: the tiled, zero-padded modality.
    - modality longer: partner[c] = Σ_{j<r} m[j·n_t + c] for c < n_t: the modality folded into
      chunks of the text's length, since ⟨fold(m), t⟩ = ⟨m, tile(t)⟩; the tiled text is never built.

    Both are built with whole-row copies and index arithmetic on row numbers only (a few thousand
    indices, not one per element). Per sample, one buffer holds every modality in a segment of whole
    dt-long blocks:

        [ m (valid n_m, then padding) | m[0:dt] repeated, written at n_m | ≥ dt zeros ]   per modality

    - tile: text row j is the dt-long window of the segment starting at (j·dt) mod n_m (the copy of
      m[0:dt] after n_m lets a window wrap past the period), or a window of zeros once j·dt ≥ r·n_m.
      One index_select over an overlapping strided view of the buffer writes every row; then the
      single row that straddles r·n_m has its tail zeroed (B×dt values).
    - fold: the segment read as dt-long blocks; block b is added to text row (b mod Lt_i) while
      b < r·Lt_i (these blocks hold valid values only), else to a spare row that is cut off.
    Where a sample's text is longer its fold adds nothing, and vice versa.

    The partners depend on the modalities only (raw features, usually without gradient), so the
    text's gradient is a product with them: nothing is scattered in the backward pass.

    Returns: partners (B, Lt·dt, P), zero beyond n_t, and r (B, P) int64 ≥ 1.
    """
    batch, text_len, d_text = text.seq.shape
    device = text.seq.device
    rows_per_sample = text_len + 1  # the text rows and the spare row
    lane = torch.arange(d_text, device=device)[None, :]  # (1, dt) positions inside a row
    row_start = torch.arange(rows_per_sample, device=device)[None, :] * d_text  # (1, Lt+1)
    no_repeat = torch.zeros((), dtype=torch.long, device=device)

    # segment widths: modality, then room for the wrap copy (dt) and a zero window (dt), whole blocks
    flats = [m.seq.reshape(batch, m.seq.shape[1] * m.seq.shape[2]) for m in modalities]
    widths = [-(-(flat.shape[1] + 2 * d_text) // d_text) * d_text for flat in flats]
    offsets = [sum(widths[:p]) for p in range(len(widths))]
    width = sum(widths)
    pieces = []
    for flat, w in zip(flats, widths):
        pieces += [flat, flat.new_zeros(batch, w - flat.shape[1])]
    buffer = torch.cat(pieces, dim=1)  # (B, width): the only copy of the modalities

    starts, straddles, folds, repeats = [], [], [], []
    for m, flat, offset, w in zip(modalities, flats, offsets, widths):
        n_text, n_mod = text.length * d_text, m.length * m.seq.shape[2]
        text_long = n_text >= n_mod
        r = torch.where(text_long, n_text // n_mod.clamp_min(1), n_mod // n_text.clamp_min(1))
        r = torch.where((n_text > 0) & (n_mod > 0), r, 0)  # an empty side: its partner stays 0
        repeats.append(r)
        tile_cut = torch.where(text_long, r, no_repeat) * n_mod  # (B,) the tile is 0 from here on
        n_mod_c = n_mod.clamp_min(1)[:, None]

        # the wrap copy: m[(n_m + k) mod n_m] = m[k mod n_m] for k < dt, written right after n_m
        if flat.shape[1] > 0:
            buffer.scatter_(1, offset + n_mod[:, None] + lane, flat.gather(1, lane % n_mod_c))

        zero_window = offset + flat.shape[1] + d_text
        starts.append(torch.where(row_start < tile_cut[:, None], offset + row_start % n_mod_c, zero_window))
        # the row that straddles the cut keeps its head only (r·n_m need not be a multiple of dt):
        # zero its tail; the head's lanes write their zeros into the spare row, which is cut off
        head = lane < (tile_cut % d_text)[:, None]
        straddle = (tile_cut // d_text)[:, None] * d_text + lane
        straddles.append(torch.where(head, text_len * d_text + lane, straddle))

        # fold: block b of the segment → text row b mod Lt_i while b < r·Lt_i, else the spare row
        block = torch.arange(w // d_text, device=device)[None, :]
        fold_cut = (torch.where(text_long, no_repeat, r) * text.length)[:, None]
        folds.append(torch.where(block < fold_cut, block % text.length.clamp_min(1)[:, None], text_len))

    n_mods = len(modalities)
    sample = torch.arange(batch, device=device)[:, None]
    # rows are ordered (partner p, sample i, row j); buffer blocks are ordered (sample i, segment p, b)
    windows = buffer.view(-1).as_strided((batch * width - d_text + 1, d_text), (1, 1))
    rows = windows.index_select(0, (torch.stack(starts) + sample * width).view(-1))  # (P·B·(Lt+1), dt)
    rows.view(n_mods * batch, rows_per_sample * d_text).scatter_(1, torch.cat(straddles), 0.0)
    target = torch.cat(
        [fold + (p * batch + sample) * rows_per_sample for p, fold in enumerate(folds)], dim=1
    )  # (B, width / dt)
    rows.index_add_(0, target.view(-1), buffer.view(-1, d_text))

    partners = rows.view(n_mods, batch, rows_per_sample * d_text)[:, :, : text_len * d_text]
    return partners.permute(1, 2, 0), torch.stack(repeats, dim=1).clamp_min(1)


def _tile_cosines(text: _Side, modalities: list[_Side]) -> list[torch.Tensor]:
    """The tile cosine of the text with each modality, (B,) each; the text is read once for all."""
    partners, repeats = _tile_partners(text, modalities)
    products = _TextProducts.apply(text.seq, text.mask, partners)
    text_norm = _safe_sqrt(products[:, 0])
    # raw dot / (‖t‖‖m‖) is the dot of the unit vectors; the tiled unit vector has norm √r
    norms = text_norm[:, None] * torch.stack([_masked_norm(m.seq, m.mask) for m in modalities], dim=1)
    cosines = products[:, 1:] / (norms * repeats.to(products.dtype).sqrt())
    return list(cosines.unbind(dim=1))


@full_precision
def tile_cosines(
    fused: torch.Tensor, text_mask: torch.Tensor, modality: torch.Tensor, modality_mask: torch.Tensor
) -> torch.Tensor:
    """Cosine between a sample's fused text and one modality under the "tile" alignment (Eq. 9).

    Each sample's valid part is flattened (fused: Lt_i·dt values, modality: Lm_i·dm values) and
    L2-normalised; the shorter vector (length n) is tiled r = N // n times and zero-padded to the
    longer length N. The cosine of those two vectors is ⟨u, tile(v)⟩ / √r for unit u, v, so it lies
    in [−1, 1]. Computed for the whole batch at once with variable lengths and no host-device
    synchronisation; no tile longer than the text is built, the text is never tiled, and the
    modality's side is assembled from whole rows (see `_tile_partners`).

    Args:
        fused: X_K, (B, Lt, dt); text_mask: (B, Lt) bool, True = valid, padding at the end.
        modality: X0m, (B, Lm, dm); modality_mask: (B, Lm) bool, True = valid, padding at the end.
            Padded values are ignored but must be finite.
    Returns: (B,) cosines; 0 for a sample with no valid text or modality frame.
    """
    dtype = torch.promote_types(_compute_dtype(fused), _compute_dtype(modality))
    return _tile_cosines(_side(fused, text_mask, dtype), [_side(modality, modality_mask, dtype)])[0]


@full_precision
def authors_cosines(
    fused: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """c_a and c_v under the authors' alignment ("authors"; their `matrix_alignment`), padding included.

    Each tensor is flattened whole (fused: Lt·dt values per sample, audio: La·da, vision: Lv·dv, with the
    batch's padding) and L2-normalised; with N the largest of the three flattened sizes, each unit vector
    of size n is repeated N // n times and zero-padded to N; c_m = ⟨text, modality⟩ / (‖text‖ ‖modality‖)
    of those vectors (their norms are √(N // n)).

    Args:
        fused: X_K (B, Lt, dt); audio: X0a (B, La, da); vision: X0v (B, Lv, dv); padded values included.
    Returns: c_a, c_v, (B,) each; 0 for a sample whose text or modality is all zeros.
    """
    dtype = torch.promote_types(_compute_dtype(fused), torch.promote_types(_compute_dtype(audio), _compute_dtype(vision)))
    flats = [x.to(dtype).reshape(x.shape[0], -1) for x in (fused, audio, vision)]
    longest = max(flat.shape[1] for flat in flats)
    aligned = []
    for flat in flats:
        unit = flat / _safe_sqrt(flat.square().sum(dim=1, keepdim=True))
        tiled = unit.repeat(1, longest // max(unit.shape[1], 1))
        aligned.append(torch.nn.functional.pad(tiled, (0, longest - tiled.shape[1])))
    text, audio_aligned, vision_aligned = aligned
    text_norm = _safe_sqrt(text.square().sum(dim=1))
    return tuple(  # type: ignore[return-value]
        torch.linalg.vecdot(text, m) / (text_norm * _safe_sqrt(m.square().sum(dim=1)))
        for m in (audio_aligned, vision_aligned)
    )


@full_precision
def projected_cosines(
    fused: torch.Tensor, text_mask: torch.Tensor, value: torch.Tensor, modality_mask: torch.Tensor
) -> torch.Tensor:
    """Cosine between mean(X_K) and mean(V_m) over valid positions, both in d_t ("projected" alignment).

    Args:
        fused: X_K, (B, Lt, dt); text_mask: (B, Lt) bool.
        value: the modality's value projection V_m = LN(X0m) W_V, (B, Lm, dt); modality_mask: (B, Lm).
    Returns: (B,) cosines; 0 for a sample with no valid text or modality frame.
    """
    mean_text = masked_mean(fused.to(_compute_dtype(fused)), text_mask)
    mean_mod = masked_mean(value.to(_compute_dtype(value)), modality_mask).to(mean_text.dtype)
    norm_text = _safe_sqrt(mean_text.square().sum(dim=1))
    norm_mod = _safe_sqrt(mean_mod.square().sum(dim=1))
    return torch.linalg.vecdot(mean_text, mean_mod) / (norm_text * norm_mod)


def paper_form(c_a: torch.Tensor, c_v: torch.Tensor, g: float, s: float, eps: float) -> torch.Tensor:
    """"paper": Eq. 11–12 on the angles; s + f where a cosine is negative. (B,) → (B,)."""
    theta_a = torch.acos(c_a.clamp(-1 + eps, 1 - eps))
    theta_v = torch.acos(c_v.clamp(-1 + eps, 1 - eps))
    y = torch.cos((theta_a + theta_v) / 2) * torch.exp((theta_a - theta_v).abs())  # Eq. 12
    f = s * torch.cos(math.pi * (y + g)).abs()  # Eq. 11
    return torch.where((c_a >= 0) & (c_v >= 0), f, s + f)


def reference_form(c_a: torch.Tensor, c_v: torch.Tensor, g: float, s: float, eps: float) -> torch.Tensor:
    """"reference": the authors' fine-tuning code, on the cosines themselves. (B,) → (B,)."""
    f = s * torch.cos(math.pi * ((c_a + c_v) / 2 + g) * torch.exp(0.5 * (c_a - c_v).abs())).abs()
    return torch.where((c_a >= 0) & (c_v >= 0), f, s * (1 + c_a.abs() + c_v.abs()))


def mean_cosine_form(c_a: torch.Tensor, c_v: torch.Tensor, g: float, s: float, eps: float) -> torch.Tensor:
    """"mean-cosine": the authors' pretraining code, on m = (c_a + c_v)/2. (B,) → (B,)."""
    mean = (c_a + c_v) / 2
    return torch.where(mean >= 0, s * torch.cos(math.pi * (mean + g)).abs(), s * (1 - mean))


def balanced_form(c_a: torch.Tensor, c_v: torch.Tensor, g: float, s: float, eps: float) -> torch.Tensor:
    """"balanced" (kebr's): the squared distance to the balanced zero (c*, c*), c* = 0.5 − g. (B,) → (B,)."""
    target = 0.5 - g  # the paper's balanced zero cos θ = 0.5 − g, here the only zero
    return s * ((c_a - target).square() + (c_v - target).square())


# The forms of f_i (module docstring): name → f(c_a, c_v, g, s, eps), each (B,) → (B,). The config's check,
# the CLI's choices and `mcc_from_cosines` read this table; a new form is one function and one entry.
FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor, float, float, float], torch.Tensor]] = {
    "paper": paper_form,
    "reference": reference_form,
    "mean-cosine": mean_cosine_form,
    "balanced": balanced_form,
}


def mcc_from_cosines(
    c_a: torch.Tensor, c_v: torch.Tensor, g: float, s: float, form: str = "paper", eps: float = 1e-6
) -> torch.Tensor:
    """Per-sample MCC loss f_i from the two cosines (Eq. 11–12, the authors' "reference" and
    "mean-cosine" forms, or kebr's "balanced"; see the module docstring).

    Args:
        c_a, c_v: (B,) cosines of the fused text with audio and vision.
        g: angle penalty; s: scale. form: a key of `FORMS`.
        eps: cosines are clamped to [−1+eps, 1−eps] before arccos so its gradient stays finite.
    Returns: f (B,).
    """
    if form not in FORMS:
        raise KebrError(f"Unknown MCC form {form!r}: use one of {', '.join(FORMS)}.")
    return FORMS[form](c_a, c_v, g, s, eps)


def tile_alignment(fused: Tensor, text_mask: Tensor, audio: Tensor, audio_mask: Tensor, vision: Tensor, vision_mask: Tensor,
                   value_audio: Tensor | None = None, value_vision: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """"tile": each pair's valid parts, the shorter tiled (`tile_cosines`). Returns (c_a, c_v), (B,) each."""
    dtype = torch.promote_types(_compute_dtype(fused), torch.promote_types(_compute_dtype(audio), _compute_dtype(vision)))
    modalities = [_side(audio, audio_mask, dtype), _side(vision, vision_mask, dtype)]
    return _tile_cosines(_side(fused, text_mask, dtype), modalities)


def authors_alignment(fused: Tensor, text_mask: Tensor, audio: Tensor, audio_mask: Tensor, vision: Tensor, vision_mask: Tensor,
                      value_audio: Tensor | None = None, value_vision: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """"authors": the padded tensors tiled towards the longest (`authors_cosines`). Returns (c_a, c_v)."""
    return authors_cosines(fused, audio, vision)


def projected_alignment(fused: Tensor, text_mask: Tensor, audio: Tensor, audio_mask: Tensor, vision: Tensor, vision_mask: Tensor,
                        value_audio: Tensor | None = None, value_vision: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """"projected": masked means of X_K and of V_m (`projected_cosines`). Returns (c_a, c_v)."""
    if value_audio is None or value_vision is None:
        raise ValueError("MCC alignment 'projected' needs value_audio and value_vision")
    return (projected_cosines(fused, text_mask, value_audio, audio_mask),
            projected_cosines(fused, text_mask, value_vision, vision_mask))


# The alignments (module docstring): name → a function of (X_K, text_mask, X0a, audio_mask, X0v, vision_mask,
# V_a, V_v) → (c_a, c_v), (B,) each. The config's check, the CLI's choices and `mcc_loss` read this table.
ALIGNS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "tile": tile_alignment,
    "authors": authors_alignment,
    "projected": projected_alignment,
}


class MCCSettings(Protocol):
    """What `mcc_loss` reads of its settings (`kebr_core.config.MCCConfig` has these fields)."""

    g: float  # the shift g of Eq. 11
    s: float  # the scale s of Eq. 11
    form: str  # one of FORMS
    align: str  # one of ALIGNS


@full_precision
def mcc_loss(
    fused: torch.Tensor,
    text_mask: torch.Tensor,
    audio: torch.Tensor,
    audio_mask: torch.Tensor,
    vision: torch.Tensor,
    vision_mask: torch.Tensor,
    cfg: MCCSettings,
    value_audio: torch.Tensor | None = None,
    value_vision: torch.Tensor | None = None,
) -> MCCOutput:
    """L_mcc (Eq. 10) over the samples that have text, audio and vision (unweighted: λ is the caller's).

    Args:
        fused: X_K (B, Lt, dt); text_mask (B, Lt) bool.
        audio: X0a (B, La, da); audio_mask (B, La). vision: X0v (B, Lv, dv); vision_mask (B, Lv).
        cfg: g, s, form, align (see the module docstring).
        value_audio, value_vision: V_a (B, La, dt), V_v (B, Lv, dt); required by align "projected".
    Returns: MCCOutput. A sample missing a modality has no defined cosine and is left out of the mean.
    """
    if cfg.form not in FORMS:
        raise KebrError(f"Unknown MCC form {cfg.form!r}: use one of {', '.join(FORMS)}.")
    if cfg.align not in ALIGNS:
        raise KebrError(f"Unknown MCC alignment {cfg.align!r}: use one of {', '.join(ALIGNS)}.")
    c_a, c_v = ALIGNS[cfg.align](fused, text_mask, audio, audio_mask, vision, vision_mask, value_audio, value_vision)

    valid = text_mask.any(dim=1) & audio_mask.any(dim=1) & vision_mask.any(dim=1)
    zero = torch.zeros((), dtype=c_a.dtype, device=c_a.device)
    c_a = torch.where(valid, c_a, zero)
    c_v = torch.where(valid, c_v, zero)
    per_sample = torch.where(valid, mcc_from_cosines(c_a, c_v, cfg.g, cfg.s, cfg.form), zero)
    # mean over valid samples as a tensor division: no .item(), no data-dependent indexing
    loss = per_sample.sum() / valid.sum().clamp_min(1).to(per_sample.dtype)
    return MCCOutput(loss, per_sample, c_a, c_v, valid)
