"""The figures of `kebr analyze` (paper Fig. 4, §4.5; docs/design.md §8): each function takes arrays read
from a run (`kebr_core.run_readers`) and returns a `matplotlib.figure.Figure`; which figures a run gets,
their captions and the files are the recipe's (`kebr_core.recipes.analyze`).

- g_sweep: F1 (non0, %) and MAE against the MCC angle penalty g, a point ± std over seeds per g (Fig. 4);
- balance: per-epoch c_a = cos(X_K, X0a), c_v = cos(X_K, X0v) (Eq. 9) and |θ_a − θ_v| (Eq. 12),
  with and without MCC — the modality balance MCC is meant to produce;
- pca: 2-D PCA of the fused test representations in one basis for all panels, coloured by sentiment
  label, with each panel's polarity silhouette;
- training_curves: task loss, MCC loss, validation MAE and the per-modality cosines per epoch (an
  ablation: one line per configuration);
- a search (`kebr tune`): Optuna's optimisation history, parameter importances and one slice plot per
  parameter (`tune_figures`; Optuna draws them through pyplot, and each figure is closed there at once).

Conventions, the same in every figure: each is 8 × 5 in (`FIGSIZE_IN`, saved at `DPI`); titles name the
run, not its path (the path goes into the file's metadata and index.md); curves averaged over seeds
carry a band of ± one sample std (ddof=1) (separate runs, as the g-sweep's, get error bars instead);
epochs are integer ticks; every line has markers, so a one-epoch run shows; an axis spans at least a
fixed minimum (`MIN_SPAN`), so a difference far below the seed noise does not fill the panel; one
palette per concept (`MODALITY_COLORS`, `CONFIGURATION_COLORS`, `g_color`, `RUN_COLORS`, below): a
colour never means two things across figures.

A figure with nothing to draw raises `RunDataMissing` with a one-sentence reason. Figures are built on
`matplotlib.figure.Figure` with the Agg canvas, never through pyplot: no display, no global figure
state, nothing to close. It stays one module, though over 400 lines, because it is one cohesive thing:
the figure functions and the conventions and palette they share.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Literal

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from kebr_core.run_readers import RunDataMissing, TestFeatures

FIGSIZE_IN = (8.0, 5.0)  # the same for every plot so they line up in a report
DPI = 200  # PNG: 1600 × 1000 px, sharp in print; PDF and SVG are vector
MARKER_SIZE = 3.5
# Smallest span of a y axis, per quantity: a tighter auto-scaled axis would make differences far below
# the seed noise look large (e.g. 0.002 MAE across a whole panel).
MIN_SPAN = {"percent": 5.0, "mae": 0.05, "loss": 0.05, "cosine": 0.1, "angle": 0.1}

# One palette per concept, the same in every figure (a colour never means two things):
MODALITY_COLORS = {"text": "tab:olive", "audio": "tab:green", "vision": "tab:purple"}  # c_t, c_a, c_v
CONFIGURATION_COLORS = {"C1": "tab:blue", "C2": "tab:orange", "C3": "tab:cyan", "C4": "tab:red", "C5": "tab:brown"}
OTHER_CONFIGURATION_COLORS = ("tab:pink", "tab:gray", "gold", "navy")  # combinations and variants, in order
G_COLORMAP, G_RANGE = "cividis", (-0.5, 0.5)  # the g-sweep's configurations: one sequential map over g's range
RUN_COLORS = ("darkgoldenrod", "darkslategray", "mediumvioletred")  # the runs of an overlay (`kebr analyze A B`), in order
NEUTRAL = "black"  # a quantity of one run that is none of the above: a loss, F1, MAE, |θa − θv|
REFERENCE = "grey"  # reference lines (MCC's balanced zero, no difference)


def g_color(g: float):
    """The g-sweep's colour of a configuration with angle penalty g (the same g, the same colour)."""
    low, high = G_RANGE
    return matplotlib.colormaps[G_COLORMAP](0.85 * (g - low) / (high - low))  # the map's pale end left out


def configuration_colors(configs: list[tuple[str, str, float | None]]) -> list:
    """The colour of each (name, kind, g) of an ablation: C1–C5 theirs, a g-sweep configuration its g's,
    any other (a combination, an MCC variant) the next of `OTHER_CONFIGURATION_COLORS`."""
    others = iter(OTHER_CONFIGURATION_COLORS * (1 + len(configs)))
    return [CONFIGURATION_COLORS.get(name) or (g_color(g) if kind == "g-sweep" and g is not None else next(others))
            for name, kind, g in configs]


def _new_figure(title: str) -> Figure:
    fig = Figure(figsize=FIGSIZE_IN, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(textwrap.fill(title, 90, break_on_hyphens=False))  # ~90 characters fit across 8 in
    return fig


def _epoch_axis(ax) -> None:
    """Whole epochs only: no 1.5 tick on a short run, and one epoch shows as one tick."""
    low, high = ax.get_xlim()
    if high - low < 1:  # a single epoch (matplotlib's default span around one point is ±5 %)
        centre = round((low + high) / 2)
        ax.set_xlim(centre - 0.5, centre + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _band(ax, x: np.ndarray, mean: np.ndarray, std: np.ndarray | None, color) -> None:
    """Shade mean ± std (the spread over seeds) behind a curve; nothing where std is undefined."""
    if std is None or not np.isfinite(std).any():
        return
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)


def _min_span(ax, span: float, floor: float | None = None) -> None:
    """Widen the y axis about its centre to at least `span` (data units), not below `floor` (e.g. 0
    for a non-negative quantity)."""
    low, high = ax.get_ylim()
    if high - low < span:
        low = (low + high - span) / 2
        if floor is not None:
            low = max(low, floor)
        ax.set_ylim(low, low + span)


@dataclass
class SweepPoint:
    g: float
    f1: float  # percent
    f1_std: float
    mae: float
    mae_std: float
    name: str = ""  # the configuration, when it is not a g-sweep one (C1 is the sweep's point at its g)


def g_sweep_figure(points: list[SweepPoint] | dict[str, list[SweepPoint]], dataset: str) -> Figure:
    """Fig. 4: F1 (non0, %) and MAE against g, one panel each (shared g axis): each configuration a point
    with an error bar of ± its std over seeds (the sweep is a handful of separate runs, not a continuum:
    no band between them). The point of a named configuration (C1) is ringed in its colour. A dict draws
    one series per run (an overlay, `RUN_COLORS`). Each axis at least `MIN_SPAN` wide."""
    series = points if isinstance(points, dict) else {"": points}
    if not any(series.values()):
        raise RunDataMissing("The ablation has no finished g-sweep configuration.")
    fig = _new_figure(f"MCC angle penalty g on {dataset} (mean ± std over seeds)")
    ax_f1, ax_mae = fig.subplots(2, 1, sharex=True)
    gs = np.unique([p.g for pts in series.values() for p in pts])
    step = float(np.diff(gs).min()) if len(gs) > 1 else 0.1
    offsets = np.linspace(-0.06, 0.06, len(series)) * step if len(series) > 1 else [0.0]  # overlaid bars side by side
    colors = RUN_COLORS * len(series) if len(series) > 1 else (NEUTRAL,)  # one ablation: a plain quantity
    for (label, pts), color, shift in zip(series.items(), colors, offsets):
        pts = sorted(pts, key=lambda p: p.g)
        g, f1, f1_std, mae, mae_std = (np.array([getattr(p, k) for p in pts], dtype=np.float64)
                                       for k in ("g", "f1", "f1_std", "mae", "mae_std"))  # (P,) each
        f1_std, mae_std = np.nan_to_num(f1_std), np.nan_to_num(mae_std)  # an undefined std draws no bar
        for ax, y, std, marker, name in ((ax_f1, f1, f1_std, "o", "F1 (non0)"), (ax_mae, mae, mae_std, "s", "MAE")):
            ax.errorbar(g + shift, y, yerr=std, marker=marker, markersize=MARKER_SIZE + 1, capsize=3, color=color,
                        linestyle="none", label=f"{label}: {name}" if label else name)
            for p, x, v in zip(pts, g + shift, y):
                if p.name in CONFIGURATION_COLORS:
                    ax.plot(x, v, marker="o", markersize=MARKER_SIZE + 6, markerfacecolor="none", linestyle="none",
                            markeredgecolor=CONFIGURATION_COLORS[p.name], markeredgewidth=1.5,
                            label=f"{p.name} (its g = {p.g:+.2f})" if not label or label == next(iter(series)) else "_")
    for ax, span in ((ax_f1, MIN_SPAN["percent"]), (ax_mae, MIN_SPAN["mae"])):  # F1 and MAE are ≥ 0
        _min_span(ax, span, floor=0.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    ax_f1.set(title="F1 (non-zero labels) vs g", ylabel="F1 (%)")
    ax_mae.set(title="MAE vs g", xlabel="g (angle penalty, unitless; MCC's balanced zero at c_a = c_v = 0.5 − g)",
               ylabel="MAE (sentiment units)")
    return fig


@dataclass
class BalanceSeries:
    """One run's per-epoch balance columns in one stage."""

    label: str  # e.g. "C1 (with MCC)"; "" for a single run
    stage: Literal["fine-tuning", "pretraining"]
    curves: dict[str, np.ndarray]  # epoch, cos_a, cos_v, abs_dtheta (E,) each; their "_std" over seeds if any
    with_mcc: bool | None  # with/without MCC (C1's and C4's colours unless `color`); None for a single run
    mcc_zero: float | None = None  # MCC's balanced zero c_a = c_v = 0.5 − g (one of its zeros), a reference line
    color: str | None = None  # the series' colour when compared (its configuration's, or its run's in an overlay)

    @property
    def compared_color(self) -> str | None:
        if self.color is not None:
            return self.color
        return None if self.with_mcc is None else CONFIGURATION_COLORS["C1" if self.with_mcc else "C4"]


def balance_figure(series: list[BalanceSeries], title: str) -> Figure:
    """Columns: one per stage present; top row c_a and c_v (Eq. 9), bottom row |θ_a − θ_v| (Eq. 12).
    One run: c_a and c_v in their modality colours. Several (a configuration pair, an overlay): colour =
    the configuration or run, line style = the quantity (c_a solid, c_v dashed), one legend below.
    MCC's balanced zero is a dotted line when it lies in the curves' range, else an arrow at the panel's
    edge; the legend names it only when it is drawn."""
    stages = [s for s in ("fine-tuning", "pretraining") if any(b.stage == s for b in series)]
    if not stages:
        raise RunDataMissing("There are no per-epoch balance curves to plot.")
    compared = any(b.compared_color is not None for b in series)
    fig = _new_figure(title)
    grid = fig.subplots(2, len(stages), sharex="col", squeeze=False)
    zero_drawn = False
    for col, stage in enumerate(stages):
        ax_cos, ax_dtheta = grid[0, col], grid[1, col]
        zeros = set()
        for b in (b for b in series if b.stage == stage):
            color = b.compared_color
            prefix = f"{b.label}: " if b.label else ""
            e, c = b.curves["epoch"], b.curves
            for ax, name, default, style, label in (
                (ax_cos, "cos_a", MODALITY_COLORS["audio"], "-", f"{prefix}c_a (audio)"),
                (ax_cos, "cos_v", MODALITY_COLORS["vision"], "--", f"{prefix}c_v (vision)"),
                (ax_dtheta, "abs_dtheta", NEUTRAL, "-", f"{b.label or '|θa − θv|'}"),
            ):
                ax.plot(e, c[name], color=color or default, linestyle=style, marker="o" if style == "-" else "s",
                        markersize=MARKER_SIZE, label=label)
                _band(ax, e, c[name], c.get(f"{name}_std"), color or default)
            if b.mcc_zero is not None:
                zeros.add(round(b.mcc_zero, 6))
        _min_span(ax_cos, MIN_SPAN["cosine"])
        zero_drawn |= _reference_lines(ax_cos, sorted(zeros))
        ax_cos.set(title=f"{stage}: c_a, c_v (Eq. 9)", ylabel="cosine to X_K (unitless)")
        ax_dtheta.set(title=f"{stage}: angle gap (Eq. 12)", xlabel="epoch", ylabel="|θa − θv| (rad)")
        _min_span(ax_dtheta, MIN_SPAN["angle"], floor=0.0)
        for ax in (ax_cos, ax_dtheta):
            _epoch_axis(ax)
            ax.grid(alpha=0.3)
            if not compared:
                ax.legend(loc="best", fontsize="x-small")
    if compared:
        # One legend for the whole figure: colour = configuration, line style = quantity. Proxy
        # artists, so every panel keeps its plot area and the drawn lines keep their own labels.
        proxies = [Line2D([], [], color=b.compared_color, label=b.label) for b in {b.label: b for b in series}.values()]
        proxies += [Line2D([], [], color="black", linestyle="-", label="c_a (audio)"),
                    Line2D([], [], color="black", linestyle="--", label="c_v (vision)")]
        if zero_drawn:
            proxies.append(Line2D([], [], color=REFERENCE, linestyle=":", label="MCC balanced zero: c_a = c_v = 0.5 − g"))
        fig.legend(handles=proxies, loc="outside lower center", ncol=min(len(proxies), 3), fontsize="small")
    return fig


def _reference_lines(ax, references: list[float]) -> bool:
    """MCC's balanced zeros on a cosine panel: a dotted line (in the legend) where it lies inside the
    curves' y range; one far outside would flatten the curves, so it is named by an arrow at the panel's
    edge instead (not in the legend). Returns whether a line was drawn."""
    low, high = ax.get_ylim()
    drawn = False
    for z in references:
        if low <= z <= high:
            ax.axhline(z, color=REFERENCE, linestyle=":", linewidth=1, label=f"MCC balanced zero (c_a = c_v = {z:.2f})")
            drawn = True
        else:
            above = z > high
            ax.annotate(f"{'↑' if above else '↓'} MCC balanced zero at c_a = c_v = {z:.2f}", xy=(0.99, 0.97 if above else 0.03),
                        xycoords="axes fraction", ha="right", va="top" if above else "bottom", fontsize="x-small",
                        color="dimgrey")
    ax.set_ylim(low, high)
    return drawn


def polarity_silhouette(features: np.ndarray, labels: np.ndarray) -> float:
    """How well the fused representations (N, D) separate negative from positive sentiment: the mean
    silhouette (Euclidean, in [−1, 1]; 1 = tight, far-apart groups, 0 = overlapping) of the two polarity
    groups, label < 0 and label > 0 (neutral and unlabeled samples left out). NaN without two samples
    in each group."""
    from sklearn.metrics import silhouette_score

    polarity = np.sign(labels)
    keep = np.isfinite(labels) & (polarity != 0)
    if min((polarity[keep] < 0).sum(), (polarity[keep] > 0).sum()) < 2:
        return float("nan")
    return float(silhouette_score(features[keep].astype(np.float64), polarity[keep]))


def pca_figure(panels: list[tuple[str, TestFeatures]], title: str) -> Figure:
    """One 2-D PCA scatter per (panel title, test features), all in one basis fitted once on the union
    of the panels' features (so positions compare across panels), coloured by label on one shared
    symmetric diverging scale. Each panel's title gives its polarity silhouette (`polarity_silhouette`,
    on the full fused features). RunDataMissing when the panels' widths differ (no common basis)."""
    from sklearn.decomposition import PCA  # scikit-learn is slow to import; only this plot needs it

    widths = sorted({tf.features.shape[1] for _, tf in panels})
    if len(widths) > 1:
        raise RunDataMissing(f"The fused representations have different widths ({', '.join(map(str, widths))}), "
                             "so they share no PCA basis.")
    fig = _new_figure(title)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False, sharex=True, sharey=True)[0])
    bound = max(float(np.nanmax(np.abs(tf.labels))) if np.isfinite(tf.labels).any() else 0.0 for _, tf in panels)
    norm = Normalize(vmin=-(bound or 1.0), vmax=bound or 1.0)
    pca = PCA(n_components=2, svd_solver="full", random_state=0)
    pca.fit(np.concatenate([tf.features for _, tf in panels]).astype(np.float64))  # (ΣN, D): one basis
    var = 100.0 * pca.explained_variance_ratio_
    scatter = None
    for n, (ax, (panel_title, tf)) in enumerate(zip(axes, panels)):
        xy = pca.transform(tf.features.astype(np.float64))  # (N, 2)
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=tf.labels, cmap="coolwarm_r", norm=norm, s=10, alpha=0.8,
                             edgecolors="none")
        silhouette = polarity_silhouette(tf.features, tf.labels)
        measure = "n/a" if np.isnan(silhouette) else f"{silhouette:+.2f}"
        ax.set(title=f"{panel_title} (seed {tf.seed}, N = {len(tf.labels)})\nsilhouette neg/pos = {measure}",
               xlabel=f"PC1 ({var[0]:.1f}% of variance)", ylabel="" if n else f"PC2 ({var[1]:.1f}% of variance)")
        ax.grid(alpha=0.3)
    fig.colorbar(scatter, ax=list(axes), label="sentiment label")
    return fig


def _curve(ax, e: np.ndarray, curves: dict[str, np.ndarray], name: str, color, label: str, style: str = "-") -> None:
    """A per-epoch curve with markers (a one-epoch run still shows) and its band over seeds, if any."""
    ax.plot(e, curves[name], color=color, linestyle=style, marker="o" if style == "-" else "s", markersize=MARKER_SIZE,
            label=label)
    _band(ax, e, curves[name], curves.get(f"{name}_std"), color)


def training_curves_figure(curves: dict[str, np.ndarray], stage: Literal["finetune", "pretrain"], title: str) -> Figure:
    """Three panels per epoch: task L1 (and validation MAE when fine-tuning), the MCC loss (Eq. 10),
    and the per-modality cosines c_a, c_v (Eq. 9); a band of ± one std where seeds were averaged."""
    p = "train_" if stage == "finetune" else ""
    e = curves["epoch"]
    fig = _new_figure(title)
    ax_task, ax_mcc, ax_cos = fig.subplots(1, 3, sharex=True)
    unit = "sentiment units" if stage == "finetune" else "lexicon-score units"
    _curve(ax_task, e, curves, f"{p}task_l1", NEUTRAL, "train task L1")
    if stage == "finetune":
        _curve(ax_task, e, curves, "valid_mae", NEUTRAL, "valid MAE", style="--")
    ax_task.set(title="task loss", xlabel="epoch", ylabel=f"L1 / MAE ({unit})")
    _curve(ax_mcc, e, curves, f"{p}mcc", NEUTRAL, "MCC loss (Eq. 10)")
    ax_mcc.set(title="MCC loss", xlabel="epoch", ylabel="L_mcc (unitless)")
    _curve(ax_cos, e, curves, f"{p}cos_a", MODALITY_COLORS["audio"], "c_a (audio)")
    _curve(ax_cos, e, curves, f"{p}cos_v", MODALITY_COLORS["vision"], "c_v (vision)", style="--")
    ax_cos.set(title="c_a, c_v (Eq. 9)", xlabel="epoch", ylabel="cosine to X_K (unitless)")
    for ax, span, floor in ((ax_task, MIN_SPAN["loss"], 0.0), (ax_mcc, MIN_SPAN["loss"], 0.0),
                            (ax_cos, MIN_SPAN["cosine"], None)):
        _min_span(ax, span, floor)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    return fig


CURVE_PANELS = {  # the panels of `configurations_curves_figure` per stage: column, title, y label, minimum span
    "finetune": (("train_task_l1", "train task L1", "L1 (sentiment units)", MIN_SPAN["loss"]),
                 ("valid_mae", "validation MAE", "MAE (sentiment units)", MIN_SPAN["mae"]),
                 ("train_mcc", "MCC loss (Eq. 10)", "L_mcc (unitless)", MIN_SPAN["loss"]),
                 ("train_abs_dtheta", "angle gap (Eq. 12)", "|θa − θv| (rad)", MIN_SPAN["angle"])),
    "pretrain": (("task_l1", "masked-word L1", "L1 (lexicon-score units)", MIN_SPAN["loss"]),
                 ("mcc", "MCC loss (Eq. 10)", "L_mcc (unitless)", MIN_SPAN["loss"]),
                 ("cos_a", "c_a (Eq. 9)", "cosine to X_K (unitless)", MIN_SPAN["cosine"]),
                 ("abs_dtheta", "angle gap (Eq. 12)", "|θa − θv| (rad)", MIN_SPAN["angle"])),
}


def configurations_curves_figure(configs: list[tuple[str, dict[str, np.ndarray]]], title: str, colors: list | None = None,
                                 stage: Literal["finetune", "pretrain"] = "finetune") -> Figure:
    """Several runs' per-epoch curves, one line (and seed band) per run in each of four panels
    (`CURVE_PANELS`; fine-tuning: train task L1, validation MAE, the MCC loss (Eq. 10), |θ_a − θ_v|
    (Eq. 12)): an ablation's configurations (`configuration_colors`) or an overlay's runs (`RUN_COLORS`,
    the default)."""
    if not configs:
        raise RunDataMissing("The ablation has no finished configuration.")
    colors = list(colors) if colors is not None else [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(configs))]
    fig = _new_figure(title)
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (column, panel_title, ylabel, span) in zip(axes.flat, CURVE_PANELS[stage]):
        for (label, curves), color in zip(configs, colors):
            _curve(ax, curves["epoch"], curves, column, color, label)
        ax.set(title=panel_title, ylabel=ylabel)
        _min_span(ax, span, floor=None if column.endswith(("cos_a", "cos_v")) else 0.0)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.legend(handles=axes[0, 0].lines, loc="outside right center", fontsize="x-small")
    return fig


@dataclass
class ForestPanel:
    """One metric of a forest plot: per configuration (top to bottom) the paired difference against the
    reference and its interval, in the units the axis shows (MAE units, or percentage points)."""

    title: str  # the metric, e.g. "MAE"
    xlabel: str  # e.g. "Δ MAE vs C1, lower is better"
    labels: list[str]
    mean: np.ndarray  # (R,)
    low: np.ndarray  # (R,); NaN where there is no interval (one pair)
    high: np.ndarray  # (R,)
    span: float  # the x axis spans at least this (`MIN_SPAN` of the quantity)
    decimals: int  # of the values written beside each row


FOREST_COLORS = {"excludes zero": NEUTRAL, "includes zero": "darkgrey"}  # not a configuration's colour


def forest_figure(panels: list[ForestPanel], title: str) -> Figure:
    """Paired differences against a reference: one panel per metric, one row per configuration, the mean
    difference as a point and its interval as a bar, a dashed line at zero (no difference). A bar that
    excludes zero is coloured, one that includes it grey; the value and interval are written above each
    row. One legend for the figure, below the panels."""
    if not panels or not any(len(p.labels) for p in panels):
        raise RunDataMissing("There is no paired difference to plot (a comparison needs two configurations).")
    fig = _new_figure(title)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    legend: dict[str, object] = {}
    for ax, panel in zip(axes, panels):
        rows = np.arange(len(panel.labels))[::-1]  # the first configuration on top
        finite = np.isfinite(panel.low) & np.isfinite(panel.high)
        excludes = finite & ((panel.low > 0) | (panel.high < 0))
        for kind, chosen in (("excludes zero", excludes), ("includes zero", ~excludes)):
            with_bar, alone = chosen & finite, chosen & ~finite
            if with_bar.any():
                error = np.vstack([panel.mean - panel.low, panel.high - panel.mean])[:, with_bar]  # (2, R')
                legend[f"interval {kind}"] = ax.errorbar(
                    panel.mean[with_bar], rows[with_bar], xerr=error, fmt="o", capsize=4, markersize=MARKER_SIZE + 2,
                    color=FOREST_COLORS[kind], label=f"interval {kind}")
            if alone.any():  # one pair: a point without an interval
                legend["one pair: no interval"] = ax.plot(panel.mean[alone], rows[alone], "D", color=FOREST_COLORS[kind],
                                                          markersize=MARKER_SIZE + 1, label="one pair: no interval")[0]
        legend["no difference"] = ax.axvline(0.0, color=REFERENCE, linewidth=1, linestyle="--", label="no difference")
        ax.set_yticks(rows, panel.labels)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        values = np.concatenate([panel.mean, panel.low[finite], panel.high[finite], [0.0]])
        low, high = float(values.min()), float(values.max())
        if high - low < panel.span:
            low, high = (low + high - panel.span) / 2, (low + high + panel.span) / 2
        pad = (high - low) * 0.08
        ax.set_xlim(low - pad, high + pad)
        x0, x1 = ax.get_xlim()
        for y, m, lo, hi, ok in zip(rows, panel.mean, panel.low, panel.high, finite):
            d = panel.decimals
            text = f"{m:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]" if ok else f"{m:+.{d}f}"
            where = (m - x0) / (x1 - x0)  # near an edge the text runs inwards, not out of the panel
            ha = "left" if where < 0.25 else "right" if where > 0.75 else "center"
            ax.annotate(text, (m, y), xytext=(0, 8), textcoords="offset points", ha=ha, fontsize="small",
                        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1})
        ax.set(title=panel.title, xlabel=panel.xlabel)
        ax.grid(axis="x", alpha=0.3)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=len(legend), fontsize="small")
    return fig


def tune_figures(study, params: list[str]) -> dict[str, Figure]:
    """Optuna's matplotlib figures of a search (`optuna.visualization.matplotlib`): "optimization_history"
    (each trial's validation value and the best so far), "param_importances" (fANOVA; needs two completed
    trials) and "slice_<key>" per searched key (value against the parameter). RunDataMissing without a
    completed trial."""
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    completed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RunDataMissing("no trial of the search has completed yet")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    metric = study.user_attrs.get("kebr_identity", {}).get("metric", "mae")
    plots = {"optimization_history": lambda: ovm.plot_optimization_history(study, target_name=f"validation {metric}")}
    if len(completed) >= 2:
        plots["param_importances"] = lambda: ovm.plot_param_importances(study)
    for key in params:
        plots[f"slice_{key}"] = lambda key=key: ovm.plot_slice(study, params=[key], target_name=f"validation {metric}")
    figures = {}
    for name, draw in plots.items():
        axes = draw()
        fig = np.ravel(axes)[0].figure
        plt.close(fig)  # out of pyplot's registry: the Figure stays usable, like the others here
        fig.set_size_inches(*FIGSIZE_IN)
        fig.suptitle(f"kebr tune: {name.replace('_', ' ')} ({len(completed)} completed trials)")
        figures[name] = fig
    return figures
