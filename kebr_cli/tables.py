"""Result tables shaped like the paper's (Table 1, Table 4) that read the same at 80 and 120 columns."""

from __future__ import annotations

import math
from typing import Optional, Sequence

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table

from kebr_core.metrics import TABLE_HEADERS, format_table_row, metric_display, seeds_caption, table_headers

# One row: the leading cells (name, components), {metric: (mean, std)} or None for a configuration
# without results (its metric cells say `placeholder`), and the trailing cells (e.g. Avg).
Row = tuple[Sequence[str], Optional[dict], Sequence[str], str]


def metric_cells(summary: dict, spread: bool, two_lines: bool) -> dict[str, str]:
    """`format_table_row` cells of a {metric: (mean, std)} summary; with `two_lines` the std goes on a
    second line ("61.17/62.00" over "±1.23/±1.50") so a table fits a narrow terminal."""
    if not (spread and two_lines):
        return format_table_row(summary, spread=spread)
    means = format_table_row({k: v[0] for k, v in summary.items()})
    stds = format_table_row({k: v[1] for k, v in summary.items()})
    return {c: means[c] + "\n" + "/".join("±" + s for s in stds[c].split("/")) for c in means}


def rows_headers(rows: Sequence[Row]) -> dict[str, str]:
    """column → heading of the metric columns the rows' results fill (their dataset's metric set)."""
    summary = next((summary for _, summary, _, _ in rows if summary), None)
    return table_headers(summary) if summary else dict(TABLE_HEADERS)


def table_width(table: Table) -> int:
    """The width a Rich table needs to print without wrapping or cutting a cell."""
    wide = Console(width=10_000)
    return Measurement.get(wide, wide.options, table).maximum


def metrics_table(
    title: str, lead: Sequence[str], metrics: Sequence[str] | None, tail: Sequence[str], rows: Sequence[Row],
    seeds: Sequence[int], width: Optional[int] = None, caption: Optional[str] = None, std: str = "sample",
    pretrain_seeds: Sequence[int] = (),
) -> Table:
    """Leading columns, the metric columns (`metrics`, of the columns the rows' metric set fills,
    `table_headers`; None: all of them) and trailing columns. The title ends
    with the seeds (and `pretrain_seeds` of a nested design) and the std convention (`seeds_caption`:
    sample or population std); with one seed no
    cell prints "±".

    Wider than `width`, the table is rebuilt narrow: no vertical rules, headers over two lines and the
    std on a second line of each cell; still wider, stacked: the leading columns after the name share
    one column (e.g. "✓ ✓ ✗ +0.20" under "pre-train TCMF MCC g"), which wraps with the name. Only those
    two columns ever wrap, so no number is cut at 80 columns."""
    spread = len(seeds) > 1 or len(pretrain_seeds) > 1
    headings = rows_headers(rows)
    metrics = list(headings) if metrics is None else [m for m in metrics if m in headings]

    def build(layout: str) -> Table:
        narrow = layout != "wide"
        table = Table(title=f"{title}, {seeds_caption(seeds, std, pretrain_seeds)}", caption=caption)
        if narrow:  # "pre-train" over "pre-" and "train", "Acc-2 has0/non0" over "Acc-2" and "has0/non0"
            table.box, table.padding = box.SIMPLE_HEAD, (0, 0)
            leading = [h.replace("-", "-\n") for h in lead]
            headers = [*(leading if layout == "narrow" else [leading[0], " ".join(lead[1:])] if len(lead) > 1 else leading),
                       *(headings[m].replace(" ", "\n") for m in metrics), *tail]
        else:
            headers = [*lead, *(headings[m] for m in metrics), *tail]
        wraps = 1 if layout != "stacked" else min(len(lead), 2)  # the name (and the shared components) may wrap
        for n, header in enumerate(headers):
            table.add_column(header, justify="left" if n == 0 else "right", no_wrap=narrow and n >= wraps,
                             overflow="fold" if n < wraps else "ellipsis")
        for lead_cells, summary, tail_cells, placeholder in rows:
            if narrow and lead_cells:  # a combined name breaks after its "+" first
                lead_cells = [lead_cells[0].replace("+", "+\n"), *lead_cells[1:]]
                if layout == "stacked" and len(lead_cells) > 1:
                    lead_cells = [lead_cells[0], " ".join(lead_cells[1:])]
            if summary is None:
                cells = [placeholder, *[""] * (len(metrics) - 1)]
            else:
                by_column = metric_cells(summary, spread, two_lines=narrow)
                cells = [by_column[m] for m in metrics]
            table.add_row(*lead_cells, *cells, *tail_cells)
        return table

    for layout in ("wide", "narrow", "stacked"):
        table = build(layout)
        if width is None or table_width(table) <= width:
            break
    return table


def results_table(title: str, rows: dict[str, dict], seeds: Sequence[int], width: Optional[int] = None,
                  std: str = "sample", pretrain_seeds: Sequence[int] = ()) -> Table:
    """The paper's Table 1: one row per model, {metric: (mean, std)} each."""
    return metrics_table(title, ["model"], None, [],
                         [([name], summary, [], "") for name, summary in rows.items()], seeds, width, std=std,
                         pretrain_seeds=pretrain_seeds)


def ablation_table(rows: list[dict], seeds: Sequence[int], width: Optional[int] = None, std: str = "sample",
                   note: str = "", pretrain_seeds: Sequence[int] = (), delta_caption: str = "") -> Table | Group:
    """Table 4: configuration, its components (a configuration without MCC has no g), the metrics and
    Avg. A configuration without results says "skipped" (its reason is its row's "status"). `note` (e.g.
    what pretraining used) goes into the caption above the meaning of Avg. With rows holding paired
    differences vs C1 ("vs_C1", two or more pretraining seeds): a column "Δ … vs C1 [95 % CI]" for MAE and
    for Acc-2 (non0, in percentage points), and `delta_caption` (what the interval covers) in the caption."""
    mark = {True: "✓", False: "✗"}
    deltas = [("mae", "Δ MAE vs C1\n[95 % CI]"), ("acc2_non0", "Δ Acc-2 vs C1\n[95 % CI], pp")]
    with_delta = any(r.get("vs_C1") for r in rows)
    body: list[Row] = []
    for r in rows:
        components = [r["name"], mark[r["pretrain"]], mark[r["tcmf"]], mark[r["mcc"]], f"{r['g']:+.2f}" if r["mcc"] else "–"]
        summary = {k: (r["mean"][k], r["std"][k]) for k in r["mean"]} if r["mean"] else None
        tail = ["" if r["avg_change"] is None else f"{r['avg_change']:+.2f}"]
        if with_delta:
            tail += [delta_cell((r.get("vs_C1") or {}).get(k), k) for k, _ in deltas]
        body.append((components, summary, tail, "skipped"))
    captions = [note, delta_caption if with_delta else "",
                "Avg: mean relative change over the metrics vs C1, % (MAE reversed: + is better)"]

    def table(delta_columns: bool) -> Table:
        # Table 4's columns: those of Table 1 but the coarser multi-class accuracies (MOSI: Acc-5 left out).
        columns = list(rows_headers(body))
        multiclass = [c for c in columns if c.startswith("Acc-") and c != "Acc-2"]
        lead, metrics = ["config", "pre-train", "TCMF", "MCC", "g"], [c for c in columns if c not in multiclass[1:]]
        tail = ["Avg", *([h for _, h in deltas] if delta_columns else [])]
        kept = [(lead_cells, summary, tail_cells[:len(tail)], placeholder) for lead_cells, summary, tail_cells, placeholder in body]
        shown = [c for c in captions if c and (delta_columns or c != delta_caption)]
        return metrics_table("Ablation on the test split", lead, metrics, tail, kept, seeds, width, std=std,
                             caption="\n".join(shown), pretrain_seeds=pretrain_seeds)

    whole = table(with_delta)
    if not (with_delta and width is not None and table_width(whole) > width):
        return whole
    # Too wide even narrow: the paired differences go into a table of their own below, so no number is cut.
    differences = Table(title="Paired differences vs C1", caption=delta_caption, box=box.SIMPLE_HEAD)
    differences.add_column("config", overflow="fold")
    for _, header in deltas:
        differences.add_column(header, justify="right", no_wrap=True)
    for (lead_cells, _, tail_cells, _) in body:
        differences.add_row(lead_cells[0].replace("+", "+\n"), *tail_cells[1:])
    return Group(table(False), differences)


def delta_cell(diff: Optional[dict], metric: str) -> str:
    """An ablation row's paired difference vs C1 ({"mean", "low", "high"}) as "+0.012" over
    "[−0.010, +0.034]"; "" without one."""
    if not diff:
        return ""
    return difference_cell(metric, diff["mean"], diff["low"], diff["high"], two_lines=True)


def difference_cell(metric: str, mean: float, low: float, high: float, two_lines: bool = False) -> str:
    """A paired difference and its interval as tables print it: "+0.012 [−0.004, +0.028]" (accuracies and
    F1 in percentage points), the interval on a second line with `two_lines`; a difference without an
    interval (one pair) prints alone."""
    _, percent, decimals = metric_display(metric)
    scale = 100.0 if percent else 1.0
    point = f"{mean * scale:+.{decimals}f}"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return point
    gap = "\n" if two_lines else " "
    return f"{point}{gap}[{low * scale:+.{decimals}f}, {high * scale:+.{decimals}f}]"


def comparison_table(comparison, dataset: str = "") -> Table:
    """`kebr compare`: one row per metric, "metric | A | B | Δ (B − A) [CI] | p" for one
    `recipes.compare.Comparison`; the caption says what the interval is over and what differs."""
    a, b = comparison.reference.label, comparison.run.label
    first = next(iter(comparison.differences.values()))
    level = f"{first.confidence * 100:g} %"
    on = f" on {dataset}" if dataset else ""
    table = Table(title=f"{b} vs {a}{on}: {first.n_pretrain} × {first.n_finetune} paired runs (pretraining × "
                        "fine-tuning seeds)", caption_justify="left")
    for n, header in enumerate(("metric", a, b, f"Δ ({b} − {a}) [{level} CI]", "p")):
        table.add_column(header, justify="left" if n == 0 else "right")
    for metric, d in comparison.differences.items():
        label, percent, decimals = metric_display(metric)
        scale = 100.0 if percent else 1.0
        table.add_row(label, f"{comparison.reference_means[metric] * scale:.{decimals}f}",
                      f"{comparison.run_means[metric] * scale:.{decimals}f}", difference_cell(metric, d.mean, d.low, d.high),
                      "–" if math.isnan(d.p_value) else f"{d.p_value:.3g}")
    if math.isnan(first.low):
        lines = [f"{first.method} or p"]
    else:
        units = first.n_pretrain if first.n_pretrain >= 2 else first.n_finetune
        lines = [f"interval: {first.method}; p: exact sign-flip test over the same units (the smallest reachable "
                 f"with {units}: {2 / 2 ** units:.3g})"]
    if first.n_pretrain < 2:
        lines.append("one pretraining seed: the interval leaves out pretraining's variance (kebr ablate --pretrain-seeds)")
    spread = comparison.variance.get("mae", {})
    if math.isfinite(spread.get("share_pretrain", math.nan)):
        lines.append(f"spread of Δ MAE: {spread['share_pretrain']:.0%} between pretraining seeds, "
                     f"{1 - spread['share_pretrain']:.0%} between fine-tuning seeds (variance components)")
    lines.append("accuracies and F1 in %, Δ in points; MAE: lower is better")
    if comparison.differs:
        shown = comparison.differs[:4]
        lines.append("differs: " + "; ".join(shown) + ("; …" if len(comparison.differs) > 4 else ""))
    table.caption = "\n".join(lines)
    return table


def counts_table(title: str, counts: dict[str, str], width: Optional[int] = None) -> Table:
    """A one-row summary (e.g. extract's videos, done, skipped, …, time, speed): the values in one row
    under their names; wider than `width`, stacked, one line per name and value, so no name or number is
    cut at 80 columns."""
    table = Table(title=title)
    for name in counts:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_row(*counts.values())
    if width is None or table_width(table) <= width:
        return table
    stacked = Table(title=title)
    stacked.add_column("")
    stacked.add_column("", justify="right", no_wrap=True)
    stacked.show_header = False
    for name, value in counts.items():
        stacked.add_row(name, value)
    return stacked
