"""Recipe: `kebr analyze RUN_DIR`: the figures that apply to a run directory, saved with an index.

Which figures each kind of run gets (`detect_kind`; the figures are `kebr_core.analysis`, what they read
`kebr_core.run_readers`):

- pretraining run: balance, training_curves;
- evaluation run: balance, pca, training_curves (seed-averaged);
- search (`kebr tune`): optimization_history, param_importances, slice_<key> per searched key;
- ablation: g_sweep (its g-sweep configurations), differences (the forest plot: every finished
  configuration's paired difference against C1, `recipes.compare.against_reference`), balance and pca (the pair with and without MCC:
  C1 and C4, or another pair that differs only in MCC), training_curves (every finished configuration),
  and balance.csv (`run_readers.balance_table`);
- comparison (a `kebr compare` output folder): differences, from its compare.json;
- several runs of one kind, overlaid (`_overlay_plots`, one colour per run, into --out): evaluation runs:
  balance, pca (one panel per run, one basis), training_curves; pretraining runs: balance,
  training_curves; ablations: g_sweep. Other kinds, or runs of different kinds, are refused in one
  sentence (`check_overlay`).

Each figure is written in every requested format (png, pdf, svg) into the output folder (default
RUN_DIR/plots) with index.md, a one-line caption per figure and the reason each skipped one was skipped.
A plot whose input is missing is skipped with that one-sentence reason, never a traceback.

kebr writes only what it created (README "Trust and safety"): `.kebr-analyze.json` records each file
`analyze` wrote (size, mtime, SHA-256). A file it would write that the record does not match (the
user's own index.md, a symbolic link, a file changed since) is refused, naming it, before anything is
written. A rerun removes what an earlier `analyze` wrote and this one did not (`remove_stale_outputs`):
only files of its own names that still match their record, so a planted record deletes nothing.
It stays one module, though over 400 lines, because it is one cohesive thing: what `analyze` draws for
each kind of run (and overlay) and the record of what it wrote.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from kebr_core import runs
from kebr_core.analysis import (
    DPI,
    MIN_SPAN,
    RUN_COLORS,
    BalanceSeries,
    ForestPanel,
    SweepPoint,
    balance_figure,
    configuration_colors,
    configurations_curves_figure,
    forest_figure,
    g_sweep_figure,
    pca_figure,
    training_curves_figure,
    tune_figures,
)
from kebr_core.errors import KebrError
from kebr_core.io import atomic_write_text, matches_record, open_for_writing, path_record, refuse_foreign, refuse_links
from kebr_core.metric_logger import report_figures, require
from kebr_core.metrics import metric_display
from kebr_core.recipes.compare import against_reference
from kebr_core.run_readers import (
    BALANCE_COLUMNS,
    AblationConfig,
    RunDataMissing,
    RunKind,
    balance_table,
    detect_kind,
    eval_curves,
    load_test_features,
    load_tune_study,
    mcc_pair,
    mcc_zero_cosine,
    pretrain_curves,
    read_ablation,
    read_comparison,
    seed_grids,
)

PLOT_NAMES = ("g_sweep", "differences", "balance", "pca", "training_curves")
FOREST_METRICS = ("mae", "acc2_non0")  # the forest plot's panels: the regression error and the headline accuracy  # the order of the files and of index.md
FORMATS = ("png", "pdf", "svg")
# What `analyze` wrote into its output folder (name → size, mtime, SHA-256): the files it may replace or remove.
WRITTEN_MANIFEST = ".kebr-analyze.json"
INDEX, BALANCE_CSV = "index.md", "balance.csv"
# Every name `analyze` may write: nothing else is ever replaced or removed, whatever a record says.
OUTPUT_NAMES = frozenset({f"{name}.{fmt}" for name in PLOT_NAMES for fmt in FORMATS} | {INDEX, BALANCE_CSV})

PlotBuilder = Callable[[], Figure]  # builds one figure, or raises RunDataMissing with the reason


@dataclass
class PlotInfo:
    name: str
    figure: Figure
    paths: list[Path] = field(default_factory=list)  # one per format
    caption: str = ""  # the one-line caption of index.md


@dataclass
class AnalysisReport:
    """The outcome of `analyze`: the files written, why the others were skipped, each plot's figure."""

    kind: RunKind
    written: list[Path] = field(default_factory=list)  # figure files, every format
    tables: list[Path] = field(default_factory=list)  # CSVs (an ablation's balance.csv)
    skipped: dict[str, str] = field(default_factory=dict)  # plot name → reason
    plots: dict[str, PlotInfo] = field(default_factory=dict)
    index: Path | None = None  # index.md, once a figure is written


# ───────────────────────── which figures a run gets ─────────────────────────


def _captioned(fig: Figure, caption: str) -> Figure:
    """Attach the figure's one-line caption for index.md (kept as the Figure's artist label)."""
    fig.set_label(caption)
    return fig


def _seeds_text(n: int) -> str:
    return "1 seed" if n == 1 else f"mean ± std over {n} seeds"


def _stage_columns(curves: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The balance columns of one stage, unprefixed, with their "_std" over seeds where there is one."""
    out = {"epoch": curves["epoch"]}
    for c in ("cos_a", "cos_v", "abs_dtheta"):
        out[c] = curves[prefix + c]
        if prefix + c + "_std" in curves:
            out[c + "_std"] = curves[prefix + c + "_std"]
    return out


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
        return _captioned(fig, f"2-D PCA of the fused test representations of seed {features.seed}, coloured by label, "
                               "with the silhouette of negative vs positive labels.")

    def training() -> Figure:
        curves, n = eval_curves(run_dir)
        fig = training_curves_figure(curves, "finetune", f"Fine-tuning curves: {run_dir.name} ({_seeds_text(n)})")
        return _captioned(fig, f"Per-epoch train L1, validation MAE, MCC loss and cosines, {_seeds_text(n)}.")

    return {"balance": balance, "pca": pca, "training_curves": training}


def _ablation_plots(run_dir: Path) -> dict[str, PlotBuilder]:
    data, configs = read_ablation(run_dir)
    dataset = Path(str(data.get("dataset") or run_dir.name)).name  # a store's file name, not its path
    seeds = _seeds_text(len(data.get("seeds") or [])) if data.get("seeds") else "mean ± std over seeds"
    pretraining = "one run"
    if len(data.get("pretrain_seeds") or []) > 1:  # the runs of every pretraining seed are averaged together
        seeds = f"{seeds} of each of {len(data['pretrain_seeds'])} pretraining seeds"
        pretraining = f"mean ± std over {len(data['pretrain_seeds'])} pretraining seeds"

    def g_sweep() -> Figure:
        fig = g_sweep_figure(sweep_points(configs), dataset)
        return _captioned(fig, f"Test F1 (non0) and MAE against the MCC angle penalty g on {dataset} (Fig. 4), {seeds}; "
                               "C1 is the sweep's point at its g (ringed).")

    def balance() -> Figure:
        series = []
        pair = mcc_pair(configs)
        for c, color in zip(pair, configuration_colors([(c.name, c.kind, c.g) for c in pair])):
            curves, n = eval_curves(c.eval_dir)
            series.append(BalanceSeries(c.label, "fine-tuning", _stage_columns(curves, "train_"), c.mcc, c.mcc_zero, color))
            if c.pretrain_dir is not None and ((c.pretrain_dir / runs.METRICS).is_file() or len(c.pretrain_seeds) > 1):
                series.append(BalanceSeries(c.label, "pretraining", _stage_columns(pretrain_curves(c.pretrain_dir), ""),
                                            c.mcc, c.mcc_zero, color))
        fig = balance_figure(series, f"Modality balance with and without MCC on {dataset} (fine-tuning: {seeds})")
        return _captioned(fig, f"c_a, c_v and |θa − θv| per epoch, {pair[0].name} with MCC vs {pair[1].name} without, "
                               f"in pretraining ({pretraining}) and fine-tuning ({seeds}).")

    def pca() -> Figure:
        pair = mcc_pair(configs)
        panels = [(c.label, load_test_features(c.eval_dir)) for c in pair]
        fig = pca_figure(panels, f"PCA of fused test representations on {dataset}")
        return _captioned(fig, f"2-D PCA of the fused test representations, {pair[0].name} (with MCC) vs "
                               f"{pair[1].name} (without), in one basis fitted on both, coloured by label; each panel's "
                               "silhouette of negative vs positive labels (on the full features; 1 apart, 0 overlapping).")

    def training() -> Figure:
        curves_of, drawn, reasons = [], [], []
        c1 = next((c for c in configs if c.name == "C1" and c.done and c.g is not None), None)
        for c in configs:
            if not (c.done and c.eval_dir is not None):
                continue
            if c.kind == "g-sweep" and c1 is not None and c.g is not None and round(c.g, 6) == round(c1.g, 6):
                continue  # an older ablation's rerun of C1's configuration: it would hide C1 under the same line
            try:
                curves_of.append((c.name, eval_curves(c.eval_dir)[0]))
                drawn.append((c.name, c.kind, c.g))
            except RunDataMissing as e:
                reasons.append(str(e))
        if not curves_of and reasons:
            raise RunDataMissing(reasons[0])
        fig = configurations_curves_figure(curves_of, f"Fine-tuning curves of every configuration on {dataset} ({seeds})",
                                           configuration_colors(drawn))
        return _captioned(fig, f"Per-epoch train L1, validation MAE, MCC loss and |θa − θv| of each of the {len(curves_of)} "
                               f"finished configurations ({seeds}).")

    def differences() -> Figure:
        comparisons, left_out = against_reference(seed_grids(run_dir))
        if not comparisons:
            raise RunDataMissing(left_out[0] if left_out else "The ablation has one finished configuration; paired "
                                                              "differences need two.")
        reference = comparisons[0].reference.label
        first = next(iter(comparisons[0].differences.values()))
        level = f"{first.confidence * 100:g} %"
        fig = forest_figure(forest_panels([(c.run.label, c.to_dict()["metrics"]) for c in comparisons], reference),
                            f"Paired differences vs {reference} on {dataset}, {level} intervals over "
                            f"{first.n_pretrain} × {first.n_finetune} (pretraining × fine-tuning) seeds")
        caption = (f"Test MAE and Acc-2 (non0) of each configuration minus {reference}'s, per seed pair: mean and "
                   f"{level} interval ({first.method}).")
        if left_out:
            caption += f" Left out, not paired: {'; '.join(left_out)}"
        return _captioned(fig, caption)

    return {"g_sweep": g_sweep, "differences": differences, "balance": balance, "pca": pca, "training_curves": training}


def sweep_points(configs: list[AblationConfig]) -> list[SweepPoint]:
    """Fig. 4's points: each finished g-sweep configuration, and C1 at its own g (the sweep does not run
    C1's configuration again, `recipes.ablate.build_specs`); C1 replaces a sweep point at the same g that an
    older ablation ran."""
    def point(c: AblationConfig, name: str = "") -> SweepPoint:
        return SweepPoint(c.g, 100.0 * c.mean_of("f1_non0"), 100.0 * c.std_of("f1_non0"), c.mean_of("mae"),  # type: ignore[arg-type]
                          c.std_of("mae"), name)

    points = {round(c.g, 6): point(c) for c in configs if c.kind == "g-sweep" and c.done and c.g is not None}
    c1 = next((c for c in configs if c.name == "C1" and c.done and c.mcc and c.g is not None), None)
    if points and c1 is not None:
        points[round(c1.g, 6)] = point(c1, "C1")  # type: ignore[arg-type]
    return list(points.values())


def _comparison_plots(run_dir: Path) -> dict[str, PlotBuilder]:
    def differences() -> Figure:
        reference, rows = read_comparison(run_dir)
        first = next(iter(rows[0][1].values()), {}) if rows else {}
        seeds = f", over {first['n_pretrain']} × {first['n_finetune']} (pretraining × fine-tuning) seeds" if first else ""
        fig = forest_figure(forest_panels(rows, reference), f"Paired differences vs {reference} ({run_dir.name}){seeds}")
        return _captioned(fig, f"Test MAE and Acc-2 (non0) of each compared run minus {reference}'s, per seed pair: "
                               "mean and interval (compare.json says over which seeds).")

    return {"differences": differences}


def _tune_figures(run_dir: Path) -> tuple[dict[str, Figure], dict[str, str]]:
    study, params = load_tune_study(run_dir)
    captions = {"optimization_history": "Each trial's validation value (dots) and the best so far (line); pruned "
                                        "and failed trials are not drawn.",
                "param_importances": "How much of the variation of the validation value each parameter explains "
                                     "(fANOVA over the completed trials)."}
    try:
        figures = tune_figures(study, params)
    except RunDataMissing as e:
        return {}, {"optimization_history": str(e)}
    for name, fig in figures.items():
        _captioned(fig, captions.get(name, f"The validation value of each completed trial against "
                                           f"{name.removeprefix('slice_')}."))
    return figures, {}


KIND_WORDS = {"pretrain": "a pretraining run", "finetune": "an evaluation run", "ablation": "an ablation",
              "comparison": "a kebr compare output", "tune": "a search (kebr tune)"}


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Each overlaid run's name in legends: its folder's name, with its parent's where two names clash."""
    names = [d.name for d in run_dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]


def _overlay_plots(run_dirs: list[Path], kind: RunKind) -> tuple[dict[str, PlotBuilder], dict[str, str]]:
    """The figures where runs of one kind overlay (one colour per run, `RUN_COLORS`), and why the others
    are not drawn: pretraining runs: balance, training_curves; evaluation runs: balance, pca (one panel
    per run, one basis), training_curves; ablations: g_sweep (one series per ablation)."""
    labels = run_labels(run_dirs)
    colors = [RUN_COLORS[i % len(RUN_COLORS)] for i in range(len(run_dirs))]
    names = ", ".join(labels)
    plans: dict[str, PlotBuilder] = {}
    if kind in ("pretrain", "finetune"):
        stage = "pretraining" if kind == "pretrain" else "fine-tuning"

        def curves_of(d: Path) -> dict[str, np.ndarray]:
            return pretrain_curves(d) if kind == "pretrain" else eval_curves(d)[0]

        def balance() -> Figure:
            series = [BalanceSeries(label, stage, _stage_columns(curves_of(d), "" if kind == "pretrain" else "train_"), None,
                                    mcc_zero_cosine(d), color) for d, label, color in zip(run_dirs, labels, colors)]
            return _captioned(balance_figure(series, f"Modality balance during {stage}: {names}"),
                              f"Per-epoch c_a, c_v and |θa − θv| of each run while {stage}, one colour per run.")

        def training() -> Figure:
            fig = configurations_curves_figure([(label, curves_of(d)) for d, label in zip(run_dirs, labels)],
                                               f"{stage.capitalize()} curves: {names}"
                                               + (" (mean ± std over each run's seeds)" if kind == "finetune" else ""), colors,
                                               stage="pretrain" if kind == "pretrain" else "finetune")
            return _captioned(fig, f"Per-epoch curves of each run while {stage}, one colour per run.")

        plans = {"balance": balance, "training_curves": training}
        if kind == "finetune":
            def pca() -> Figure:
                panels = [(label, load_test_features(d)) for d, label in zip(run_dirs, labels)]
                return _captioned(pca_figure(panels, "PCA of fused test representations"),
                                  "2-D PCA of each run's fused test representations in one basis, coloured by label, with "
                                  "each run's silhouette of negative vs positive labels.")

            plans = {"balance": balance, "pca": pca, "training_curves": training}
        return plans, {}

    def g_sweep() -> Figure:
        series = {label: sweep_points(read_ablation(d)[1]) for d, label in zip(run_dirs, labels)}
        return _captioned(g_sweep_figure(series, names), "Test F1 (non0) and MAE against g of each ablation, one colour "
                                                         "per ablation; C1 ringed at its g.")

    why = "not overlaid: each ablation's configurations fill the figure already (run kebr analyze on each)"
    return {"g_sweep": g_sweep}, {"differences": "not overlaid: each ablation's differences are against its own C1 "
                                                 "(kebr compare pairs runs of two ablations)",
                                  "balance": why, "pca": why, "training_curves": why}


def build_figures(run_dir: str | Path | Sequence[str | Path]) -> tuple[RunKind, dict[str, Figure], dict[str, str]]:
    """Detect the directory kind and build every plot that applies, without saving. Several directories
    of one kind (pretraining runs, evaluation runs or ablations) are overlaid (`_overlay_plots`).

    Returns (kind, {plot name: Figure}, {plot name: reason it was skipped}). KebrError when a
    directory is none of the kinds, or directories that cannot be overlaid (of different kinds,
    searches, comparisons, one given twice)."""
    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]
    kinds = [detect_kind(d) for d in run_dirs]
    kind = kinds[0]
    skipped: dict[str, str] = {}
    if len(run_dirs) > 1:
        check_overlay(run_dirs, kinds)
        plans, skipped = _overlay_plots(run_dirs, kind)
    elif kind == "tune":
        return kind, *_tune_figures(run_dirs[0])
    else:
        planners = {"pretrain": _pretrain_plots, "finetune": _eval_plots, "ablation": _ablation_plots,
                    "comparison": _comparison_plots}
        plans = planners[kind](run_dirs[0])
    figures: dict[str, Figure] = {}
    for name, build in plans.items():
        try:
            figures[name] = build()
        except RunDataMissing as e:
            skipped[name] = str(e)
    return kind, figures, dict(sorted(skipped.items(), key=lambda item: PLOT_NAMES.index(item[0])))


def check_overlay(run_dirs: list[Path], kinds: list[RunKind]) -> None:
    """One sentence (KebrError) when `run_dirs` cannot be overlaid: different kinds, a kind without
    overlays (a search, a comparison), or one directory given twice."""
    for d, k in zip(run_dirs[1:], kinds[1:]):
        if k != kinds[0]:
            raise KebrError(f"kebr analyze overlays runs of one kind, but {run_dirs[0]} is {KIND_WORDS[kinds[0]]} and "
                            f"{d} is {KIND_WORDS[k]}.")
    if kinds[0] in ("tune", "comparison"):
        plural = {"tune": "searches (kebr tune)", "comparison": "kebr compare outputs"}[kinds[0]]
        raise KebrError(f"kebr analyze cannot overlay {plural}: give one directory at a time (kebr compare takes "
                        "several runs).")
    resolved = [d.resolve() for d in run_dirs]
    if len(set(resolved)) < len(resolved):
        twice = next(d for d, r in zip(run_dirs, resolved) if resolved.count(r) > 1)
        raise KebrError(f"{twice} is given twice; an overlay needs different runs.")


def forest_panels(rows: Sequence[tuple[str, dict[str, dict[str, Any]]]], reference: str) -> list[ForestPanel]:
    """The panels of `analysis.forest_figure`, one per metric of `FOREST_METRICS` that the rows have:
    rows = [(configuration, {metric: {"mean", "low", "high"}})] (compare.json's "metrics" shape; null
    bounds: no interval). Accuracies go to percentage points."""
    panels = []
    for metric in FOREST_METRICS:
        present = [(label, m[metric]) for label, m in rows if metric in m]
        if not present:
            continue
        name, percent, decimals = metric_display(metric)
        scale = 100.0 if percent else 1.0

        def column(key: str) -> np.ndarray:
            return np.array([np.nan if d.get(key) is None else float(d[key]) * scale for _, d in present])

        better = "lower" if metric == "mae" else "higher"
        panels.append(ForestPanel(
            title=name, xlabel=f"Δ {name}{' (points)' if percent else ''} vs {reference}, {better} is better",
            labels=[label for label, _ in present], mean=column("mean"), low=column("low"), high=column("high"),
            span=MIN_SPAN["percent" if percent else "mae"], decimals=decimals))
    return panels


# ───────────────────────── the files ─────────────────────────


def _metadata(fmt: str, title: str, source: str) -> dict[str, str]:
    """The file's own record of what it shows and which run it was made from (each format has its keys)."""
    from kebr_core import __version__

    software = f"kebr {__version__} (kebr analyze)"
    if fmt == "pdf":
        return {"Title": title, "Subject": f"source: {source}", "Creator": software}
    return {"Title": title, "Source": str(source), "Description": f"made by {software}"}


def write_balance_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open_for_writing(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BALANCE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_index(report: AnalysisReport, run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """index.md: each figure with its one-line caption and files, the plots skipped and why, the tables."""
    kind = KIND_WORDS[report.kind]
    if len(run_dirs) > 1:
        kind = f"{len(run_dirs)} runs, each {kind}, overlaid"
    lines = [f"# Plots of {', '.join(f'`{d}`' for d in run_dirs)}", "", f"Made by `kebr analyze` from {kind}.", ""]
    for name, info in report.plots.items():
        files = ", ".join(f"[{p.suffix[1:]}]({p.name})" for p in info.paths)
        lines.append(f"- **{name}** ({files}): {info.caption}")
    for path in report.tables:
        lines.append(f"- **{path.name}**: c_a, c_v and |θa − θv| at the end of each configuration and stage, "
                     "mean and std over seeds.")
    if report.skipped:
        lines += ["", "Not plotted:", ""] + [f"- {name}: {reason}" for name, reason in report.skipped.items()]
    path = out_dir / INDEX
    with open_for_writing(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


def analyze(run_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
            formats: tuple[str, ...] = ("png",), report_to: Sequence[str] = ()) -> AnalysisReport:
    """Write the figures that apply to `run_dir` into `out_dir` (default run_dir/plots), in each of
    `formats` (png, pdf, svg), with index.md listing them; for an ablation also balance.csv
    (`balance_table`: c_a, c_v, |θ_a − θ_v| at the end of each configuration). Several run directories
    of one kind are overlaid (`build_figures`); their figures need `out_dir`. report_to naming
    tensorboard: the figures also go to out_dir/tensorboard (`metric_logger.report_figures`).

    Returns an AnalysisReport (written paths, skipped plots with reasons, each plot's figure)."""
    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]
    if not run_dirs:
        raise KebrError("Give a run directory to plot.")
    if len(run_dirs) > 1 and out_dir is None:
        raise KebrError("An overlay of several runs belongs to none of them: give --out for its figures.")
    run_dir = run_dirs[0]
    out_dir = Path(out_dir) if out_dir is not None else run_dir / runs.PLOTS
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise KebrError(f"--format must be one or more of {', '.join(FORMATS)}, not {', '.join(unknown) or 'nothing'}.")
    require(report_to)
    kind, figures, skipped = build_figures(run_dirs)
    report = AnalysisReport(kind=kind, skipped=skipped)
    rows = balance_table(run_dir) if kind == "ablation" and len(run_dirs) == 1 else []
    planned = [f"{name}.{fmt}" for name in PLOT_NAMES if name in figures for fmt in dict.fromkeys(formats)]
    planned += ([BALANCE_CSV] if rows else []) + ([INDEX] if figures else [])
    if out_dir.exists() and not out_dir.is_dir():
        raise KebrError(f"Output path {out_dir} is a file, not a directory.")
    record = read_written_record(out_dir)
    refuse_foreign(out_dir, [name for name in planned if os.path.lexists(out_dir / name) and not is_ours(out_dir, name, record)])
    refuse_links(out_dir, [runs.TENSORBOARD] if "tensorboard" in report_to else [])
    if figures:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KebrError(f"Output directory {out_dir} cannot be created ({e.strerror}).") from None
    for name in [*[n for n in PLOT_NAMES if n in figures], *[n for n in figures if n not in PLOT_NAMES]]:
        fig = figures[name]
        paths = []
        for fmt in dict.fromkeys(formats):
            path = out_dir / f"{name}.{fmt}"
            fig.savefig(path, dpi=DPI, format=fmt, metadata=_metadata(fmt, fig.get_suptitle().replace("\n", " "),
                                                                      ", ".join(map(str, run_dirs))))
            paths.append(path)
        report.written.extend(paths)
        report.plots[name] = PlotInfo(name, fig, paths, fig.get_label())
    if rows:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_balance_csv(rows, out_dir / BALANCE_CSV)
        report.tables.append(out_dir / BALANCE_CSV)
    if report.plots:
        report.index = write_index(report, run_dirs, out_dir)
    remove_stale_outputs(out_dir, report.written + report.tables + ([report.index] if report.index else []))
    report_figures(out_dir, {name: plot.figure for name, plot in report.plots.items()}, report_to)
    return report


def read_written_record(out_dir: Path) -> dict[str, Any]:
    """The record of what `analyze` wrote into `out_dir` ({} when there is none or it is not one)."""
    manifest = out_dir / WRITTEN_MANIFEST
    try:
        record = json.loads(manifest.read_text()) if manifest.is_file() and not manifest.is_symlink() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_ours(out_dir: Path, name: str, record: dict[str, Any]) -> bool:
    """Whether `out_dir/name` is a file `analyze` wrote and nobody changed since: one of its names, a plain
    file (not a link), matching its record (`io.path_record`: size, mtime and SHA-256)."""
    return name in OUTPUT_NAMES and (out_dir / name).is_file() and matches_record(out_dir / name, record.get(name))


def remove_stale_outputs(out_dir: Path, written: list[Path]) -> None:
    """Remove what an earlier `analyze` wrote into `out_dir` and this one did not (a plot the run no
    longer allows would otherwise stay beside the new ones), then record what was written. Only files
    that are still as `analyze` recorded writing them go (`is_ours`): a user's own file, or one listed
    in a record someone else planted, stays."""
    record = read_written_record(out_dir)
    now = {p.name: p for p in written}
    for name in sorted(set(record) - set(now)):
        if is_ours(out_dir, name, record):
            (out_dir / name).unlink()
    if now or record:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / WRITTEN_MANIFEST, json.dumps({name: path_record(path) for name, path in sorted(now.items())}))
