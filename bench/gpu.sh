#!/usr/bin/env bash
# The GPU checks of kebr, for the first machine with a CUDA GPU (at most 455 s of limits on one GPU).
#
#   bash bench/gpu.sh                 # on a CUDA machine: results in bench/results/gpu.txt
#   bash bench/gpu.sh --cpu-smoke     # the same pieces on the CPU with tiny sizes (checks the script)
#
# On a machine without network (README "GPUs and many processes"): bring bench/wheelhouse/ from
# bench/gpu_wheels.sh; what the pieces import and that machine lacks (vaderSentiment, pytest, …) is installed
# from it (pip install --no-index --find-links, into a folder of its own put first on PYTHONPATH). Then:
# 0. imports every recipe, loads the random-BERT tokenizer and the lexicon; on a failure, one line and stop;
# 1. the cuda-marked tests (pytest -m cuda): a training step under set_sync_debug_mode("error"), frozen
#    and fine-tuned encoder; SDPA's memory-efficient kernel with a sample without frames (finite, zero
#    row); pretrain -> resume -> eval on the GPU, then that run resumed on the CPU; MCC and the heads in
#    float32 under CUDA bf16 autocast; MCC without a host sync;
# 2. bench/train_step.py at BERT-base size (random-bert:hidden=768,layers=12,heads=12), bf16;
# 3. bench/mcc.py: the vectorised MCC vs the per-sample loop, and a TCMF step proxy;
# 4. bench/attention.py: cross-modal attention through SDPA vs the explicit path.
# Under 8 minutes in all: every piece has its own time limit (455 s together); one failing does not stop the others. The exit status is 1 if
# any failed. With $OUT set (a device runner's output folder) the results file is copied there too.
# MOSI's label.csv (real transcripts for train_step.py) is taken from $KEBR_MOSI_LABELS, shared/ beside
# or inside the checkout, else MOSI-like random texts are written (the results file says which).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
RESULTS=bench/results/gpu.txt
[ "$SMOKE" = 1 ] && RESULTS=${TMPDIR:-/tmp}/kebr-gpu-smoke.txt
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
mkdir -p "$(dirname "$RESULTS")"
: > "$RESULTS"
failed=0

piece() {  # piece NAME LIMIT_SECONDS COMMAND...: run, log, time, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s): $*" | tee -a "$RESULTS"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$RESULTS"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$RESULTS"
  echo | tee -a "$RESULTS"
  [ "$rc" -eq 0 ] || failed=1
}

# The wheelhouse: only what this Python lacks, into a folder of its own (no network, nothing system-wide).
SITE=${TMPDIR:-/tmp}/kebr-gpu-site
if [ -d bench/wheelhouse ]; then
  missing=$("$PYTHON" -c '
import importlib.util
wanted = {"vaderSentiment": "vaderSentiment", "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig",
          "packaging": "packaging", "pygments": "pygments", "av": "av"}
print(" ".join(p for m, p in wanted.items() if importlib.util.find_spec(m) is None))')
  if [ -n "$missing" ]; then
    have=$(cd bench/wheelhouse && for p in $missing; do ls | grep -qi "^${p}-" && echo "$p"; done | tr '\n' ' ')
    echo "installing from bench/wheelhouse into $SITE: $have" | tee -a "$RESULTS"
    [ -z "$have" ] || "$PYTHON" -m pip install -q --no-index --find-links bench/wheelhouse --no-deps --target "$SITE" $have \
      || { echo "bench/gpu.sh: pip could not install $have from bench/wheelhouse (see above)." | tee -a "$RESULTS"; exit 2; }
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi

if [ "$SMOKE" = 0 ] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: PyTorch sees no CUDA GPU; run it on a GPU machine (or --cpu-smoke to check the script)." >&2
  exit 2
fi

labels=""
for candidate in "${KEBR_MOSI_LABELS:-}" ../shared/data/mosi/label.csv shared/data/mosi/label.csv; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then labels=$candidate; break; fi
done
if [ -z "$labels" ]; then
  labels=${TMPDIR:-/tmp}/kebr-mosi-like-label.csv
  "$PYTHON" - "$labels" <<'PY'
"""MOSI-like label.csv: 2,199 random texts (MOSI's split sizes, ~12 words each), when MOSI's is absent."""
import csv, sys
import numpy as np
rng = np.random.default_rng(0)
words = "it was a great movie i hate this so much the plot okay guess what wonderful day terrible boring like actors ending made me sad nothing special here".split()
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["video_id", "clip_id", "text", "label", "annotation", "mode", "label_by"])
    for i in range(2199):
        mode = "train" if i < 1284 else "valid" if i < 1513 else "test"
        text = " ".join(rng.choice(words, size=min(1 + rng.geometric(1 / 12), 45)))
        w.writerow([f"v{i // 20:03d}", i % 20, text, round(float(rng.uniform(-3, 3)), 1), "", mode, 0])
PY
  echo "note: MOSI's label.csv not found: train_step.py runs on MOSI-like random texts ($labels)" | tee -a "$RESULTS"
fi

# Piece 0: everything the others need, or one line saying what is missing (and nothing else runs).
piece "imports, tokenizer, lexicon" 45 "$PYTHON" bench/gpu_ready.py
if [ "$failed" = 1 ]; then
  echo "gpu.sh: stopped: bring bench/wheelhouse (bash bench/gpu_wheels.sh) or install what is named above." | tee -a "$RESULTS"
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp "$RESULTS" "$OUT/"
  exit 1
fi

piece "environment" 30 bash -c "\"$PYTHON\" -c 'import torch, transformers; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"transformers\", transformers.__version__); print(\"gpu:\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"none\")'; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true; date -u"

if [ "$SMOKE" = 1 ]; then
  piece "cuda-marked tests (collected only)" 120 "$PYTHON" -m pytest -q -m cuda --collect-only -p no:cacheprovider tests
  piece "train_step (tiny, cpu)" 600 "$PYTHON" bench/train_step.py --device cpu --text-model random-bert:hidden=32,layers=2,heads=2 --d-vision 20 --steps 1 --repeats 1 --label-csv "$labels"
  piece "mcc (cpu)" 300 "$PYTHON" bench/mcc.py --device cpu --reps 1
  piece "attention (tiny, cpu)" 120 "$PYTHON" bench/attention.py --device cpu --tiny --reps 2
else
  piece "cuda-marked tests" 150 "$PYTHON" -m pytest -q -m cuda -rs -p no:cacheprovider tests
  piece "train_step, BERT-base size, bf16" 150 "$PYTHON" bench/train_step.py --device cuda --text-model random-bert:hidden=768,layers=12,heads=12 --steps 10 --repeats 2 --label-csv "$labels"
  piece "mcc" 40 "$PYTHON" bench/mcc.py --device cuda --reps 20 --step
  piece "attention: SDPA vs explicit" 40 "$PYTHON" bench/attention.py --device cuda --reps 20
fi

echo "gpu.sh: $([ "$failed" = 0 ] && echo "every piece passed" || echo "some piece FAILED (see above)")" | tee -a "$RESULTS"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$RESULTS" "$OUT/"; fi
exit "$failed"
