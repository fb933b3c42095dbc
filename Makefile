# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= runs/cpu_demo
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv kernels demo demo-cloud test clean-demo

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-extras.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-extras.txt
	touch $@

venv: $(VENV)/.installed kernels

# The CPU convolution operator (core/fast_conv.py) and the training-image decoder
# (core/jpeg_augment.py); core/kernels/build.sh says what happens without a compiler.
kernels: $(VENV)/.installed
	@sh core/kernels/build.sh $(PY)

demo: venv
	$(PY) launcher/local.py train --config configs/cpu_demo.yaml --output_dir $(DEMO_DIR) --resume auto
	$(PY) launcher/local.py eval --checkpoint_path $(DEMO_DIR)
	$(PY) launcher/local.py export --checkpoint_path $(DEMO_DIR) --format MINDIR
	$(PY) launcher/local.py export --checkpoint_path $(DEMO_DIR) --format ONNX
	@echo "demo outputs in $(DEMO_DIR): checkpoints/, metrics.jsonl, train.log, eval.json, export/"

demo-cloud: venv
	$(PY) launcher/demo_cloud.py

test: venv
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf $(DEMO_DIR)
