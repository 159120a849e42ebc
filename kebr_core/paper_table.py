"""`kebr table RUN…`: the paper's result tables as text for a paper (LaTeX with booktabs, Markdown, CSV).

Inputs (`read_entries`): evaluation runs (results.json, also of a multi-seed pretraining's evaluation),
the cross-run results-table.csv that `kebr eval` and `kebr ablate` fill (MMSA's columns,
`results_files.TABLE_COLUMNS`, either layout), and ablation folders (ablation.json, read by `run_readers.read_ablation`).

Two layouts, as the paper's (the spread over seeds: docs/design.md §7):

- Table 1 (evaluation runs, results tables): a row per model, a column group per dataset (in order of
  first appearance), each Acc-2, F1, Acc-7, Acc-5, MAE, Corr; Acc-2 and F1 cells are has0/non0
  ("negative/non-negative" and "negative/positive"). Acc-5 is MMSA's column; the paper's Table 1 has none.
- Table 4 (ablation folders): a row per finished configuration: No., Pre-t, TCMF, MCC (✓/×), g when the
  configurations with MCC differ in it, Acc-2, F1, Acc-7, MAE, Corr and Avg (the mean relative change
  vs C1, %, `recipes.ablate.relative_change`). Unfinished configurations are named in the caption.

Cells are mean ± std over seeds (accuracies and F1 in %, two decimals; MAE and Corr three,
`metrics.metric_display`); the caption names the seeds and the std convention of each group of rows
(`metrics.seeds_caption`). The best mean of each number of each column (has0 and non0 apart; per dataset)
is bold: the lowest MAE, the highest of the rest, compared as printed, ties all bold, and only when two or
more rows have the number. CSV carries the means and stds in columns and the bold as a `best` column.

It stays one module, though over 400 lines, because it is one cohesive thing: the rows of the paper's
tables, read from the files kebr writes, and the three ways they are printed from one set of cells.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from kebr_core import runs
from kebr_core.errors import KebrError
from kebr_core.io import atomic_output
from kebr_core.metrics import METRIC_NAMES, STD_DDOF, metric_display, seeds_caption
from kebr_core.run_readers import detect_kind, read_ablation, read_json_object
from kebr_core.row_names import dataset_name, model_name
from kebr_core.results_files import read_results_table, row_summary
from kebr_core.strict import decimal_number

FORMATS = ("latex", "markdown", "csv")
TABLE1_COLUMNS = ("Acc-2", "F1", "Acc-7", "Acc-5", "MAE", "Corr")
TABLE4_COLUMNS = ("Acc-2", "F1", "Acc-7", "MAE", "Corr")
LOWER_IS_BETTER = ("mae",)
# The metric keys of each column, in METRIC_NAMES order ("Acc-2" → acc2_has0, acc2_non0).
COLUMN_KEYS = {column: [m for m in METRIC_NAMES if metric_display(m)[0].split(" ")[0] == column] for column in TABLE1_COLUMNS}


@dataclass
class Entry:
    """One row's results on one dataset: metric → (mean, std) as fractions (accuracies in [0, 1])."""

    label: str
    dataset: str
    summary: dict[str, tuple[float, float]]
    seeds: tuple[int, ...]
    pretrain_seeds: tuple[int, ...] = ()
    std: str | None = "sample"  # the convention (`metrics.STD_DDOF`); None: not recorded
    ablation: dict | None = None  # Table 4: {"pretrain", "tcmf", "mcc": bool, "g": float, "avg_change": float | None}
    run: str = ""  # the run folder the row comes from (its name tells rows with one label apart)


@dataclass
class Table:
    layout: str  # "table1" or "table4"
    entries: list[Entry]
    datasets: list[str]
    labels: list[str]
    notes: list[str] = field(default_factory=list)  # more caption sentences

    @property
    def columns(self) -> tuple[str, ...]:
        return TABLE1_COLUMNS if self.layout == "table1" else TABLE4_COLUMNS

    def entry(self, label: str, dataset: str) -> Entry | None:
        return next((e for e in self.entries if e.label == label and e.dataset == dataset), None)


# ───────────────────────── reading ─────────────────────────


def _std_name(ddof) -> str | None:
    return next((name for name, d in STD_DDOF.items() if d == ddof), None)


def _seeds(values) -> tuple[int, ...]:
    return tuple(int(s) for s in values) if isinstance(values, list) else ()


def _summary(mean: dict, std: dict, where: Path) -> dict[str, tuple[float, float]]:
    try:
        return {k: (float(mean[k]), float(std.get(k, math.nan))) for k in METRIC_NAMES if k in mean}
    except (TypeError, ValueError):
        raise KebrError(f"{where} holds a metric that is not a number; rerun the evaluation to rewrite it.") from None


def _dataset_of(run_dir: Path) -> str:
    """The dataset of an evaluation run: its store (the store a multi-seed pretraining's first evaluation used)."""
    seeds = runs.run_pretrain_seeds(run_dir)
    config_path = run_dir / runs.CONFIG if (run_dir / runs.CONFIG).is_file() or not seeds else \
        runs.pretrain_seed_dir(run_dir, seeds[0]) / runs.CONFIG
    store = read_json_object(config_path, "Run config").get("store") if config_path.is_file() else None
    return dataset_name(str(store)) if store else run_dir.name


def _eval_entry(run_dir: Path) -> Entry:
    path = run_dir / runs.RESULTS_JSON
    if not path.is_file():
        raise KebrError(f"Evaluation run {run_dir} has no {runs.RESULTS_JSON} yet: not every seed has finished "
                        "(finish it, or collect its shards with kebr eval --collect).")
    data = read_json_object(path, "Results file")
    if not isinstance(data.get("mean"), dict):
        raise KebrError(f"{path} has no 'mean' of the test metrics; rerun the evaluation to rewrite it.")
    config_path = run_dir / runs.CONFIG
    pretrained = bool(read_json_object(config_path, "Run config").get("checkpoint")) if config_path.is_file() \
        else bool(runs.run_pretrain_seeds(run_dir))  # a multi-seed pretraining's evaluation is pretrained
    return Entry(model_name(pretrained, str(data.get("inputs") or "")), _dataset_of(run_dir),
                 _summary(data["mean"], data.get("std") or {}, path),
                 _seeds(data.get("seeds")), _seeds(data.get("pretrain_seeds")), _std_name(data.get("std_ddof")),
                 run=str(run_dir))


def _ablation_entries(run_dir: Path, prefix: str) -> tuple[list[Entry], list[str]]:
    data, configs = read_ablation(run_dir)
    raw = {str(c.get("name")): c for c in data["configurations"]}
    entries, unfinished = [], []
    for c in configs:
        if not (c.done and c.mean):
            unfinished.append(prefix + c.name)
            continue
        row = raw[c.name]
        ablation = {"pretrain": bool(row.get("pretrain", True)), "tcmf": bool(row.get("tcmf", True)), "mcc": c.mcc,
                    "g": c.g, "avg_change": row.get("avg_change")}
        dataset = dataset_name(str(data["dataset"])) if data.get("dataset") else run_dir.name
        entries.append(Entry(prefix + c.name, dataset, _summary(c.mean, c.std, run_dir / runs.ABLATION_JSON),
                             _seeds(row.get("seeds", data.get("seeds"))), c.pretrain_seeds, _std_name(data.get("std_ddof")),
                             ablation, run=str(c.eval_dir or run_dir / c.name)))
    return entries, unfinished


def _results_table_entries(path: Path) -> list[Entry]:
    entries = []
    for line, row in enumerate(read_results_table(path), start=2):  # line 1 is the header
        summary = row_summary(row, f"{path} line {line}")
        seeds = [decimal_number(s) for s in row["Seeds"].split(",") if s.strip()]
        if any(s is None for s in seeds):
            raise KebrError(f"{path} line {line}: Seeds must be integers separated by commas, not {row['Seeds']!r}.")
        results = Path(row["Run"]) / runs.RESULTS_JSON  # the std convention, where the run is still there
        std = _std_name(read_json_object(results, "Results file").get("std_ddof")) if results.is_file() else None
        entries.append(Entry(row["Model"], dataset_name(row["Dataset"]), summary, tuple(int(s) for s in seeds), (), std,
                             run=row["Run"]))
    return entries


def split_label(text: str | Path) -> tuple[Path, str | None]:
    """An input as given: PATH, or PATH=LABEL (the rows' label) when PATH exists and the whole text does not."""
    text = str(text)
    path, sep, label = text.rpartition("=")
    if sep and label and path and Path(path).exists() and not Path(text).exists():
        return Path(path), label
    return Path(text), None


def read_entries(paths: Sequence[str | Path]) -> Table:
    """The rows of `paths` (module docstring; PATH=LABEL names an input's rows) and their layout. Rows of
    one label on one dataset (e.g. two evaluation runs, both KEBR) are told apart by their run folder's
    name. KebrError in one sentence for a path that is none of the inputs, and for ablation folders mixed
    with evaluation runs."""
    entries, unfinished, kinds = [], [], set()
    inputs = [split_label(p) for p in paths]
    ablations = [p for p, _ in inputs if p.is_dir() and (p / runs.ABLATION_JSON).is_file()]
    for given, label in inputs:
        before = len(entries)
        if given.is_file() or (given.suffix == ".csv" and not given.exists()):
            if not given.exists():
                raise KebrError(f"{given} does not exist.")
            entries += _results_table_entries(given)
            kinds.add("table1")
            continue
        if given.is_dir() and (given / runs.RESULTS_JSON).is_file() and runs.run_pretrain_seeds(given) \
                and not (given / runs.CONFIG).is_file():
            kind = "finetune"  # a multi-seed pretraining's evaluation: pseed-S runs and results.json over them
        else:
            kind = detect_kind(given)
        if kind == "finetune":
            entries.append(_eval_entry(given))
            kinds.add("table1")
        elif kind == "ablation":
            rows, missing = _ablation_entries(given, f"{label or given.name}: " if len(ablations) > 1 else "")
            entries += rows
            unfinished += missing
            kinds.add("table4")
        else:
            what = {"pretrain": "a pretraining run", "tune": "a search (kebr tune)", "comparison": "a comparison"}[kind]
            raise KebrError(f"{given} is {what}, which has no test results to tabulate; give evaluation runs, "
                            "ablation folders or a results-table.csv.")
        if label is not None and "table1" in kinds:
            for e in entries[before:]:
                e.label = label
    if len(kinds) > 1:
        raise KebrError("Ablation folders (Table 4) and evaluation runs or results tables (Table 1) make different "
                        "tables; give one kind per kebr table.")
    if not entries:
        raise KebrError(f"No finished results in {', '.join(map(str, paths))} (unfinished: {', '.join(unfinished)}).")
    unique: dict[tuple, Entry] = {}  # a run given twice (its folder and a results table's row) is one row
    for e in entries:
        unique.setdefault((str(Path(e.run).resolve()) if e.run else id(e), e.dataset), e)
    entries = list(unique.values())
    clashing = [(e.label, e.dataset) for e in entries]
    for e in entries:
        if clashing.count((e.label, e.dataset)) > 1:
            e.label = f"{e.label} ({Path(e.run).name})"
    seen = set()
    for e in entries:
        if (e.label, e.dataset) in seen:
            raise KebrError(f"Two inputs give the row {e.label!r} on {e.dataset}; name them apart with RUN=LABEL.")
        seen.add((e.label, e.dataset))
    table = Table(kinds.pop(), entries, list(dict.fromkeys(e.dataset for e in entries)),
                  list(dict.fromkeys(e.label for e in entries)))
    if unfinished:
        table.notes.append(f"Not finished, left out: {', '.join(unfinished)}.")
    return table


# ───────────────────────── what each cell shows ─────────────────────────


def shown(metric: str, value: float) -> str:
    """A mean or std as printed: accuracies and F1 in %, two decimals; MAE and Corr three."""
    _, percent, decimals = metric_display(metric)
    return "–" if not math.isfinite(value) else f"{value * (100 if percent else 1):.{decimals}f}"


def best_labels(table: Table, dataset: str, metric: str) -> set[str]:
    """The rows whose printed mean of `metric` on `dataset` is the best (module docstring)."""
    values = {e.label: shown(metric, e.summary[metric][0]) for e in table.entries
              if e.dataset == dataset and metric in e.summary and math.isfinite(e.summary[metric][0])}
    if len(values) < 2:
        return set()
    pick = min if metric in LOWER_IS_BETTER else max
    best = pick(values.values(), key=float)
    return {label for label, v in values.items() if v == best}


def caption(table: Table) -> str:
    """What the table shows: the split, the seeds and std convention of each group of rows, the cells and the bold."""
    groups: dict[str, list[str]] = {}  # what the numbers average → the rows that average it
    for e in table.entries:
        text = (seeds_caption(e.seeds, e.std, e.pretrain_seeds) if e.std is not None else
                f"mean ± std (its convention not recorded) over {len(e.seeds)} seeds ({', '.join(map(str, e.seeds))})")
        groups.setdefault(text, []).append(e.label)
    spreads = [text if len(groups) == 1 else f"{', '.join(dict.fromkeys(labels))}: {text}" for text, labels in groups.items()]
    what = ("Ablation on the test split" + (f" of {table.datasets[0]}" if len(table.datasets) == 1 else "")
            if table.layout == "table4" else f"Results on the test split of {', '.join(table.datasets)}")
    sentences = [f"{what}; {'; '.join(spreads)}.",
                 "Acc-2 and F1: has0/non0 (negative/non-negative, negative/positive); accuracies and F1 in %.",
                 "Best in bold (lowest MAE, highest otherwise)."]
    if table.layout == "table4":
        sentences.append("Avg: mean relative change over the metrics vs C1, % (MAE reversed: + is better).")
    return " ".join(sentences + table.notes)


def _components(table: Table) -> list[str]:
    gs = {e.ablation["g"] for e in table.entries if e.ablation and e.ablation["mcc"]}
    return ["Pre-t", "TCMF", "MCC", *(["g"] if len(gs) > 1 else [])]


def _component_cells(entry: Entry, names: list[str], yes: str, no: str) -> list[str]:
    a = entry.ablation or {}
    cells = [yes if a.get(k) else no for k in ("pretrain", "tcmf", "mcc")]
    if "g" in names:
        cells.append(f"{a['g']:+.2f}" if a.get("mcc") and a.get("g") is not None else "–")
    return cells


def _avg_cell(entry: Entry) -> str:
    avg = (entry.ablation or {}).get("avg_change")
    return "–" if avg is None else f"{avg:+.2f}"


# ───────────────────────── rendering ─────────────────────────

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                  "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$",
                  "–": "--", "−": "$-$", "|": r"$|$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_numbers(cell: str) -> str:
    """A cell of numbers with its minus signs typeset as minus, not as hyphens (and "–", no value, as "--")."""
    return cell.replace("-", "$-$").replace("–", "--")


def _metric_cell(table: Table, entry: Entry | None, column: str, bold, pm: str) -> str:
    """A Table cell: each number of the column "mean±std", "/" between has0 and non0; `bold` wraps a best mean."""
    if entry is None:
        return "–"
    parts = []
    for metric in COLUMN_KEYS[column]:
        if metric not in entry.summary:
            parts.append("–")
            continue
        mean, std = entry.summary[metric]
        text = shown(metric, mean)
        if entry.label in best_labels(table, entry.dataset, metric):
            text = bold(text)
        spread = len(entry.seeds) * max(len(entry.pretrain_seeds), 1) > 1 and math.isfinite(std)
        parts.append(text + (pm + shown(metric, std) if spread else ""))
    return "/".join(parts)


def render_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs}, and amssymb for Table 4's \\checkmark)."""
    def bold(text: str) -> str:
        return rf"\textbf{{{text}}}"

    cols, groups = table.columns, table.datasets if table.layout == "table1" else table.datasets[:1]
    lines = [r"% kebr table: needs \usepackage{booktabs}" + (r" and \usepackage{amssymb}" if table.layout == "table4" else ""),
             r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(caption(table))}}}",
             r"\label{tab:" + ("kebr-results" if table.layout == "table1" else "kebr-ablation") + "}"]
    if table.layout == "table1":
        lines.append(r"\begin{tabular}{l" + " ".join(["c" * len(cols)] * len(groups)) + "}")
        lines.append(r"\toprule")
        if len(groups) > 1:
            lines.append(" & " + " & ".join(rf"\multicolumn{{{len(cols)}}}{{c}}{{{latex_escape(d)}}}" for d in groups) + r" \\")
            lines.append(" ".join(rf"\cmidrule(lr){{{2 + n * len(cols)}-{1 + (n + 1) * len(cols)}}}" for n in range(len(groups))))
        lines.append(" & ".join(["Model", *[c for _ in groups for c in cols]]) + r" \\")
        lines.append(r"\midrule")
        for label in table.labels:
            cells = [_latex_numbers(_metric_cell(table, table.entry(label, d), c, bold, r"$\pm$")) for d in groups for c in cols]
            lines.append(" & ".join([latex_escape(label), *cells]) + r" \\")
    else:
        names = _components(table)
        lines.append(r"\begin{tabular}{l" + "c" * len(names) + "c" * len(cols) + "c}")
        lines.append(r"\toprule")
        lines.append(" & ".join(["No.", *names, *cols, "Avg"]) + r" \\")
        lines.append(r"\midrule")
        for e in table.entries:
            cells = [_latex_numbers(_metric_cell(table, e, c, bold, r"$\pm$")) for c in cols]
            lines.append(" & ".join([latex_escape(e.label), *_component_cells(e, names, r"\checkmark", r"$\times$"),
                                     *cells, _latex_numbers(_avg_cell(e))]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_markdown(table: Table) -> str:
    """A GitHub/pandoc pipe table with the caption after it (pandoc's `Table:` line)."""
    def bold(text: str) -> str:
        return f"**{text}**"

    cols = table.columns
    if table.layout == "table1":
        several = len(table.datasets) > 1
        header = ["Model", *[f"{d} {c}" if several else c for d in table.datasets for c in cols]]
        body = [[label, *[_metric_cell(table, table.entry(label, d), c, bold, "±") for d in table.datasets for c in cols]]
                for label in table.labels]
    else:
        names = _components(table)
        header = ["No.", *names, *cols, "Avg"]
        body = [[e.label, *_component_cells(e, names, "✓", "×"), *[_metric_cell(table, e, c, bold, "±") for c in cols],
                 _avg_cell(e)] for e in table.entries]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", r"\|") for cell in row) + " |" for row in body]
    return "\n".join(lines) + f"\n\nTable: {caption(table)}\n"


def render_csv(table: Table) -> str:
    """A row per (row, dataset): the means and stds as printed, the seeds, the std convention, and
    `best`: the metrics whose best mean the row has (the bold of the other formats)."""
    keys = [m for c in table.columns for m in COLUMN_KEYS[c]]
    extra = ["pretrain", "tcmf", "mcc", "g", "avg_change"] if table.layout == "table4" else []
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["model", "dataset", *extra, *[f"{k}_{s}" for k in keys for s in ("mean", "std")], "seeds",
                "pretrain_seeds", "std_ddof", "best"])
    for e in table.entries:
        a = e.ablation or {}
        flags = [a.get("pretrain"), a.get("tcmf"), a.get("mcc"), "" if a.get("g") is None else a["g"],
                 "" if a.get("avg_change") is None else f"{a['avg_change']:.2f}"] if extra else []
        values = [shown(k, e.summary[k][i]) if k in e.summary else "" for k in keys for i in (0, 1)]
        best = [k for k in keys if e.label in best_labels(table, e.dataset, k)]
        w.writerow([e.label, e.dataset, *flags, *values, " ".join(map(str, e.seeds)), " ".join(map(str, e.pretrain_seeds)),
                    "" if e.std is None else STD_DDOF[e.std], " ".join(best)])
    return out.getvalue()


RENDERERS = {"latex": render_latex, "markdown": render_markdown, "csv": render_csv}


def paper_table(paths: Sequence[str | Path], fmt: str, out: str | Path | None = None, force: bool = False) -> str:
    """The table of `paths` in `fmt` (FORMATS); written whole to `out` when given (`io.atomic_output`: an
    existing file only with `force`, never an input). KebrError, with nothing written, for an unknown
    format or input."""
    if fmt not in RENDERERS:
        raise KebrError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}.")
    if not paths:
        raise KebrError("Give one or more evaluation runs, ablation folders or results-table.csv files.")
    text = RENDERERS[fmt](read_entries(paths))
    if out is not None:
        with atomic_output(out, overwrite=force, inputs=[split_label(p)[0] for p in paths]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return text
