#!/usr/bin/env bash
# Does MCC balance the modalities? (issue 6; paper §4.5–4.6, Appendix D)
# A synthetic store where audio carries 10× the label weight of vision, then C1 (with MCC) against
# C4 (no MCC), 3 seeds, frozen embedded MiniLM; tables and plots land in docs/imbalance/.
#   usage: bash bench/imbalance.sh [OUT_DIR]   (about 60 minutes on 2 busy CPU cores; see docs/imbalance/README.md)
set -euo pipefail
OUT=${1:-runs/imbalance}
KEBR=${KEBR:-.venv/bin/kebr}
mkdir -p "$OUT" docs/imbalance
$KEBR synth -o "$OUT/synth.h5" --n 800 --unlabeled 800 --audio-strength 1.0 --vision-strength 0.1 --force
$KEBR ablate --dataset "$OUT/synth.h5" --no-mcc --seeds 3 --pretrain-epochs 10 --epochs 8 --freeze-encoder \
  -o "$OUT/ablate" | tee docs/imbalance/table.txt
$KEBR analyze "$OUT/ablate" --out docs/imbalance
cp "$OUT/ablate/ablation.json" "$OUT/ablate/results.csv" docs/imbalance/
