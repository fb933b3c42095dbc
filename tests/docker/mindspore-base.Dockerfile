# For `make docker-test` (tests/docker/run_docker_test.sh): an Ascend/CANN-shaped base image,
# MindSpore installed in the system Python and nothing else of the runner's, to build the
# runner's Dockerfile on with INSTALL_REQUIREMENTS=0.
ARG BASE_IMAGE=local/debian-py311:bookworm
FROM ${BASE_IMAGE}
ARG MINDSPORE=mindspore==2.10.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# MINDSPORE is a pinned requirement line (name==version), given by the test script.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python3 -m pip install --no-cache-dir --break-system-packages "${MINDSPORE}"
