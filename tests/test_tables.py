"""Result tables (kebr_cli.tables): no g without MCC, no "±" with one seed, has0/non0 in the headers, the
seeds and the std convention in the caption, and nothing cut at 80 or 120 columns."""

from __future__ import annotations

import pytest
from rich.console import Console

from kebr_cli.tables import ablation_table, results_table
from kebr_core.metrics import METRIC_NAMES

MEAN = {"acc2_has0": 0.6117, "acc2_non0": 0.6201, "f1_has0": 0.6012, "f1_non0": 0.6101, "acc7": 0.2231, "acc5": 0.25,
        "mae": 1.2345, "corr": 0.4567}
STD = dict.fromkeys(METRIC_NAMES, 0.0123)


def ablation_rows() -> list[dict]:
    def row(name: str, mcc: bool, done: bool = True) -> dict:
        return {"name": name, "pretrain": True, "tcmf": True, "mcc": mcc, "g": 0.2,
                "status": "done" if done else "skipped: identical to C4 because MCC is undefined on this data",
                "mean": MEAN if done else {}, "std": STD if done else {}, "avg_change": -1.5 if done else None}

    return [row("C1", True), row("C4", False), row("C5", False, done=False)]


def render(table, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("seeds", [[0], [0, 1, 2, 3, 4]])
def test_ablation_table_reads_whole(width: int, seeds: list[int]) -> None:
    text = render(ablation_table(ablation_rows(), seeds, width=width), width)
    assert "…" not in text  # no cell or header is cut
    assert max(len(line) for line in text.splitlines()) <= width
    cells = [line.replace("│", " ").split() for line in text.splitlines()]
    lines = {c[0]: " ".join(c) for c in cells if c and c[0] in ("C1", "C4", "C5")}
    assert "+0.20" in lines["C1"] and "+0.20" not in lines["C4"] and "–" in lines["C4"]  # no g without MCC
    assert "skipped" in lines["C5"]
    assert "has0/non0" in text and "61.17/62.01" in text
    if len(seeds) == 1:
        assert "±" not in text.replace("mean ±", "") and "1 seed (0)" in text
    else:
        assert "±1.23" in text and "sample std (ddof=1) over 5 seeds (0, 1, 2, 3, 4)" in " ".join(text.split())


@pytest.mark.parametrize("width", [80, 120])
def test_results_table_reads_whole(width: int) -> None:
    summary = {k: (MEAN[k], STD[k]) for k in MEAN}
    text = render(results_table("mosi: test split", {"KEBR": summary}, [0, 1, 2], width=width), width)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    assert "has0/non0" in text and "over 3 seeds (0, 1, 2)" in " ".join(text.split()) and "±0.012" in text
    one = render(results_table("mosi: test split", {"KEBR": summary}, [7], width=width), width)
    assert "±" not in one and "1 seed (7), no spread" in one and "1.234" in one
