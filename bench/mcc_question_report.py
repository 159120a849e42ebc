"""The tables of docs/imbalance/question/README.md from bench/mcc_question.sh's compare-rR.json files.

Per ratio, one row per configuration compared with C4 (the reference): its test means over the P × F runs
and the paired Δ (X − C4) with the 95 % interval over pretraining-seed means and the sign-flip p, for MAE,
non0 Acc-2 and Corr, as `kebr compare` computed them (nothing is recomputed here).

    python bench/mcc_question_report.py docs/imbalance/question [--out docs/imbalance/question/results.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

METRICS = (("mae", "MAE", 1.0, "{:.3f}", "{:+.3f}"), ("acc2_non0", "Acc-2 non0 (%)", 100.0, "{:.1f}", "{:+.1f}"),
           ("corr", "Corr", 1.0, "{:.3f}", "{:+.3f}"))


def table(data: dict) -> list[str]:
    head = ["configuration"] + [f"{name} | Δ vs C4 [95 % CI]" for _, name, *_ in METRICS] + ["p (MAE)"]
    lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join(["---: | ---:"] * len(METRICS)) + " | ---: |"]
    first = data["comparisons"][0]
    ref = ["C4 (no MCC)"] + [f"{fmt.format(first['metrics'][m]['reference_mean'] * scale)} | —"
                             for m, _, scale, fmt, _ in METRICS] + ["—"]
    lines.append("| " + " | ".join(ref) + " |")
    for c in data["comparisons"]:
        cells = [c["run"]]
        for m, _, scale, fmt, dfmt in METRICS:
            d = c["metrics"][m]
            cells.append(f"{fmt.format(d['run_mean'] * scale)} | {dfmt.format(d['mean'] * scale)} "
                         f"[{dfmt.format(d['low'] * scale)}, {dfmt.format(d['high'] * scale)}]")
        cells.append(f"{c['metrics']['mae']['p_value']:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("docs", type=Path, help="bench/mcc_question.sh's DOCS folder (compare-rR.json files)")
    ap.add_argument("--out", type=Path, help="where to write the tables (default: DOCS/results.md)")
    args = ap.parse_args()
    files = sorted(args.docs.glob("compare-r*.json"), key=lambda p: float(re.findall(r"r([\d.]+)\.json", p.name)[0]))
    if not files:
        raise SystemExit(f"{args.docs} holds no compare-rR.json file; run bench/mcc_question.sh first.")
    out = []
    for path in files:
        data = json.loads(path.read_text())
        ratio = re.findall(r"r([\d.]+)\.json", path.name)[0]
        method = data["comparisons"][0]["metrics"]["mae"]["method"]
        out += [f"### Imbalance ratio {ratio}× (`{path.name}`)", "", *table(data), "",
                f"Intervals: {method}. Settings each row changes against C4:", ""]
        out += [f"- {c['run']}: {'; '.join(c['differs'])}" for c in data["comparisons"]] + [""]
    target = args.out or args.docs / "results.md"
    target.write_text("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
