# MobileNetV3-Small training runner: ModelArts custom-image jobs and plain docker.
#
#   docker build -t mnv3-runner .
#   docker run --rm mnv3-runner                      # CPU demo: embedded dataset, one process
#   docker run --rm -v /data:/data mnv3-runner python launcher/modelarts.py \
#       --data_url=/data/imagenet --train_url=/data/out --config=configs/gpu_1p.yaml
#
# BASE_IMAGE defaults to a slim Python 3.11 on which the pinned requirements.txt is installed
# (the MindSpore 2.10 wheel carries the CPU, GPU and Ascend plugins). For Ascend, build on an
# image that already holds CANN and a matching MindSpore, e.g. one of ModelArts' MindSpore/CANN
# base images from SWR, and skip the pip step:
#   docker build --build-arg BASE_IMAGE=swr.<region>.myhuaweicloud.com/<org>/<mindspore-cann-image>:<tag> \
#                --build-arg INSTALL_REQUIREMENTS=0 -t mnv3-runner:ascend .
# Such images run as ma-user (uid 1000) already; the user step below keeps an existing one.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG INSTALL_REQUIREMENTS=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0

# libgomp1: MindSpore's CPU kernels; iproute2: msrun looks up local addresses with `ip`.
# hadolint ignore=DL3008
RUN if command -v apt-get >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends libgomp1 iproute2 \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ModelArts runs jobs as ma-user, uid 1000, group ma-group, gid 100.
RUN if ! getent group 100 >/dev/null; then groupadd -g 100 ma-group; fi \
    && if ! id -u ma-user >/dev/null 2>&1; then \
        useradd -m -u 1000 -g 100 -s /bin/bash ma-user; \
    fi \
    && mkdir -p /home/ma-user/mnv3 \
    && chown 1000:100 /home/ma-user/mnv3

COPY requirements.txt /tmp/requirements.txt
RUN if [ "${INSTALL_REQUIREMENTS}" = "1" ]; then \
        python -m pip install --no-cache-dir -r /tmp/requirements.txt; \
    fi

ENV PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE
WORKDIR /home/ma-user/mnv3
COPY --chown=1000:100 core ./core
COPY --chown=1000:100 cloud ./cloud
COPY --chown=1000:100 launcher ./launcher
COPY --chown=1000:100 configs ./configs
COPY --chown=1000:100 requirements.txt ./requirements.txt

# The native CPU libraries (core/kernels/build.sh): the training-image decoder speeds up the
# host pipeline that feeds any accelerator; the CPU convolutions serve CPU jobs. g++ is
# installed for the build only. Without apt or a compiler the build skips with a warning and
# the runner uses MindSpore's own ops.
# hadolint ignore=DL3008
RUN if command -v apt-get >/dev/null && ! command -v g++ >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends g++ \
        && sh core/kernels/build.sh python \
        && apt-get purge -y g++ && apt-get autoremove -y \
        && rm -rf /var/lib/apt/lists/*; \
    else sh core/kernels/build.sh python; fi

# ma-user (numeric, so that the runtime needs no passwd lookup)
USER 1000:100
# CMD, not ENTRYPOINT: ModelArts replaces the command with the job's boot command, and
# `docker run IMAGE python launcher/modelarts.py ...` stays natural.
CMD ["python", "launcher/modelarts.py"]
