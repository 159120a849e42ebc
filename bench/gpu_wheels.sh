#!/usr/bin/env bash
# The wheelhouse bench/gpu.sh installs from on a GPU machine without network (README "GPUs and many processes").
#
#   bash bench/gpu_wheels.sh              # here, with network: writes bench/wheelhouse/ (git-ignored), < 64 MiB
#
# That machine has python3 with torch (CUDA), transformers, h5py, typer, rich, scipy, scikit-learn, matplotlib,
# safetensors and tensorboard. What the GPU pieces import beyond that comes from here, without dependencies
# (pip download --no-deps): vaderSentiment (the lexicon that pretraining masks with), pytest and its own
# dependencies (the cuda-marked tests), and av (PyAV, for the media-reading code; only if the whole folder
# stays under the limit: none of the GPU pieces reads media). The random-BERT tokenizer is in the repository
# (kebr_core/assets/random_bert_tokenizer), so the 88 MB MiniLM package is not needed.
# PYVER (default 3.11): that machine's Python; av's wheel is abi3 (any CPython >= the version it names).
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYVER=${PYVER:-3.11}
DEST=bench/wheelhouse
LIMIT=$((64 * 1024 * 1024))
rm -rf "$DEST"
mkdir -p "$DEST"
get() {  # get PACKAGE...: binary wheels for PYVER on manylinux x86-64, no dependencies
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d "$DEST" "$@"
}
get vaderSentiment pytest pluggy iniconfig packaging pygments
[ "$PYVER" = 3.10 ] && get exceptiongroup tomli  # pytest's own, on Python 3.10 only
before=$(du -sb "$DEST" | cut -f1)
mkdir -p "$DEST.av"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 -d "$DEST.av" av
av_size=$(du -sb "$DEST.av" | cut -f1)
if [ $((before + av_size)) -lt "$LIMIT" ]; then
  mv "$DEST.av"/*.whl "$DEST"/
else
  echo "gpu_wheels.sh: av left out ($((av_size / 1048576)) MiB would pass the 64 MiB limit); nothing in bench/gpu.sh needs it"
fi
rm -rf "$DEST.av"
ls -l "$DEST"
echo "gpu_wheels.sh: $(du -sb "$DEST" | cut -f1) bytes in $DEST (limit $LIMIT)"
