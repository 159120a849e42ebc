#!/usr/bin/env bash
# MCC's question answered with paired statistics (issue 25, part 5): on the premise store (audio and
# vision carry equal, independent shares of the label, text none; audio easy to read) at several
# imbalance ratios r = (β_a/σ_a) / (β_v/σ_v), vision's signal-to-noise below audio's, is C1 (with MCC)
# better than C4 (without), under the paper's form, the balanced form and the authors' MCC recipe? And a
# positive control: does modality dropout of the dominant stream (audio) during fine-tuning, which is
# known to make a model use the other stream, show up as a gain in the same set-up?
#
# Design (docs/imbalance/question/README.md says why):
# - one store per ratio: audio β_a 1, σ_a 0.5 (signal-to-noise 2); vision 1×: β 1, σ 0.5; 4×: β 0.5, σ 1;
#   24×: β 0.25, σ 3 (RATIOS picks which; any other value r: β 0.25, σ 0.125·r).
# - λ ∈ {0.1, 0.5, 1} × g ∈ {0, 0.2, 0.25, 0.4} chosen ON VALIDATION once, at TUNE_RATIO, for the paper
#   and the balanced form: `kebr tune --stage both --sampler grid --no-prune` (12 trials per form, each
#   pretrains on train + valid and fine-tunes one seed, every trial run to the end: with pruning on, 7 of
#   12 stopped after 1–2 epochs and the grid was not a grid), then reused at every ratio.
# - per ratio, each configuration pretrained PSEEDS times (kebr pretrain --seeds) and each pretraining
#   fine-tuned on SEEDS seeds (kebr eval): C4 (λ 0), C1 paper and C1 balanced (the chosen λ, g), C1 with
#   the authors' MCC recipe (pretraining: mean-cosine form, g 0.25, λ 0.5; fine-tuning: reference form,
#   g 0.4, λ 1; their alignment; `--preset authors`' MCC settings, its architecture left at kebr's so that
#   C4 stays the one reference), and the control: C4's pretrainings fine-tuned with --modality-dropout
#   DROPOUT of audio. Then `kebr compare` with C4 first: Δ (X − C4) per metric, 95 % interval over the
#   pretraining-seed means, sign-flip p.
#
# Sized for ≤ 40 minutes on one thread of the project's shared 2-core CPU. Knobs (environment): N,
# UNLABELED, PSEEDS, SEEDS, PRETRAIN_EPOCHS, EPOCHS, TUNE_PRETRAIN_EPOCHS, TUNE_EPOCHS, RATIOS, TUNE_RATIO,
# DROPOUT, LR_FUSION, DOCS (where tables and JSON are copied; results.md by bench/mcc_question_report.py).
# The run of docs/imbalance/question/ (24 min; the reference design, 1000 + 1000 samples, 3 × 5 seeds,
# 30/15 epochs, took 11 min for one store, so this cuts F 5 → 3 and the epochs to 20/12):
#   N=1000 UNLABELED=1000 PSEEDS=3 SEEDS=3 PRETRAIN_EPOCHS=20 EPOCHS=12 bash bench/mcc_question.sh
# A smoke test (about 2 minutes):
#   N=80 UNLABELED=40 PSEEDS=2 SEEDS=2 PRETRAIN_EPOCHS=1 EPOCHS=1 TUNE_PRETRAIN_EPOCHS=1 TUNE_EPOCHS=1 \
#     RATIOS="1 24" DOCS=/tmp/question-docs bash bench/mcc_question.sh /tmp/question
#   usage: bash bench/mcc_question.sh [OUT_DIR]        (KEBR=... to run another kebr command)
set -euo pipefail
OUT=${1:-runs/mcc-question}
KEBR=${KEBR:-.venv/bin/kebr}
N=${N:-1000}
UNLABELED=${UNLABELED:-1000}
PSEEDS=${PSEEDS:-3}
SEEDS=${SEEDS:-3}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-20}
EPOCHS=${EPOCHS:-12}
TUNE_PRETRAIN_EPOCHS=${TUNE_PRETRAIN_EPOCHS:-$PRETRAIN_EPOCHS}
TUNE_EPOCHS=${TUNE_EPOCHS:-$EPOCHS}
RATIOS=${RATIOS:-"1 4 24"}
TUNE_RATIO=${TUNE_RATIO:-24}
DROPOUT=${DROPOUT:-0.5}
LR_FUSION=${LR_FUSION:-1e-4}
DOCS=${DOCS:-docs/imbalance/question}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread: on a loaded machine two per process ran ~70× slower
MODEL=(--layers 2 --text-model "random-bert:hidden=32,layers=2,heads=2")
mkdir -p "$OUT" "$DOCS"
: >"$DOCS/time.txt"; : >"$DOCS/chosen.txt"
start=$(date +%s)

vision() {  # "β_v σ_v" of ratio $1 (audio: β 1, σ 0.5, signal-to-noise 2)
  case "$1" in
    1) echo "1.0 0.5" ;; 4) echo "0.5 1.0" ;; 24) echo "0.25 3.0" ;;
    *) python3 -c "print(0.25, 0.125 * $1)" ;;
  esac
}
store() {  # the premise store of ratio $1
  read -r beta sigma <<<"$(vision "$1")"
  [ -f "$OUT/r$1/synth.h5" ] || $KEBR synth -o "$OUT/r$1/synth.h5" --n "$N" --unlabeled "$UNLABELED" --text-strength 0 \
    --audio-strength 1 --vision-strength 1 --label-noise 0.2 --audio-signal 1.0 --audio-noise 0.5 \
    --vision-signal "$beta" --vision-noise "$sigma" --audio-len 10-40 --vision-len 10-40 --audio-dim 16 \
    --vision-dim 16 --seed 0 >"$DOCS/synth-r$1.txt"
}
for r in $RATIOS; do mkdir -p "$OUT/r$r"; store "$r"; done
mkdir -p "$OUT/r$TUNE_RATIO"; store "$TUNE_RATIO"

# 1. λ and g on validation, once, at TUNE_RATIO (the test split is never read: --no-finalize).
cat >"$OUT/space.toml" <<'EOF'
"mcc.weight" = [0.1, 0.5, 1.0]
"mcc.g" = [0.0, 0.2, 0.25, 0.4]
EOF
declare -A LAMBDA G
for form in paper balanced; do
  $KEBR tune -d "$OUT/r$TUNE_RATIO/synth.h5" -o "$OUT/tune-$form" --space "$OUT/space.toml" --sampler grid --no-prune --trials 12 \
    --stage both --pretrain-epochs "$TUNE_PRETRAIN_EPOCHS" --epochs "$TUNE_EPOCHS" --no-finalize \
    --set mcc.form="$form" --set train.lr_fusion="$LR_FUSION" --set model.layers=2 \
    --text-model "random-bert:hidden=32,layers=2,heads=2" --json >"$OUT/tune-$form.json"
  read -r LAMBDA[$form] G[$form] <<<"$(python3 -c "import json,sys; p=json.load(open(sys.argv[1]))['best']['params']; \
print(p['mcc.weight'], p['mcc.g'])" "$OUT/tune-$form.json")"
  cp "$OUT/tune-$form/trials.csv" "$DOCS/tune-$form-trials.csv" 2>/dev/null || true
  echo "$form: λ ${LAMBDA[$form]}, g ${G[$form]} (validation MAE, $TUNE_RATIO×)" | tee -a "$DOCS/chosen.txt"
done

# 2. per ratio: each configuration PSEEDS × SEEDS, then the paired comparison with C4 first.
pretrain() {  # store, out, MCC options …
  local store=$1 out=$2; shift 2
  $KEBR pretrain "$store" -o "$out" --seeds "$PSEEDS" --epochs "$PRETRAIN_EPOCHS" "${MODEL[@]}" "$@" >/dev/null
}
finetune() {  # store, pretraining, out, options …
  local store=$1 pre=$2 out=$3; shift 3
  $KEBR eval -d "$store" --pretrained "$pre" -o "$out" --seeds "$SEEDS" --epochs "$EPOCHS" --lr-fusion "$LR_FUSION" \
    --freeze-encoder "${MODEL[@]}" "$@" >/dev/null
}
for r in $RATIOS; do
  d="$OUT/r$r"; s="$d/synth.h5"
  pretrain "$s" "$d/pre-C4" --lambda-mcc 0
  finetune "$s" "$d/pre-C4" "$d/C4" --lambda-mcc 0
  finetune "$s" "$d/pre-C4" "$d/control" --lambda-mcc 0 --modality-dropout "$DROPOUT" --dropped-modality audio
  for form in paper balanced; do
    pretrain "$s" "$d/pre-$form" --mcc-form "$form" --lambda-mcc "${LAMBDA[$form]}" --g "${G[$form]}"
    finetune "$s" "$d/pre-$form" "$d/C1-$form" --mcc-form "$form" --lambda-mcc "${LAMBDA[$form]}" --g "${G[$form]}"
  done
  pretrain "$s" "$d/pre-authors" --mcc-form mean-cosine --g 0.25 --lambda-mcc 0.5 --mcc-align authors
  finetune "$s" "$d/pre-authors" "$d/C1-authors" --mcc-form reference --g 0.4 --lambda-mcc 1 --mcc-align authors
  $KEBR compare "$d/C4" "$d/C1-paper" "$d/C1-balanced" "$d/C1-authors" "$d/control" -o "$d/compare" --force \
    | tee "$DOCS/compare-r$r.txt"
  cp "$d/compare/compare.json" "$DOCS/compare-r$r.json"
  cp "$d/compare/compare.csv" "$DOCS/compare-r$r.csv"
  echo "ratio $r done at $(( ($(date +%s) - start) / 60 )) min" | tee -a "$DOCS/time.txt"
done
echo "wall time: $(( ($(date +%s) - start) / 60 )) min (N=$N UNLABELED=$UNLABELED PSEEDS=$PSEEDS SEEDS=$SEEDS" \
  "PRETRAIN_EPOCHS=$PRETRAIN_EPOCHS EPOCHS=$EPOCHS TUNE_PRETRAIN_EPOCHS=$TUNE_PRETRAIN_EPOCHS TUNE_EPOCHS=$TUNE_EPOCHS" \
  "RATIOS='$RATIOS' TUNE_RATIO=$TUNE_RATIO DROPOUT=$DROPOUT)" | tee -a "$DOCS/time.txt"
python3 "$(dirname "$0")/mcc_question_report.py" "$DOCS" >/dev/null  # DOCS/results.md: the write-up's tables
