"""Plots of KEBR runs for `kebr analyze` (paper Fig. 4, §4.5; docs/design.md §8).

Three kinds of directory are read (the formats the recipes write):

- pretraining run: config.json ("stage": "pretrain") + metrics.csv
  (epoch, loss, task_l1, mcc, cos_a, cos_v, abs_dtheta, seconds);
- evaluation run: config.json ("stage": "finetune") + results.json + seed-S/metrics.csv
  (epoch, train_loss, train_task_l1, train_mcc, train_cos_a, train_cos_v, train_abs_dtheta, seconds,
  valid_mae, valid_corr, valid_acc2_non0) + seed-S/test_features.npz (features (N, dt), labels (N,),
  predictions (N,));
- ablation: ablation.json, whose configurations point at evaluation (and pretraining) run dirs.

and up to four figures are made, each 8 × 5 in (PNG at 200 dpi, or PDF / SVG), listed with a one-line
caption in index.md beside them:

- g_sweep: F1 (non0, %) and MAE against the MCC angle penalty g, mean ± std over seeds (Fig. 4);
- balance: per-epoch c_a = cos(X_K, X0a), c_v = cos(X_K, X0v) (Eq. 9) and |θ_a − θ_v| (Eq. 12),
  with and without MCC — the modality balance MCC is meant to produce;
- pca: 2-D PCA of the fused test representations, coloured by sentiment label;
- training_curves: task loss, MCC loss, validation MAE and the per-modality cosines per epoch (an
  ablation: one line per configuration).

Conventions, the same in every figure: titles name the run, not its path (the path goes into the
file's metadata and index.md); curves averaged over seeds carry a band of ± one sample std (ddof=1);
epochs are integer ticks; every line has markers, so a one-epoch run shows; an axis spans at least a
fixed minimum (`MIN_SPAN`), so a difference far below the seed noise does not fill the panel.

A plot whose input is missing is skipped with a one-sentence reason, never a traceback. Figures are
built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: no display, no global
figure state, nothing to close.
"""

from __future__ import annotations

import csv
import json
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import Normalize
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from kebr_core import runs
from kebr_core.errors import KebrError

RunKind = Literal["pretrain", "finetune", "ablation"]

FIGSIZE_IN = (8.0, 5.0)  # the same for every plot so they line up in a report
DPI = 200  # PNG: 1600 × 1000 px, sharp in print; PDF and SVG are vector
PLOT_NAMES = ("g_sweep", "balance", "pca", "training_curves")
FORMATS = ("png", "pdf", "svg")
MARKER_SIZE = 3.5
# Smallest span of a y axis, per quantity: a tighter auto-scaled axis would make differences far below
# the seed noise look large (e.g. 0.002 MAE across a whole panel).
MIN_SPAN = {"percent": 5.0, "mae": 0.05, "loss": 0.05, "cosine": 0.1, "angle": 0.1}

PRETRAIN_COLUMNS = runs.PRETRAIN_COLUMNS
EVAL_COLUMNS = runs.EVAL_COLUMNS[:8]  # what the plots read: the loss terms, the balance and the validation MAE
# What `analyze` wrote into its output folder last time, so that a rerun removes the plots it no longer makes.
WRITTEN_MANIFEST = ".kebr-analyze.json"

MCC_COLORS = {True: "tab:blue", False: "tab:red"}  # with / without MCC, in every plot


class PlotSkipped(Exception):
    """A plot cannot be made from what the run directory holds; the message is the reason (one sentence)."""


# ───────────────────────────────────────────── report ─────────────────────────────────────────────


@dataclass
class AxesSummary:
    """What one data panel of a figure shows (for tests and the CLI; colour bars are left out).

    curves: (legend label, number of points) per Line2D or error-bar series, in drawing order.
    points: number of scatter points (PCA panels).
    """

    title: str
    xlabel: str
    ylabel: str
    curves: list[tuple[str, int]]
    points: int


@dataclass
class PlotInfo:
    name: str
    path: Path | None  # the first file written (None until saved)
    size_px: tuple[int, int]  # (width, height) of the PNG
    axes: list[AxesSummary]
    paths: list[Path] = field(default_factory=list)  # one per format
    caption: str = ""  # the one-line caption of index.md


@dataclass
class AnalysisReport:
    """The outcome of `analyze`: the files written, why the others were skipped, what each plot shows."""

    kind: RunKind
    written: list[Path] = field(default_factory=list)  # figure files, every format
    tables: list[Path] = field(default_factory=list)  # CSVs (an ablation's balance.csv)
    skipped: dict[str, str] = field(default_factory=dict)  # plot name → reason
    plots: dict[str, PlotInfo] = field(default_factory=dict)
    index: Path | None = None  # index.md, once a figure is written


def summarize(fig: Figure) -> list[AxesSummary]:
    """Per data axes: every legend-labelled curve with its point count, and the scatter points."""
    summaries = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        curves: list[tuple[str, int]] = []
        in_containers = set()
        for container in ax.containers:
            if isinstance(container, ErrorbarContainer):
                data_line = container.lines[0]
                in_containers.add(id(data_line))
                in_containers.update(id(cap) for cap in container.lines[1])
                curves.append((container.get_label(), len(data_line.get_xdata())))
        for line in ax.lines:
            if id(line) not in in_containers and not line.get_label().startswith("_"):
                curves.append((line.get_label(), len(np.atleast_1d(line.get_xdata()))))
        points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        summaries.append(AxesSummary(ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), curves, points))
    return summaries


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


# ───────────────────────────────────────────── reading ─────────────────────────────────────────────


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object; a damaged file is the user's problem (KebrError) when it defines the run kind."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KebrError(f"{what} {path} cannot be read as JSON ({e}).") from None
    if not isinstance(data, dict):
        raise KebrError(f"{what} {path} must hold a JSON object, not {type(data).__name__}.")
    return data


def read_metrics_csv(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The given columns of a per-epoch metrics.csv as float64 arrays (E,), or PlotSkipped."""
    if not path.is_file():
        raise PlotSkipped(f"{path} does not exist.")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise PlotSkipped(f"{path} lacks the column(s) {', '.join(missing)}.")
        rows = list(reader)
    if not rows:
        raise PlotSkipped(f"{path} holds no epochs yet.")
    try:
        table = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)  # (E, C)
    except (TypeError, ValueError):
        raise PlotSkipped(f"{path} has a missing or non-numeric value in one of {', '.join(columns)}.") from None
    return {c: table[:, j] for j, c in enumerate(columns)}


def mean_over_seeds(tables: list[dict[str, np.ndarray]], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Average per-epoch columns over seeds, aligned on `epoch` (a seed that stopped early just
    contributes fewer epochs). Returns {"epoch": (E,), column: (E,), column + "_std": (E,) ...} over the
    union of epochs; the std is the sample std (ddof=1) over the seeds with a value, NaN for fewer than two."""
    epochs = np.unique(np.concatenate([t["epoch"] for t in tables]))
    out = {"epoch": epochs}
    for column in columns:
        grid = np.full((len(tables), len(epochs)), np.nan)  # (seeds, E)
        for i, t in enumerate(tables):  # one row per seed (a handful), not per sample
            grid[i, np.searchsorted(epochs, t["epoch"])] = t[column]
        # Not np.nanmean: an epoch where no seed has a finite value stays NaN (a gap) without a warning.
        finite = np.isfinite(grid)
        counts = finite.sum(axis=0)
        sums = np.where(finite, grid, 0.0).sum(axis=0)
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        squares = np.where(finite, (grid - mean) ** 2, 0.0).sum(axis=0)
        out[column] = mean
        out[f"{column}_std"] = np.where(counts > 1, np.sqrt(squares / np.maximum(counts - 1, 1)), np.nan)
    return out


def eval_seeds(run_dir: Path) -> list[int]:
    """The seeds of an evaluation run that have a seed-S directory, in the run's order
    (results.json, else config.json, else numeric)."""
    present = set(runs.run_seeds(run_dir))
    order: list[int] = []
    for name in (runs.RESULTS_JSON, runs.CONFIG):
        path = run_dir / name
        if path.is_file():
            try:
                seeds = json.loads(path.read_text()).get("seeds") or []
                order = [int(s) for s in seeds]
            except (OSError, ValueError, TypeError, AttributeError, json.JSONDecodeError):
                order = []
            if order:
                break
    ordered = [s for s in order if s in present]
    return ordered + sorted(s for s in present if s not in ordered)


def readable_tables(paths: list[Path], columns: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    """`read_metrics_csv` of each path that can be read; the others (e.g. a seed that has not started
    yet) are left out, so the rest still make a plot or a table."""
    tables = []
    for path in paths:
        try:
            tables.append(read_metrics_csv(path, columns))
        except PlotSkipped:
            continue
    return tables


def eval_curves(run_dir: Path) -> tuple[dict[str, np.ndarray], int]:
    """Seed-averaged per-epoch columns of an evaluation run, and the number of seeds averaged."""
    seeds = eval_seeds(run_dir)
    if not seeds:
        raise PlotSkipped(f"Evaluation run {run_dir} has no seed-S directories with metrics.")
    tables = readable_tables([runs.seed_dir(run_dir, seed) / runs.METRICS for seed in seeds], EVAL_COLUMNS)
    if not tables:
        raise PlotSkipped(f"No seed of evaluation run {run_dir} has a readable seed-S/metrics.csv.")
    return mean_over_seeds(tables, EVAL_COLUMNS[1:]), len(tables)


def pretrain_curves(run_dir: Path) -> dict[str, np.ndarray]:
    return read_metrics_csv(run_dir / runs.METRICS, PRETRAIN_COLUMNS)


@dataclass
class TestFeatures:
    seed: int
    features: np.ndarray  # (N, dt)
    labels: np.ndarray  # (N,)


def load_test_features(run_dir: Path) -> TestFeatures:
    """The first seed's (in the run's seed order) seed-S/test_features.npz that exists."""
    for seed in eval_seeds(run_dir):
        path = runs.seed_dir(run_dir, seed) / runs.TEST_FEATURES
        if not path.is_file():
            continue
        try:
            with np.load(path) as npz:
                features, labels = np.asarray(npz["features"], np.float64), np.asarray(npz["labels"], np.float64)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise PlotSkipped(f"{path} cannot be read as features/labels arrays ({e}).") from None
        if features.ndim != 2 or labels.shape != (features.shape[0],):
            raise PlotSkipped(f"{path} holds features {features.shape} and labels {labels.shape}; expected (N, dt) and (N,).")
        if features.shape[0] < 2 or features.shape[1] < 2:
            raise PlotSkipped(f"{path} holds {features.shape[0]} samples of {features.shape[1]} dims; a 2-D PCA needs at least 2 of each.")
        if not np.isfinite(features).all():
            raise PlotSkipped(f"{path} holds NaN or infinite features.")
        return TestFeatures(seed, features, labels)
    raise PlotSkipped(f"Evaluation run {run_dir} has no seed-S/test_features.npz.")


def mcc_zero_cosine(run_dir: Path) -> float | None:
    """cos θ = 0.5 − g, MCC's balanced zero (c_a = c_v there; Eq. 11–13), or None when MCC is off or unknown.
    The loss has other zeros off the diagonal (`kebr_core.modules.mcc`), so this is a reference, not the
    only place the loss is 0."""
    try:
        mcc = json.loads((run_dir / runs.CONFIG).read_text()).get("mcc", {})
        if float(mcc.get("weight", 1.0)) == 0.0:
            return None
        return 0.5 - float(mcc["g"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
        return None


# ───────────────────────────────────────────── figures ─────────────────────────────────────────────


@dataclass
class SweepPoint:
    g: float
    f1: float  # percent
    f1_std: float
    mae: float
    mae_std: float


def g_sweep_figure(points: list[SweepPoint], dataset: str) -> Figure:
    """Fig. 4: F1 (non0, %) and MAE against g, mean ± std over seeds (error bars and a band), one panel
    each (shared g axis), each axis at least `MIN_SPAN` wide."""
    if not points:
        raise PlotSkipped("The ablation has no finished g-sweep configuration.")
    points = sorted(points, key=lambda p: p.g)
    g, f1, f1_std, mae, mae_std = (np.array([getattr(p, k) for p in points], dtype=np.float64)
                                   for k in ("g", "f1", "f1_std", "mae", "mae_std"))  # (P,) each
    f1_std, mae_std = np.nan_to_num(f1_std), np.nan_to_num(mae_std)  # an undefined std draws no bar
    fig = _new_figure(f"MCC angle penalty g on {dataset} (mean ± std over seeds)")
    ax_f1, ax_mae = fig.subplots(2, 1, sharex=True)
    for ax, y, std, color, marker, label, span in (
        (ax_f1, f1, f1_std, "tab:blue", "o", "F1 (non0)", MIN_SPAN["percent"]),
        (ax_mae, mae, mae_std, "tab:red", "s", "MAE", MIN_SPAN["mae"]),
    ):  # F1 and MAE are ≥ 0
        ax.errorbar(g, y, yerr=std, marker=marker, markersize=MARKER_SIZE + 1, capsize=3, color=color, label=label)
        _band(ax, g, y, std, color)
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
    with_mcc: bool | None  # colours with/without MCC; None for a single run
    mcc_zero: float | None = None  # MCC's balanced zero c_a = c_v = 0.5 − g (one of its zeros), a reference line


def balance_figure(series: list[BalanceSeries], title: str) -> Figure:
    """Columns: one per stage present; top row c_a and c_v (Eq. 9), bottom row |θ_a − θ_v| (Eq. 12)."""
    stages = [s for s in ("fine-tuning", "pretraining") if any(b.stage == s for b in series)]
    if not stages:
        raise PlotSkipped("There are no per-epoch balance curves to plot.")
    compared = any(b.with_mcc is not None for b in series)
    fig = _new_figure(title)
    grid = fig.subplots(2, len(stages), sharex="col", squeeze=False)
    for col, stage in enumerate(stages):
        ax_cos, ax_dtheta = grid[0, col], grid[1, col]
        zeros = set()
        for b in (b for b in series if b.stage == stage):
            color = MCC_COLORS.get(b.with_mcc) if b.with_mcc is not None else None
            prefix = f"{b.label}: " if b.label else ""
            e, c = b.curves["epoch"], b.curves
            for ax, name, default, style, label in (
                (ax_cos, "cos_a", "tab:green", "-", f"{prefix}c_a (audio)"),
                (ax_cos, "cos_v", "tab:purple", "--", f"{prefix}c_v (vision)"),
                (ax_dtheta, "abs_dtheta", "tab:orange", "-", f"{b.label or '|θa − θv|'}"),
            ):
                ax.plot(e, c[name], color=color or default, linestyle=style, marker="o" if style == "-" else "s",
                        markersize=MARKER_SIZE, label=label)
                _band(ax, e, c[name], c.get(f"{name}_std"), color or default)
            if b.mcc_zero is not None:
                zeros.add(round(b.mcc_zero, 6))
        _min_span(ax_cos, MIN_SPAN["cosine"])
        data_ylim = ax_cos.get_ylim()
        for z in sorted(zeros):
            ax_cos.axhline(z, color="grey", linestyle=":", linewidth=1, label=f"MCC balanced zero (c_a = c_v = {z:.2f})")
        _keep_data_range(ax_cos, data_ylim, sorted(zeros))
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
        proxies = [Line2D([], [], color=MCC_COLORS[b.with_mcc], label=b.label)
                   for b in {b.label: b for b in series}.values()]
        proxies += [Line2D([], [], color="black", linestyle="-", label="c_a (audio)"),
                    Line2D([], [], color="black", linestyle="--", label="c_v (vision)")]
        if any(b.mcc_zero is not None for b in series):
            proxies.append(Line2D([], [], color="grey", linestyle=":", label="MCC balanced zero: c_a = c_v = 0.5 − g"))
        fig.legend(handles=proxies, loc="outside lower center", ncol=min(len(proxies), 3), fontsize="small")
    return fig


def _keep_data_range(ax, ylim: tuple[float, float], references: list[float]) -> None:
    """Keep the curves' y range when a reference line lies far outside it (the line would flatten
    them); name each such line at the panel's edge with an arrow towards it instead."""
    low, high = ylim
    ax.set_ylim(low, high)
    for z in references:
        if not low <= z <= high:
            above = z > high
            ax.annotate(f"{'↑' if above else '↓'} MCC balanced zero at c_a = c_v = {z:.2f}", xy=(0.99, 0.97 if above else 0.03),
                        xycoords="axes fraction", ha="right", va="top" if above else "bottom", fontsize="x-small",
                        color="dimgrey")


def pca_figure(panels: list[tuple[str, TestFeatures]], title: str) -> Figure:
    """One 2-D PCA scatter per (panel title, test features), coloured by label on one shared
    symmetric diverging scale so negative and positive sentiment read the same in every panel."""
    from sklearn.decomposition import PCA  # scikit-learn is slow to import; only this plot needs it

    fig = _new_figure(title)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    bound = max(float(np.nanmax(np.abs(tf.labels))) if np.isfinite(tf.labels).any() else 0.0 for _, tf in panels)
    norm = Normalize(vmin=-(bound or 1.0), vmax=bound or 1.0)
    scatter = None
    for ax, (panel_title, tf) in zip(axes, panels):
        pca = PCA(n_components=2, svd_solver="full", random_state=0)
        xy = pca.fit_transform(tf.features)  # (N, 2)
        var = 100.0 * pca.explained_variance_ratio_
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=tf.labels, cmap="coolwarm_r", norm=norm, s=10, alpha=0.8,
                             edgecolors="none")
        ax.set(title=f"{panel_title} (seed {tf.seed}, N = {len(tf.labels)})",
               xlabel=f"PC1 ({var[0]:.1f}% of variance)", ylabel=f"PC2 ({var[1]:.1f}% of variance)")
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
    _curve(ax_task, e, curves, f"{p}task_l1", "tab:blue", "train task L1")
    if stage == "finetune":
        _curve(ax_task, e, curves, "valid_mae", "tab:red", "valid MAE", style="--")
    ax_task.set(title="task loss", xlabel="epoch", ylabel=f"L1 / MAE ({unit})")
    _curve(ax_mcc, e, curves, f"{p}mcc", "tab:purple", "MCC loss (Eq. 10)")
    ax_mcc.set(title="MCC loss", xlabel="epoch", ylabel="L_mcc (unitless)")
    _curve(ax_cos, e, curves, f"{p}cos_a", "tab:green", "c_a (audio)")
    _curve(ax_cos, e, curves, f"{p}cos_v", "tab:orange", "c_v (vision)", style="--")
    ax_cos.set(title="c_a, c_v (Eq. 9)", xlabel="epoch", ylabel="cosine to X_K (unitless)")
    for ax, span, floor in ((ax_task, MIN_SPAN["loss"], 0.0), (ax_mcc, MIN_SPAN["loss"], 0.0),
                            (ax_cos, MIN_SPAN["cosine"], None)):
        _min_span(ax, span, floor)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="x-small")
    return fig


def configurations_curves_figure(configs: list[tuple[str, dict[str, np.ndarray]]], title: str) -> Figure:
    """An ablation's fine-tuning curves, one line (and seed band) per configuration in each of four
    panels: train task L1, validation MAE, the MCC loss (Eq. 10) and |θ_a − θ_v| (Eq. 12)."""
    if not configs:
        raise PlotSkipped("The ablation has no finished configuration.")
    fig = _new_figure(title)
    axes = fig.subplots(2, 2, sharex=True)
    panels = (("train_task_l1", "train task L1", "L1 (sentiment units)", MIN_SPAN["loss"]),
              ("valid_mae", "validation MAE", "MAE (sentiment units)", MIN_SPAN["mae"]),
              ("train_mcc", "MCC loss (Eq. 10)", "L_mcc (unitless)", MIN_SPAN["loss"]),
              ("train_abs_dtheta", "angle gap (Eq. 12)", "|θa − θv| (rad)", MIN_SPAN["angle"]))  # all ≥ 0
    palette = "tab10" if len(configs) <= 10 else "tab20"
    colors = [matplotlib.colormaps[palette](i % 20) for i in range(len(configs))]
    for ax, (column, panel_title, ylabel, span) in zip(axes.flat, panels):
        for (label, curves), color in zip(configs, colors):
            _curve(ax, curves["epoch"], curves, column, color, label)
        ax.set(title=panel_title, ylabel=ylabel)
        _min_span(ax, span, floor=0.0)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.legend(handles=axes[0, 0].lines, loc="outside right center", fontsize="x-small")
    return fig


def _stage_columns(curves: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The balance columns of one stage, unprefixed, with their "_std" over seeds where there is one."""
    out = {"epoch": curves["epoch"]}
    for c in ("cos_a", "cos_v", "abs_dtheta"):
        out[c] = curves[prefix + c]
        if prefix + c + "_std" in curves:
            out[c + "_std"] = curves[prefix + c + "_std"]
    return out


# ─────────────────────────────────────────── run directories ───────────────────────────────────────────


def detect_kind(run_dir: Path) -> RunKind:
    """ablation.json → ablation; else config.json's "stage" (pretrain / finetune); else KebrError."""
    if not run_dir.exists():
        raise KebrError(f"Run directory {run_dir} does not exist.")
    if not run_dir.is_dir():
        raise KebrError(f"{run_dir} is a file, not a run directory.")
    if (run_dir / runs.ABLATION_JSON).is_file():
        return "ablation"
    if (run_dir / runs.CONFIG).is_file():
        stage = _read_json(run_dir / runs.CONFIG, "Run config").get("stage")
        if stage in ("pretrain", "finetune"):
            return stage
        raise KebrError(f"{run_dir / runs.CONFIG} names stage {stage!r}; expected 'pretrain' or 'finetune'.")
    raise KebrError(
        f"{run_dir} is not a KEBR run directory: it has neither ablation.json nor a config.json from pretrain or eval."
    )


PlotBuilder = Callable[[], Figure]


def _captioned(fig: Figure, caption: str) -> Figure:
    """Attach the figure's one-line caption for index.md (kept as the Figure's artist label)."""
    fig.set_label(caption)
    return fig


def _pretrain_plots(run_dir: Path) -> dict[str, PlotBuilder]:
    def balance() -> Figure:
        curves = _stage_columns(pretrain_curves(run_dir), "")
        fig = balance_figure([BalanceSeries("", "pretraining", curves, None, mcc_zero_cosine(run_dir))],
                             f"Modality balance during pretraining: {run_dir.name}")
        return _captioned(fig, "Per-epoch c_a, c_v (Eq. 9) and |θa − θv| (Eq. 12) of the pretraining run.")

    def training() -> Figure:
        fig = training_curves_figure(pretrain_curves(run_dir), "pretrain", f"Pretraining curves: {run_dir.name}")
        return _captioned(fig, "Per-epoch masked-word L1, MCC loss and cosines c_a, c_v of the pretraining run.")

    return {"balance": balance, "training_curves": training}


def _eval_plots(run_dir: Path) -> dict[str, PlotBuilder]:
    def balance() -> Figure:
        curves, n = eval_curves(run_dir)
        series = BalanceSeries("", "fine-tuning", _stage_columns(curves, "train_"), None, mcc_zero_cosine(run_dir))
        fig = balance_figure([series], f"Modality balance during fine-tuning: {run_dir.name} ({_seeds_text(n)})")
        return _captioned(fig, f"Per-epoch c_a, c_v and |θa − θv| while fine-tuning, {_seeds_text(n)}.")

    def pca() -> Figure:
        features = load_test_features(run_dir)
        fig = pca_figure([(run_dir.name, features)], "PCA of fused test representations")
        return _captioned(fig, f"2-D PCA of the fused test representations of seed {features.seed}, coloured by label.")

    def training() -> Figure:
        curves, n = eval_curves(run_dir)
        fig = training_curves_figure(curves, "finetune", f"Fine-tuning curves: {run_dir.name} ({_seeds_text(n)})")
        return _captioned(fig, f"Per-epoch train L1, validation MAE, MCC loss and cosines, {_seeds_text(n)}.")

    return {"balance": balance, "pca": pca, "training_curves": training}


def _seeds_text(n: int) -> str:
    return "1 seed" if n == 1 else f"mean ± std over {n} seeds"


@dataclass
class AblationConfig:
    """One entry of ablation.json, with its run directories resolved against the ablation dir."""

    name: str
    kind: str
    mcc: bool
    settings: tuple  # everything but mcc that defines the configuration (pairs differ only in mcc)
    done: bool
    mean: dict[str, float]
    std: dict[str, float]
    eval_dir: Path | None
    pretrain_dir: Path | None
    g: float | None

    @property
    def label(self) -> str:
        return f"{self.name} ({'with' if self.mcc else 'without'} MCC)"


def read_ablation(run_dir: Path) -> tuple[dict[str, Any], list[AblationConfig]]:
    path = run_dir / runs.ABLATION_JSON
    data = _read_json(path, "Ablation file")
    raw = data.get("configurations")
    if not isinstance(raw, list):
        raise KebrError(f"{path} has no 'configurations' list.")
    configs = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or "name" not in c:
            raise KebrError(f"{path}: configuration {i} is not an object with a 'name'.")

        def rel(key: str) -> Path | None:
            return run_dir / str(c[key]) if c.get(key) else None  # an absolute path stays absolute

        def metrics(key: str) -> dict[str, Any]:
            return c[key] if isinstance(c.get(key), dict) else {}

        g = _number(c.get("g"))
        configs.append(AblationConfig(
            name=str(c["name"]), kind=str(c.get("kind", "")), mcc=bool(c.get("mcc", True)),
            settings=tuple(c.get(k) for k in ("pretrain", "tcmf", "g", "mcc_form", "mcc_align")),
            done=c.get("status") == "done", mean=metrics("mean"), std=metrics("std"),
            eval_dir=rel("eval_dir"), pretrain_dir=rel("pretrain_dir"), g=None if np.isnan(g) else g,
        ))
    return data, configs


def mcc_pair(configs: list[AblationConfig]) -> tuple[AblationConfig, AblationConfig]:
    """(with MCC, without MCC): C1 and C4 when both finished, else the first finished pair that differs only in mcc."""
    done = [c for c in configs if c.done and c.eval_dir is not None]
    by_name = {c.name: c for c in done}
    if "C1" in by_name and "C4" in by_name and by_name["C1"].mcc and not by_name["C4"].mcc:
        return by_name["C1"], by_name["C4"]
    for a in done:
        for b in done:
            if a.mcc and not b.mcc and a.settings == b.settings:
                return a, b
    raise PlotSkipped("The ablation has no finished pair of configurations that differ only in MCC (e.g. C1 and C4).")


def _number(x: Any, default: float = float("nan")) -> float:
    """A metric value from ablation.json; null or a non-number reads as `default` (a gap, or no error bar)."""
    try:
        return float(x) if x is not None else default
    except (TypeError, ValueError):
        return default


def _ablation_plots(run_dir: Path) -> dict[str, PlotBuilder]:
    data, configs = read_ablation(run_dir)
    dataset = Path(str(data.get("dataset") or run_dir.name)).name  # a store's file name, not its path
    seeds = _seeds_text(len(data.get("seeds") or [])) if data.get("seeds") else "mean ± std over seeds"

    def g_sweep() -> Figure:
        points = [
            SweepPoint(c.g, 100.0 * _number(c.mean.get("f1_non0")), 100.0 * _number(c.std.get("f1_non0"), 0.0),
                       _number(c.mean.get("mae")), _number(c.std.get("mae"), 0.0))
            for c in configs if c.kind == "g-sweep" and c.done and c.g is not None
        ]
        fig = g_sweep_figure(points, dataset)
        return _captioned(fig, f"Test F1 (non0) and MAE against the MCC angle penalty g on {dataset} (Fig. 4), {seeds}.")

    def balance() -> Figure:
        series = []
        pair = mcc_pair(configs)
        for c in pair:
            curves, n = eval_curves(c.eval_dir)
            zero = (0.5 - c.g) if c.mcc and c.g is not None else None
            series.append(BalanceSeries(c.label, "fine-tuning", _stage_columns(curves, "train_"), c.mcc, zero))
            if c.pretrain_dir is not None and (c.pretrain_dir / runs.METRICS).is_file():
                series.append(BalanceSeries(c.label, "pretraining", _stage_columns(pretrain_curves(c.pretrain_dir), ""),
                                            c.mcc, zero))
        fig = balance_figure(series, f"Modality balance with and without MCC on {dataset} (fine-tuning: {seeds})")
        return _captioned(fig, f"c_a, c_v and |θa − θv| per epoch, {pair[0].name} with MCC vs {pair[1].name} without, "
                               f"in pretraining (one run) and fine-tuning ({seeds}).")

    def pca() -> Figure:
        pair = mcc_pair(configs)
        panels = [(c.label, load_test_features(c.eval_dir)) for c in pair]
        fig = pca_figure(panels, f"PCA of fused test representations on {dataset}")
        return _captioned(fig, f"2-D PCA of the fused test representations, {pair[0].name} (with MCC) vs "
                               f"{pair[1].name} (without), coloured by label.")

    def training() -> Figure:
        curves_of, reasons = [], []
        for c in configs:
            if not (c.done and c.eval_dir is not None):
                continue
            try:
                curves_of.append((c.name, eval_curves(c.eval_dir)[0]))
            except PlotSkipped as e:
                reasons.append(str(e))
        if not curves_of and reasons:
            raise PlotSkipped(reasons[0])
        fig = configurations_curves_figure(curves_of, f"Fine-tuning curves of every configuration on {dataset} ({seeds})")
        return _captioned(fig, f"Per-epoch train L1, validation MAE, MCC loss and |θa − θv| of each of the {len(curves_of)} "
                               f"finished configurations ({seeds}).")

    return {"g_sweep": g_sweep, "balance": balance, "pca": pca, "training_curves": training}


BALANCE_COLUMNS = ("config", "mcc", "mcc_align", "stage", "epoch", "seeds", "cos_a", "cos_a_std", "cos_v", "cos_v_std",
                   "abs_dtheta", "abs_dtheta_std")


def balance_table(run_dir: str | Path) -> list[dict[str, Any]]:
    """The modality balance at the end of training of each finished configuration of an ablation.

    One row per configuration and stage (its pretraining run, then its fine-tuning seeds): the last
    epoch's c_a, c_v (Eq. 9) and |θ_a − θ_v| (Eq. 12), mean and sample std (ddof=1, 0 for one run) over
    seeds. Stages whose metrics.csv is missing or unreadable are left out."""
    _, configs = read_ablation(Path(run_dir))
    rows: list[dict[str, Any]] = []
    for c in configs:
        if not c.done or c.eval_dir is None:
            continue
        stages = []
        if c.pretrain_dir is not None:
            stages.append(("pretraining", [c.pretrain_dir / runs.METRICS], PRETRAIN_COLUMNS, ""))
        seeds = [runs.seed_dir(c.eval_dir, s) / runs.METRICS for s in eval_seeds(c.eval_dir)]
        stages.append(("fine-tuning", seeds, EVAL_COLUMNS, "train_"))
        for stage, paths, columns, prefix in stages:
            names = ("epoch", f"{prefix}cos_a", f"{prefix}cos_v", f"{prefix}abs_dtheta")
            last = [{k: table[k][-1] for k in names} for table in readable_tables(paths, columns)]
            if not last:
                continue
            # c.settings ends with mcc_align (read_ablation)
            row: dict[str, Any] = {"config": c.name, "mcc": c.mcc, "mcc_align": c.settings[-1], "stage": stage,
                                   "epoch": int(max(r["epoch"] for r in last)), "seeds": len(last)}
            for name in ("cos_a", "cos_v", "abs_dtheta"):
                values = np.array([r[prefix + name] for r in last])
                row[name] = float(values.mean())
                row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def write_balance_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BALANCE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def build_figures(run_dir: str | Path) -> tuple[RunKind, dict[str, Figure], dict[str, str]]:
    """Detect the directory kind and build every plot that applies, without saving.

    Returns (kind, {plot name: Figure}, {plot name: reason it was skipped}). KebrError when the
    directory is none of the three kinds."""
    run_dir = Path(run_dir)
    kind = detect_kind(run_dir)
    planners = {"pretrain": _pretrain_plots, "finetune": _eval_plots, "ablation": _ablation_plots}
    figures: dict[str, Figure] = {}
    skipped: dict[str, str] = {}
    for name, build in planners[kind](run_dir).items():
        try:
            figures[name] = build()
        except PlotSkipped as e:
            skipped[name] = str(e)
    return kind, figures, skipped


def _metadata(fmt: str, title: str, source: Path) -> dict[str, str]:
    """The file's own record of what it shows and which run it was made from (each format has its keys)."""
    from kebr_core import __version__

    software = f"kebr {__version__} (kebr analyze)"
    if fmt == "pdf":
        return {"Title": title, "Subject": f"source: {source}", "Creator": software}
    return {"Title": title, "Source": str(source), "Description": f"made by {software}"}


def write_index(report: AnalysisReport, run_dir: Path, out_dir: Path) -> Path:
    """index.md: each figure with its one-line caption and files, the plots skipped and why, the tables."""
    kind = {"pretrain": "a pretraining run", "finetune": "an evaluation run", "ablation": "an ablation"}[report.kind]
    lines = [f"# Plots of `{run_dir}`", "", f"Made by `kebr analyze` from {kind}.", ""]
    for name, info in report.plots.items():
        files = ", ".join(f"[{p.suffix[1:]}]({p.name})" for p in info.paths)
        lines.append(f"- **{name}** ({files}): {info.caption}")
    for path in report.tables:
        lines.append(f"- **{path.name}**: c_a, c_v and |θa − θv| at the end of each configuration and stage, "
                     "mean and std over seeds.")
    if report.skipped:
        lines += ["", "Not plotted:", ""] + [f"- {name}: {reason}" for name, reason in report.skipped.items()]
    path = out_dir / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def analyze(run_dir: str | Path, out_dir: str | Path | None = None, formats: tuple[str, ...] = ("png",)) -> AnalysisReport:
    """Write the figures that apply to `run_dir` into `out_dir` (default run_dir/plots), in each of
    `formats` (png, pdf, svg), with index.md listing them; for an ablation also balance.csv
    (`balance_table`: c_a, c_v, |θ_a − θ_v| at the end of each configuration).

    Returns an AnalysisReport (written paths, skipped plots with reasons, per-plot summaries)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / runs.PLOTS
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise KebrError(f"--format must be one or more of {', '.join(FORMATS)}, not {', '.join(unknown) or 'nothing'}.")
    kind, figures, skipped = build_figures(run_dir)
    report = AnalysisReport(kind=kind, skipped=skipped)
    if figures:
        if out_dir.exists() and not out_dir.is_dir():
            raise KebrError(f"Output path {out_dir} is a file, not a directory.")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KebrError(f"Output directory {out_dir} cannot be created ({e.strerror}).") from None
    for name in PLOT_NAMES:
        if name not in figures:
            continue
        fig = figures[name]
        paths = []
        for fmt in dict.fromkeys(formats):
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, dpi=DPI, format=fmt, metadata=_metadata(fmt, fig.get_suptitle().replace("\n", " "), run_dir))
            paths.append(path)
        report.written.extend(paths)
        size = (round(fig.get_figwidth() * DPI), round(fig.get_figheight() * DPI))
        report.plots[name] = PlotInfo(name, paths[0], size, summarize(fig), paths, fig.get_label())
    if kind == "ablation":
        rows = balance_table(run_dir)
        if rows:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_balance_csv(rows, out_dir / "balance.csv")
            report.tables.append(out_dir / "balance.csv")
    if report.plots:
        report.index = write_index(report, run_dir, out_dir)
    remove_stale_outputs(out_dir, report.written + report.tables + ([report.index] if report.index else []))
    return report


def remove_stale_outputs(out_dir: Path, written: list[Path]) -> None:
    """Remove what an earlier `analyze` wrote into `out_dir` and this one did not (a plot the run no
    longer allows would otherwise stay beside the new ones), then record what was written. Files the
    manifest does not list (a user's own) are never touched."""
    manifest = out_dir / WRITTEN_MANIFEST
    try:
        before = set(json.loads(manifest.read_text())) if manifest.is_file() else set()
    except (OSError, ValueError):
        before = set()
    now = {p.name for p in written}
    for name in sorted(before - now):
        if Path(name).name == name:  # a bare file name of this folder, never a path elsewhere
            (out_dir / name).unlink(missing_ok=True)
    if now or before:
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(sorted(now)))
