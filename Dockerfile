# MobileNetV3-Small training runner: ModelArts custom-image jobs and plain docker.
# Needs BuildKit (Docker 23+ uses it by default; Docker 20.10: DOCKER_BUILDKIT=1).
#
#   docker build -t mnv3-runner .                                        # CPU (the default target)
#   docker run --rm mnv3-runner /opt/mnv3/venv/bin/python launcher/local.py train \
#       --config configs/cpu_demo.yaml                                # CPU demo (embedded dataset)
#   docker run --rm -v /data:/data mnv3-runner /opt/mnv3/venv/bin/python \
#       /home/ma-user/mnv3/launcher/modelarts.py --data_url=/data/imagenet --train_url=/data/out \
#       --config=<recipe>
#   docker run --rm --gpus all mnv3-runner:gpu ...                      # gpu target, NVIDIA runtime
#
# The runner's interpreter is the venv /opt/mnv3/venv, made from the base image's python3 (or
# --build-arg PYTHON=<interpreter>) with --system-site-packages:
#   INSTALL_REQUIREMENTS=1 (default): all of requirements.txt (MindSpore 2.10 included) goes
#     into the venv.
#   INSTALL_REQUIREMENTS=0: MindSpore comes from the base image (e.g. a ModelArts MindSpore/CANN
#     image from SWR, Ascend); everything else in requirements.txt goes into the venv.
#     docker build --build-arg BASE_IMAGE=swr.<region>.myhuaweicloud.com/<org>/<mindspore-cann-image>:<tag> \
#                  --build-arg INSTALL_REQUIREMENTS=0 -t mnv3-runner:ascend .
# Works on bases whose Python is `python3` only and whose system Python is externally managed
# (PEP 668): nothing is installed into the system Python. Bases with apt get libgomp1,
# iproute2 and python3-venv as needed; others must already have a Python with venv.
#
# pip behind a TLS-intercepting proxy: give the proxy's CA (or a whole bundle) as a build secret;
# it is added to pip's own CA list for the pip steps only and never stored in the image:
#   docker build --secret id=pip_ca,src=/path/to/ca.pem ...
#
# GPU (x86-64; MindSpore 2.10's GPU plugin needs CUDA 11.6 or 11.1 and cuDNN 8, GPUs sm_60..sm_86):
#   docker build --target gpu -t mnv3-runner:gpu .
# copies the CUDA 11.6 + cuDNN 8 user-space libraries from CUDA_IMAGE onto the Python 3.11 base;
# the driver (libcuda.so.1, nvidia-smi) comes from the host's NVIDIA container runtime.
ARG BASE_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:11.6.2-cudnn8-runtime-ubuntu20.04

# Only the gpu target uses this stage; BuildKit neither pulls nor builds it for the others.
# cuDNN is gathered with its symlinks (a wildcard COPY would turn each into a full copy).
FROM ${CUDA_IMAGE} AS cuda
RUN mkdir -p /opt/cudnn-8/lib && cp -a /usr/lib/x86_64-linux-gnu/libcudnn* /opt/cudnn-8/lib/

FROM ${BASE_IMAGE} AS runner
ARG INSTALL_REQUIREMENTS=1
ARG PYTHON=python3
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
USER 0

# libgomp1: MindSpore's CPU kernels; iproute2: msrun looks up local addresses with `ip`;
# python3-venv: Debian/Ubuntu keep ensurepip (needed by venv) out of python3.
# hadolint ignore=DL3008
RUN if command -v apt-get >/dev/null; then \
        packages=(libgomp1 iproute2); \
        if ! "${PYTHON}" -c "import ensurepip" 2>/dev/null; then packages+=(python3-venv); fi; \
        apt-get update \
        && apt-get install -y --no-install-recommends "${packages[@]}" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && if ! "${PYTHON}" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then \
        echo "error: the runner needs Python 3.11 or 3.12 (its pinned requirements, MindSpore 2.10);" \
             "the base image's ${PYTHON} is $("${PYTHON}" --version 2>/dev/null || echo missing):" \
             "build with --build-arg PYTHON=<its Python 3.11>, or on another base" >&2; \
        exit 1; \
    fi

# ModelArts runs jobs as ma-user, uid 1000, group ma-group, gid 100.
RUN if ! getent group 100 >/dev/null; then groupadd -g 100 ma-group; fi \
    && if ! id -u ma-user >/dev/null 2>&1; then \
        useradd -m -u 1000 -g 100 -s /bin/bash ma-user; \
    fi \
    && mkdir -p /home/ma-user/mnv3 \
    && chown 1000:100 /home/ma-user/mnv3

# The venv; with INSTALL_REQUIREMENTS=0 every requirement but MindSpore (the base image's).
# MindSpore is only located at build time, not imported: an Ascend base may lack the driver.
# --ignore-installed: the venv gets its own pinned copies even of packages the base's Python
# already has (e.g. MindSpore's numpy and Pillow), so only MindSpore comes from the base.
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_ca \
    "${PYTHON}" -m venv --system-site-packages /opt/mnv3/venv \
    && pip=(/opt/mnv3/venv/bin/python -m pip --no-cache-dir --disable-pip-version-check) \
    && if [ -s /run/secrets/pip_ca ]; then \
        cat "$(/opt/mnv3/venv/bin/python -c 'from pip._vendor import certifi; print(certifi.where())')" \
            /run/secrets/pip_ca > /tmp/pip-ca.pem \
        && pip+=(--cert /tmp/pip-ca.pem); \
    fi \
    && if [ "${INSTALL_REQUIREMENTS}" = "1" ]; then \
        cp /tmp/requirements.txt /tmp/install.txt; \
    else \
        grep -v -i -E '^[[:space:]]*mindspore([[:space:]=<>!~;[]|$)' /tmp/requirements.txt > /tmp/install.txt; \
    fi \
    && "${pip[@]}" install --ignore-installed -r /tmp/install.txt \
    && rm -f /tmp/pip-ca.pem /tmp/install.txt \
    && /opt/mnv3/venv/bin/python -c "import importlib.util as u, sys, numpy, yaml, boto3, PIL; \
spec = u.find_spec('mindspore'); \
print('mindspore at', spec.origin) if spec else \
sys.exit('error: MindSpore is not importable from the venv; with INSTALL_REQUIREMENTS=0 the base image must have it')"

# PATH: msrun starts its workers with the first `python` on PATH.
ENV PATH=/opt/mnv3/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE
WORKDIR /home/ma-user/mnv3
COPY --chown=1000:100 core ./core
COPY --chown=1000:100 cloud ./cloud
COPY --chown=1000:100 launcher ./launcher
COPY --chown=1000:100 configs ./configs
COPY --chown=1000:100 requirements.txt ./requirements.txt

# The native CPU libraries (core/kernels/build.sh: the CPU operators once per instruction set,
# avx512/avx2/baseline on x86-64 and neon on aarch64, the runner loading what the host executes):
# the training-image decoder speeds up the host pipeline that feeds any accelerator; the CPU
# operators serve CPU jobs. g++ is installed for the build only.
# Without apt or a compiler the build is skipped with a warning and the runner uses MindSpore's
# own ops.
# hadolint ignore=DL3008
RUN if command -v apt-get >/dev/null && ! command -v g++ >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends g++ \
        && sh core/kernels/build.sh /opt/mnv3/venv/bin/python \
        && apt-get purge -y g++ && apt-get autoremove -y \
        && rm -rf /var/lib/apt/lists/*; \
    else sh core/kernels/build.sh /opt/mnv3/venv/bin/python; fi

# ma-user (numeric, so that the runtime needs no passwd lookup)
USER 1000:100
# CMD, not ENTRYPOINT: ModelArts replaces the command with the job's boot command (`exec` + this
# interpreter, launcher/modelarts/spec.py IMAGE_COMMAND: its shell gives way to Python). Exec form,
# absolute interpreter: no shell, so Python is the main process and gets `docker stop`'s SIGTERM;
# no conda activation.
CMD ["/opt/mnv3/venv/bin/python", "/home/ma-user/mnv3/launcher/modelarts.py"]

# --- GPU: CUDA 11.6 + cuDNN 8 from CUDA_IMAGE (x86-64) ------------------------------------------
FROM runner AS gpu
USER 0
COPY --from=cuda /usr/local/cuda-11.6/ /usr/local/cuda-11.6/
COPY --from=cuda /opt/cudnn-8/lib/ /usr/local/cudnn-8/lib/
# No CUDA_HOME: with it MindSpore picks its GPU plugin by running $CUDA_HOME/bin/nvcc, which a
# runtime image lacks (then no GPU plugin loads). The NVIDIA container runtime mounts the driver.
ENV LD_LIBRARY_PATH=/usr/local/cuda-11.6/lib64:/usr/local/cudnn-8/lib:/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 1000:100
CMD ["/opt/mnv3/venv/bin/python", "/home/ma-user/mnv3/launcher/modelarts.py"]

# --- the default target: CPU, or Ascend on a CANN base -------------------------------------------
FROM runner AS cpu
