"""Tables and a plot for the modality-ease experiment (`bench/imbalance_ease.sh`; docs/imbalance/ease/).

    python bench/imbalance_report.py SYNTH_STORE ABLATION_DIR --out docs/imbalance/ease

Writes into --out:
- results.md: the test metrics of every configuration (mean ± sample std over seeds), the probe (test
  MAE and Acc-2 with audio or vision zeroed or absent), and a linear read-out of each stream straight
  from the store (ridge on the per-sample means of the feature columns, fitted on train, scored on
  test): how much of the label each stream can give a simple model, and how much both together can.
- probe.png: test MAE per configuration with all streams, without audio and without vision.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kebr_core.data.store import FeatureStore  # noqa: E402
from kebr_core.metrics import msa_metrics  # noqa: E402


def stream_means(store: FeatureStore, indices: np.ndarray, stream: str) -> np.ndarray:
    """(N, d) per-sample mean of each feature column over the sample's frames (0 for no frames)."""
    read = store.audio if stream == "audio" else store.vision
    frames = [read(int(i)) for i in indices]
    return np.stack([x.mean(axis=0) if len(x) else np.zeros(x.shape[1]) for x in frames])


def ridge_readout(store: FeatureStore, streams: tuple[str, ...], alpha: float = 1.0) -> dict[str, float]:
    """Test metrics of ridge regression on the streams' per-sample column means (fitted on train)."""
    def design(split: str) -> tuple[np.ndarray, np.ndarray]:
        idx = store.indices(split)
        x = np.concatenate([stream_means(store, idx, s) for s in streams], axis=1)
        return np.concatenate([x, np.ones((len(x), 1))], axis=1), store.labels[idx].astype(np.float64)

    x_train, y_train = design("train")
    x_test, y_test = design("test")
    penalty = alpha * np.eye(x_train.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    w = np.linalg.solve(x_train.T @ x_train + penalty, x_train.T @ y_train)
    return msa_metrics(x_test @ w, y_test)


def fmt(mean: float, std: float | None = None, scale: float = 1.0, digits: int = 3) -> str:
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path)
    parser.add_argument("ablation", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    payload = json.loads((args.ablation / "ablation.json").read_text())
    rows = [r for r in payload["configurations"] if r["mean"]]
    store = FeatureStore(args.store)
    with h5py.File(args.store, "r") as f:
        synth = json.loads(f.attrs["synth"]) if "synth" in f.attrs else {}

    def label(r: dict) -> str:
        return f"{r['name']} ({'MCC, ' + r['mcc_align'] if r['mcc'] else 'no MCC'})"

    lines = [f"# Results: {args.ablation}", "",
             f"Seeds {payload['seeds']}; {payload.get('notes', [''])[0] if payload.get('notes') else ''}", "",
             "## Test metrics (mean ± sample std over seeds)", "",
             "| configuration | MAE | Corr | Acc-2 (non0, %) | F1 (non0, %) | Acc-7 (%) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        m, s = r["mean"], r["std"]
        lines.append(f"| {label(r)} | {fmt(m['mae'], s['mae'])} | {fmt(m['corr'], s['corr'])} | "
                     f"{fmt(m['acc2_non0'], s['acc2_non0'], 100, 2)} | {fmt(m['f1_non0'], s['f1_non0'], 100, 2)} | "
                     f"{fmt(m['acc7'], s['acc7'], 100, 2)} |")
    names = list(rows[0].get("probe", {}))
    if names:
        lines += ["", "## A modality removed at test time (test MAE / Acc-2 non0 %, mean ± std over seeds)", "",
                  "| configuration | all streams | " + " | ".join(names) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
        for r in rows:
            cells = [f"{fmt(r['mean']['mae'], r['std']['mae'])} / {100 * r['mean']['acc2_non0']:.1f}"]
            for n in names:
                p = r["probe"][n]
                cells.append(f"{fmt(p['mean']['mae'], p['std']['mae'])} / {100 * p['mean']['acc2_non0']:.1f}")
            lines.append(f"| {label(r)} | " + " | ".join(cells) + " |")
        lines += ["", "MAE increase when a stream is removed (absent), mean over seeds:", "",
                  "| configuration | without audio | without vision | vision / audio |", "| --- | ---: | ---: | ---: |"]
        for r in rows:
            d_a = r["probe"]["audio absent"]["mean"]["mae"] - r["mean"]["mae"]
            d_v = r["probe"]["vision absent"]["mean"]["mae"] - r["mean"]["mae"]
            lines.append(f"| {label(r)} | {d_a:+.3f} | {d_v:+.3f} | {d_v / d_a if d_a else float('nan'):.2f} |")

    lines += ["", "## Linear read-out of the streams (ridge on per-sample feature means; train → test)", "",
              "| streams | MAE | Corr | Acc-2 (non0, %) |", "| --- | ---: | ---: | ---: |"]
    readouts = {streams: ridge_readout(store, streams) for streams in (("audio",), ("vision",), ("audio", "vision"))}
    for streams, m in readouts.items():
        lines.append(f"| {' + '.join(streams)} | {m['mae']:.3f} | {m['corr']:.3f} | {100 * m['acc2_non0']:.2f} |")
    if synth:
        lines += ["", "Store settings (`synth` attribute): " + json.dumps(synth, sort_keys=True)]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    if names:
        fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
        conditions = [("all streams", None), ("audio absent", "audio absent"), ("vision absent", "vision absent")]
        width = 0.8 / len(conditions)
        x = np.arange(len(rows))
        for k, (title, key) in enumerate(conditions):
            means = [r["mean"]["mae"] if key is None else r["probe"][key]["mean"]["mae"] for r in rows]
            stds = [r["std"]["mae"] if key is None else r["probe"][key]["std"]["mae"] for r in rows]
            ax.bar(x + (k - 1) * width, means, width, yerr=stds, capsize=3, label=title)
        ax.axhline(readouts[("audio", "vision")]["mae"], color="black", linestyle=":",
                   label="ridge on both streams' feature means")
        ax.set_xticks(x, [label(r) for r in rows], fontsize="small")
        ax.set(ylabel="test MAE (sentiment units; lower is better)",
               title="Test MAE with all streams and with one removed (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small")
        fig.savefig(args.out / "probe.png", dpi=120)


if __name__ == "__main__":
    main()
