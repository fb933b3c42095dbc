# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= runs/cpu_demo
export PATH := $(abspath $(VENV))/bin:$(PATH)

KERNEL_SRC := core/kernels/depthwise_conv.cc
KERNEL_LIB := core/kernels/libmnv3_depthwise.so
JPEG_SRC := core/kernels/jpeg_augment.cc
JPEG_LIB := core/kernels/libmnv3_jpeg.so
CXX ?= g++

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
# (core/jpeg_augment.py). Without a C++ compiler the build is skipped and the runner uses
# nn.Conv2d (system.depthwise_impl=auto) and MindSpore's dataset ops (data.decoder=auto).
kernels: $(KERNEL_LIB) $(JPEG_LIB)

# A compiler without GCC's x86 function multiversioning (target_clones) gets a plain build.
$(KERNEL_LIB): $(KERNEL_SRC)
	@if command -v $(CXX) >/dev/null; then \
		$(CXX) -O3 -fopenmp -fPIC -shared -std=c++17 -o $@ $< 2>/dev/null \
		|| $(CXX) -O3 -fopenmp -fPIC -shared -std=c++17 -DMNV3_NO_MULTI_ISA -o $@ $< \
		&& echo "built $@"; \
	else echo "warning: $(CXX) not found; skipping $@ (CPU convs use nn.Conv2d, slower)"; fi

# Linked against the SIMD libjpeg-turbo that Pillow (a MindSpore dependency) ships and loads;
# core/jpeg_augment.py finds the same file the same way before loading the library.
$(JPEG_LIB): $(JPEG_SRC) $(VENV)/.installed
	@if command -v $(CXX) >/dev/null; then \
		jpeg=$$($(PY) -c "from core.jpeg_augment import jpeg_library_file as f; print(f() or '')") \
		&& if [ -z "$$jpeg" ]; then echo "warning: Pillow's libjpeg not found; skipping $@"; exit 0; fi \
		&& { $(CXX) -O3 -fPIC -shared -std=c++17 -Icore/kernels/third_party/libjpeg-turbo -o $@ $< \
				-L"$$(dirname $$jpeg)" -l:"$$(basename $$jpeg)" 2>/dev/null \
			|| $(CXX) -O3 -fPIC -shared -std=c++17 -DMNV3_NO_MULTI_ISA -Icore/kernels/third_party/libjpeg-turbo \
				-o $@ $< -L"$$(dirname $$jpeg)" -l:"$$(basename $$jpeg)"; } \
		&& echo "built $@ (libjpeg: $$jpeg)"; \
	else echo "warning: $(CXX) not found; skipping $@ (training images use MindSpore's decoder, slower)"; fi

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
