"""The CSV result files kebr writes for scripts, and their one unit convention.

Every CSV and every printed table gives accuracies and F1 in percent and MAE and Corr as they are; a
percent column says so in its name (`_pct`), and results.csv, one row per metric, says it in its `unit`
column. The JSON files (results.json, ablation.json, seed-S/test.json) keep `metrics.msa_metrics`'
fractions, as the readers of runs expect (`run_readers`).

- results.csv of an evaluation run (`write_results_csv`): metric, unit, mean, std, std_ddof, a column per
  run (seed_S, or pseed_P_seed_S).
- results-table.csv beside the runs (`update_results_table`): one row per (run, dataset), MMSA's metric
  columns each split into a numeric mean and std (`Non0_acc_2_mean_pct`, `Non0_acc_2_std_pct`, `MAE_mean`,
  …), what the row is (`Model`, its name), the store's streams (`Inputs`: "text only" where it has no
  audio or vision), the seeds and the run. A table of the earlier layout ("(77.7, 1.03)" strings) is read
  and rewritten in this one; any other CSV there is refused, in one sentence. Readers take its rows from
  `read_results_table` and each row's metrics, as fractions, from `row_summary`.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from kebr_core import runs
from kebr_core.errors import KebrError
from kebr_core.io import atomic_write_text, open_for_writing
from kebr_core.metrics import metric_display
from kebr_core.shards import locked
from kebr_core.strict import decimal_number

# MMSA's result columns (its results/<dataset>.csv) → kebr's metric keys.
MMSA_COLUMNS = {
    "Has0_acc_2": "acc2_has0", "Has0_F1_score": "f1_has0", "Non0_acc_2": "acc2_non0", "Non0_F1_score": "f1_non0",
    "Mult_acc_5": "acc5", "Mult_acc_7": "acc7", "MAE": "mae", "Corr": "corr",
}


def is_percent(metric: str) -> bool:
    """Whether files and tables give `metric` in percent (accuracies and F1; `metrics.metric_display`)."""
    return metric_display(metric)[1]


def in_file_unit(metric: str, value: float) -> float:
    """A value of `msa_metrics` (a fraction for accuracies and F1) in the unit of the CSV files."""
    return value * 100.0 if is_percent(metric) else value


def unit_column(name: str, metric: str) -> str:
    """The column name `name` with the unit of `metric`: 'acc2_non0_mean' → 'acc2_non0_mean_pct'."""
    return f"{name}_pct" if is_percent(metric) else name


def write_results_csv(path: Path, summary: Mapping[str, tuple[float, float]], std_ddof: int, run_names: Sequence[str],
                      per_run: Sequence[Mapping[str, float]]) -> None:
    """results.csv: a row per metric: metric, unit ('percent' or ''), mean, std, std_ddof, then its value in
    each run (columns `run_names`, in the order of `per_run`)."""
    with open_for_writing(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "unit", "mean", "std", "std_ddof", *run_names])
        for k, (m, sd) in summary.items():
            w.writerow([k, "percent" if is_percent(k) else "", in_file_unit(k, m), in_file_unit(k, sd), std_ddof,
                        *[in_file_unit(k, r[k]) for r in per_run]])


# ── results-table.csv ──

TABLE_COLUMNS = ("Model", "Dataset", "Inputs",
                 *[unit_column(f"{column}_{what}", key) for column, key in MMSA_COLUMNS.items() for what in ("mean", "std")],
                 "Seeds", "Run")
OLD_TABLE_COLUMNS = ("Model", "Dataset", *MMSA_COLUMNS, "Seeds", "Run")  # the layout before: cells "(mean, std)"
_OLD_CELL = re.compile(r"\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)")


def table_cells(model: str, dataset: str, inputs: str, seeds: Iterable[int], run_dir: Path,
                summary: Mapping[str, tuple[float, float]]) -> dict[str, str]:
    """One row of results-table.csv: metric → (mean, std) of `summary` split into numeric columns, in the
    files' unit, accuracies and F1 with 2 decimals, MAE and Corr with 4 (MMSA's rounding)."""
    cells = {"Model": model, "Dataset": dataset, "Inputs": inputs}
    for column, key in MMSA_COLUMNS.items():
        values = summary.get(key, (float("nan"), float("nan")))
        for what, value in zip(("mean", "std"), values):
            cells[unit_column(f"{column}_{what}", key)] = str(round(in_file_unit(key, value), 2 if is_percent(key) else 4))
    return cells | {"Seeds": ",".join(str(s) for s in seeds), "Run": str(Path(run_dir).resolve())}


def _from_old_row(row: Mapping[str, str], path: Path) -> dict[str, str]:
    """A row of the earlier layout in the current one (its "(mean, std)" cells were already in this unit)."""
    cells = {"Model": row.get("Model", ""), "Dataset": row.get("Dataset", ""), "Inputs": ""}
    for column, key in MMSA_COLUMNS.items():
        found = _OLD_CELL.fullmatch((row.get(column) or "").strip())
        if found is None:
            raise KebrError(f"{path} has a {column} cell that is not '(mean, std)': {row.get(column)!r}; kebr overwrites "
                            "only its own files: choose another --results-table.")
        for what, text in zip(("mean", "std"), found.groups()):
            cells[unit_column(f"{column}_{what}", key)] = text
    return cells | {"Seeds": row.get("Seeds", ""), "Run": row.get("Run", "")}


def read_results_table(path: Path) -> list[dict[str, str]]:
    """The rows of results-table.csv (`TABLE_COLUMNS`), those of the earlier "(mean, std)" layout converted;
    a CSV with another header is refused in one sentence."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = tuple(reader.fieldnames or ())
        if header == TABLE_COLUMNS:
            return [dict(r) for r in reader]
        if header == OLD_TABLE_COLUMNS:
            return [_from_old_row(r, path) for r in reader]
    raise KebrError(f"{path} is not a kebr results table (its header is not the one kebr writes, "
                    "Model,Dataset,Inputs,…,Seeds,Run); kebr overwrites only its own files: choose another --results-table.")


def row_summary(row: Mapping[str, str], where: str) -> dict[str, tuple[float, float]]:
    """metric → (mean, std) of a row of `read_results_table`, as fractions again (as `msa_metrics` and the
    JSON files give them), for readers such as a paper's table; a cell that is no number is refused in one
    sentence naming `where` (e.g. "results-table.csv line 3") and the column."""
    summary = {}
    for column, key in MMSA_COLUMNS.items():
        values = []
        for what in ("mean", "std"):
            name = unit_column(f"{column}_{what}", key)
            value = decimal_number(row.get(name) or "")
            if value is None:
                raise KebrError(f"{where}: {name} must be a number, not {row.get(name)!r}.")
            values.append(value / 100.0 if is_percent(key) else value)
        summary[key] = (values[0], values[1])
    return summary


def updated_table_text(path: Path, rows: Iterable[Mapping[str, str]]) -> str:
    """The text of results-table.csv at `path` with `rows` (`table_cells`, keyed by run directory and
    dataset) added or replacing theirs, the others kept (`update_results_table` writes it under the
    table's lock); a file that is not a kebr results table is refused in one sentence (`read_results_table`)."""
    path = Path(path)
    table: dict[tuple[str, str], Mapping[str, str]] = {}
    if path.is_file():
        table = {(r["Run"], r["Dataset"]): r for r in read_results_table(path)}
    for cells in rows:
        table[(cells["Run"], cells["Dataset"])] = cells
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(table.values())
    return text.getvalue()


@dataclass
class ResultsRow:
    """One configuration's result on one dataset: `summary` maps metric → (mean, std) over `seeds`; `model`
    names the row (`row_names.row_name`), `inputs` the store's streams (`row_names.store_inputs`)."""

    model: str
    dataset: str
    run_dir: Path
    seeds: list[int]
    summary: Mapping[str, tuple[float, float]]
    inputs: str = ""

    def cells(self) -> dict[str, str]:
        """The row's cells (`table_cells`: numeric mean and std columns, percent named)."""
        return table_cells(self.model, self.dataset, self.inputs, self.seeds, self.run_dir, self.summary)


def update_results_table(path: Path, rows: Iterable[ResultsRow]) -> None:
    """Add or replace rows (keyed by run directory and dataset) in the CSV at `path`, keeping the others.
    Jobs finishing at once (shards, other runs beside it) each read, change and replace the table under a
    lock (`runs.RESULTS_TABLE_LOCK` beside it), through their own temporary name (`atomic_write_text`): no row
    is lost and no writer renames another's half-written file."""
    path, cells = Path(path), [row.cells() for row in rows]
    if path.is_file():
        read_results_table(path)  # not ours: refused before anything (the lock file) is created beside it
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent / runs.RESULTS_TABLE_LOCK):
        atomic_write_text(path, updated_table_text(path, cells))
