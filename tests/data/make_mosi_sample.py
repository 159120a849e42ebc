"""Make tests/data/mosi_sample.csv: a few hundred rows of CMU-MOSI's MMSA label.csv, so tests that want
real MOSI transcripts and labels run in any clone (`$KEBR_MOSI_LABELS` holds the full file, when present).

Which rows (in the file's order, columns unchanged): every 8th row of each split; every test row whose
label ends in .5 (where Acc-7's round-half-to-even matters, docs/design.md §7); every valid row labeled 0 or
±3 and every 4th train/test row labeled 0 or ±3 (the has0/non0 tie and the scale's ends).

    python tests/data/make_mosi_sample.py /path/to/mosi/label.csv
"""

import csv
import sys
from pathlib import Path

OUT = Path(__file__).with_name("mosi_sample.csv")


def keep(split: str, index: int, label: float, edge_index: int) -> bool:
    """Whether row `index` of `split` goes in; `edge_index` counts the split's rows labeled 0 or ±3."""
    if index % 8 == 0 or (split == "test" and abs(label) % 1 == 0.5):
        return True
    is_edge = label == 0 or abs(label) == 3
    return is_edge and (split == "valid" or edge_index % 4 == 0)


def main(source: Path) -> None:
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    seen = {"train": 0, "valid": 0, "test": 0}
    edges = dict(seen)
    kept = []
    for row in rows:
        split, label = row["mode"], float(row["label"])
        if keep(split, seen[split], label, edges[split]):
            kept.append(row)
        seen[split] += 1
        edges[split] += label == 0 or abs(label) == 3
    with OUT.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    print(f"{OUT}: {len(kept)} of {len(rows)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
