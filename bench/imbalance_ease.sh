#!/usr/bin/env bash
# A fair test of MCC's premise (paper §3.4, Table 4; issue 14 item 8): audio and vision carry EQUAL,
# independent (complementary) shares of the label, text none, but audio is easy to read (high
# signal-to-noise) and vision hard (low), so a model without MCC may settle on audio. C1 (with MCC) vs C4
# (no MCC), with C1 under each MCC alignment (tile, authors, projected; C4 does not depend on the
# alignment: λ = 0); 5 fine-tuning seeds; every configuration also tested with audio or vision removed
# (--probe). Small on purpose (tiny random text encoder: text carries no label here; short sequences,
# 16-d features; one torch thread, because on a loaded machine two threads per process ran ~70× slower)
# so it finishes in about 30 minutes on a shared 2-core CPU; tables, plots and the run's JSON land in
# docs/imbalance/ease/ (see its README.md); a follow-up with longer fine-tuning goes to ease/longer/.
#   usage: bash bench/imbalance_ease.sh [OUT_DIR]        (KEBR=... to run another kebr command)
set -euo pipefail
OUT=${1:-runs/imbalance-ease}
KEBR=${KEBR:-.venv/bin/kebr}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DOCS=docs/imbalance/ease
mkdir -p "$OUT" "$DOCS"
$KEBR synth -o "$OUT/synth.h5" --n 1000 --unlabeled 1000 --text-strength 0 --audio-strength 1 --vision-strength 1 \
  --label-noise 0.2 --audio-signal 1.0 --audio-noise 0.5 --vision-signal 0.25 --vision-noise 1.5 \
  --audio-len 10-40 --vision-len 10-40 --audio-dim 16 --vision-dim 16 --seed 0 --force | tee "$DOCS/synth.txt"
# run NAME DOCS SEEDS EPOCHS LR_FUSION: C1 (three alignments) vs C4, fine-tuned EPOCHS epochs on SEEDS
# seeds, into $OUT/NAME, with its tables, plots and JSON copied into DOCS.
run() {
  local run_dir="$OUT/$1" docs="$2"
  mkdir -p "$docs"
  $KEBR ablate --dataset "$OUT/synth.h5" --no-mcc --mcc-align tile --compare-aligns authors,projected --probe --seeds "$3" \
    --pretrain-epochs 50 --epochs "$4" --lr-fusion "$5" --layers 2 --freeze-encoder \
    --text-model "random-bert:hidden=32,layers=2,heads=2" -o "$run_dir" | tee "$docs/table.txt"
  $KEBR analyze "$run_dir" --out "$docs"
  cp "$run_dir/ablation.json" "$run_dir/results.csv" "$docs/"
  $PY bench/imbalance_report.py "$OUT/synth.h5" "$run_dir" --out "$docs"
}
run ablate "$DOCS" 5 15 1e-4
# Follow-up (LONGER=0 skips it, ~22 more minutes): the same pretraining runs, fine-tuned 40 epochs with TCMF's
# learning rate 3e-4 and 3 seeds, into docs/imbalance/ease/longer/.
if [ "${LONGER:-1}" = 1 ]; then
  mkdir -p "$OUT/longer"
  cp -rT "$OUT/ablate/pretrain" "$OUT/longer/pretrain"
  run longer "$DOCS/longer" 3 40 3e-4
fi
