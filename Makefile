# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEMO_DIR ?= runs/cpu_demo
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv kernels demo demo-cloud test clean-demo docker-image docker-gpu docker-test

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-extras.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==24.3.1
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-extras.txt
	touch $@

venv: $(VENV)/.installed kernels

# The CPU convolution operator (core/nn/cpu_ops.py) and the training-image decoder
# (core/data/jpeg_augment.py); core/kernels/build.sh says what happens without a compiler
# (a warning and the slower fallback; an error under `make test`, whose suite tests them).
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

# The suite on TEST_WORKERS pytest-xdist processes, whole files per process (module fixtures
# stay shared): most tests wait on subprocesses, msrun and the S3 server, so two processes on two
# cores take 12 instead of 18 minutes.
TEST_WORKERS ?= 2
test: export MNV3_REQUIRE_KERNELS = 1
test: venv
	@sh tests/kernels/install_cross.sh
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

clean-demo:
	rm -rf $(DEMO_DIR)

# --- Docker images (not part of `make test`) -----------------------------------------------------
# docker-image / docker-gpu build with your Docker (BuildKit). EXTRA_CA_BUNDLE: a CA bundle pip
# should also trust in the build (e.g. a TLS-intercepting proxy's CA), passed as the pip_ca build
# secret, never stored in the image. DOCKER_BUILD_FLAGS: e.g. --network host.
DOCKER ?= docker
IMAGE ?= mnv3-runner
BASE_IMAGE ?= python:3.11-slim
INSTALL_REQUIREMENTS ?= 1
CUDA_IMAGE ?= nvidia/cuda:11.6.2-cudnn8-runtime-ubuntu20.04
EXTRA_CA_BUNDLE ?=
DOCKER_BUILD_FLAGS ?=
DOCKER_SECRET = $(if $(EXTRA_CA_BUNDLE),--secret id=pip_ca$(comma)src=$(EXTRA_CA_BUNDLE))
comma := ,

docker-image:
	DOCKER_BUILDKIT=1 $(DOCKER) build $(DOCKER_BUILD_FLAGS) $(DOCKER_SECRET) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg INSTALL_REQUIREMENTS=$(INSTALL_REQUIREMENTS) -t $(IMAGE) .

# x86-64 GPU image: CUDA 11.6 + cuDNN 8 libraries from CUDA_IMAGE on the Python 3.11 base.
docker-gpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build $(DOCKER_BUILD_FLAGS) $(DOCKER_SECRET) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg CUDA_IMAGE=$(CUDA_IMAGE) --target gpu -t $(IMAGE):gpu .

# Builds and runs the image in a private dockerd (root; installs docker.io and debootstrap with
# apt when missing): see tests/docker/run_docker_test.sh. EXTRA_CA_BUNDLE defaults to the
# machine's bundle there. The venv runs SeaweedFS, the test's stand-in for OBS.
docker-test: $(VENV)/.installed
	DOCKER_TEST_PYTHON=$(abspath $(PY)) bash tests/docker/run_docker_test.sh
