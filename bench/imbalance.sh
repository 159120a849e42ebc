#!/usr/bin/env bash
# Does MCC balance the modalities? (issue 6; paper §4.5–4.6, Appendix D)
# A synthetic store where audio carries 10× the label weight of vision, then C1 (with MCC) against
# C4 (no MCC), 3 seeds, frozen embedded MiniLM, once per MCC alignment (tile: kebr's pairwise tile; projected);
# tables, balance.csv and plots land in docs/imbalance/<alignment>/.
#   usage: bash bench/imbalance.sh [OUT_DIR]   (about 25 minutes on 2 quiet CPU cores; see docs/imbalance/README.md)
set -euo pipefail
OUT=${1:-runs/imbalance}
KEBR=${KEBR:-.venv/bin/kebr}
mkdir -p "$OUT"
$KEBR synth -o "$OUT/synth.h5" --n 800 --unlabeled 800 --audio-strength 1.0 --vision-strength 0.1 --force
for ALIGN in tile projected; do
  DOCS=docs/imbalance/$ALIGN
  mkdir -p "$DOCS"
  $KEBR ablate --dataset "$OUT/synth.h5" --no-mcc --mcc-align "$ALIGN" --seeds 3 --pretrain-epochs 30 --epochs 8 \
    --freeze-encoder -o "$OUT/$ALIGN" | tee "$DOCS/table.txt"
  $KEBR analyze "$OUT/$ALIGN" --out "$DOCS"
  cp "$OUT/$ALIGN/ablation.json" "$OUT/$ALIGN/results.csv" "$DOCS/"
done
