#!/bin/bash
# `make docker-test`: build the runner's image in a private Docker engine and run it the way
# ModelArts does. Not part of `make test` (it takes minutes and needs root).
#
#  1. installs docker.io and debootstrap with apt when missing;
#  2. starts its own dockerd (own data/exec roots and unix socket, no bridge, no iptables) and
#     stops it by its pid at the end, with every container it started;
#  3. builds the base once with debootstrap (Debian bookworm, Python 3.11 as `python3` only,
#     externally managed) and imports it as local/debian-py311:bookworm (tarball cached);
#  4. builds the image (INSTALL_REQUIREMENTS=1) with BuildKit, host network and the CA bundle as
#     the pip_ca build secret; checks that a base without Python 3.11, and INSTALL_REQUIREMENTS=0
#     on a base without MindSpore, fail with one error line; then an Ascend-shaped build
#     (INSTALL_REQUIREMENTS=0) on a base that holds MindSpore in its system Python;
#  5. runs as uid 1000:100: the CPU demo (train + eval), and a ModelArts-shaped job (boot command,
#     VC_*/MA_* variables, data at /home/ma-user/modelarts/inputs/data_url_0, outputs at
#     /home/ma-user/modelarts/outputs/train_url_0) stopped with SIGTERM after its first
#     checkpoint and started again: the second run must resume (summary.json start_step > 0);
#  6. builds the gpu target on a stand-in for the CUDA image (tests/docker/fake-cuda.Dockerfile:
#     its layout, empty library files) and runs cloud.cluster.gpu_check in it: no driver, a stand-in
#     V100 (passes), a stand-in H100 (refused). Real CUDA is not exercised here.
#
# Variables: DOCKER_TEST_STATE (data root + base tarball, kept between runs for the layer cache;
# default ~/.cache/mnv3-docker-test), EXTRA_CA_BUNDLE (CA bundle for pip in the build; default
# /etc/ssl/certs/ca-certificates.crt, empty: none), DEBIAN_MIRROR (default: this machine's apt
# mirror), KEEP_IMAGES=0 (remove the test images at the end; the base stays).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${DOCKER_TEST_STATE:-$HOME/.cache/mnv3-docker-test}
EXTRA_CA_BUNDLE=${EXTRA_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
BASE=local/debian-py311:bookworm
IMAGE=mnv3-runner:docker-test
IMAGE_MS_BASE=local/debian-py311-mindspore:docker-test
IMAGE_ASCEND=mnv3-runner:docker-test-system-mindspore
IMAGE_FAKE_CUDA=local/fake-cuda:11.6.2-cudnn8-docker-test
IMAGE_GPU=mnv3-runner:docker-test-gpu
PY=/opt/mnv3/venv/bin/python
BOOT=/home/ma-user/mnv3/launcher/modelarts.py
INPUT=/home/ma-user/modelarts/inputs/data_url_0
OUTPUT=/home/ma-user/modelarts/outputs/train_url_0
START=$(date +%s)

say() { printf '[docker-test %4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
fail() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "docker-test runs dockerd and debootstrap: run it as root"

# --- 1. packages ------------------------------------------------------------------------------
if [ ! -x "$DOCKER" ] || [ ! -x "$DOCKERD" ] || ! command -v debootstrap >/dev/null; then
    say "installing docker.io and debootstrap with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi

# --- 2. a private dockerd -------------------------------------------------------------------
mkdir -p "$STATE"
exec 9>"$STATE/lock"
flock -n 9 || fail "another docker-test uses $STATE (lock $STATE/lock)"
RUN_DIR=$(mktemp -d /tmp/mnv3-docker-test.XXXXXX)
export DOCKER_HOST=unix://$RUN_DIR/docker.sock
DOCKERD_PID=
CONTAINERS=()

cleanup() {
    local code=$?
    set +e
    for name in "${CONTAINERS[@]}"; do
        "$DOCKER" rm -f "$name" >/dev/null 2>&1
    done
    if [ -n "$DOCKERD_PID" ]; then
        if [ "${KEEP_IMAGES:-1}" = 0 ]; then
            "$DOCKER" rmi "$IMAGE" "$IMAGE_ASCEND" "$IMAGE_MS_BASE" "$IMAGE_GPU" "$IMAGE_FAKE_CUDA" >/dev/null 2>&1
        fi
        # earlier runs' images (untagged by rebuilds) and old build cache: the data root stays ~10 GB
        "$DOCKER" image prune -f >/dev/null 2>&1
        "$DOCKER" builder prune -f --keep-storage 3gb >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill -TERM "$DOCKERD_PID"
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    [ "$code" = 0 ] || { echo "--- last lines of the dockerd log:"; tail -n 15 "$RUN_DIR/dockerd.log"; } >&2
    # dockerd leaves its exec root's network-namespace mount behind
    awk -v dir="$RUN_DIR/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r \
        | while read -r mnt; do umount "$mnt" || umount -l "$mnt"; done
    rm -rf "$RUN_DIR"
    say "done (exit $code)"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$DOCKERD" --data-root "$STATE/data" --exec-root "$RUN_DIR/exec" -H "$DOCKER_HOST" \
    --pidfile "$RUN_DIR/docker.pid" --bridge=none --iptables=false >"$RUN_DIR/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 120); do
    "$DOCKER" version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || fail "dockerd exited; see its log above"
    sleep 0.5
done
"$DOCKER" version >/dev/null 2>&1 || fail "dockerd did not answer on $DOCKER_HOST within 60 s"
say "dockerd $("$DOCKER" version -f '{{.Server.Version}}') (pid $DOCKERD_PID) on $DOCKER_HOST"

# --- 3. the Debian/Python 3.11 base ---------------------------------------------------------
if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    tarball=$STATE/debian-py311-bookworm.tar
    if [ ! -s "$tarball" ]; then
        mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
        mirror=${mirror:-http://deb.debian.org/debian}
        say "debootstrap bookworm from $mirror (about a minute)"
        rootfs=$RUN_DIR/rootfs
        debootstrap --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1,iproute2 \
            bookworm "$rootfs" "$mirror" >"$RUN_DIR/debootstrap.log" 2>&1 \
            || { tail -n 20 "$RUN_DIR/debootstrap.log" >&2; fail "debootstrap failed"; }
        tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    "$DOCKER" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' "$tarball" "$BASE" >/dev/null
    say "imported $BASE"
fi
"$DOCKER" run --rm --network host "$BASE" sh -c \
    '! command -v python >/dev/null && python3 --version && test -e /usr/lib/python3.11/EXTERNALLY-MANAGED' \
    || fail "$BASE is not a python3-only, externally managed Python 3.11 base"

# --- 4. the images --------------------------------------------------------------------------
build() {  # build LOG ARGS... (BuildKit, host network, the CA secret)
    local log=$1
    shift
    local secret=()
    [ -n "$EXTRA_CA_BUNDLE" ] && secret=(--secret "id=pip_ca,src=$EXTRA_CA_BUNDLE")
    local t0
    t0=$(date +%s)
    DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain --network host "${secret[@]}" "$@" \
        >"$RUN_DIR/$log" 2>&1 || { tail -n 40 "$RUN_DIR/$log" >&2; fail "docker build $* failed"; }
    if [ -n "$EXTRA_CA_BUNDLE" ] && grep -q -F -- "$(sed -n 2p "$EXTRA_CA_BUNDLE")" "$RUN_DIR/$log"; then
        fail "the CA bundle's content appears in the build log"
    fi
    say "built ($(($(date +%s) - t0)) s): ${*: -3}"
}
build build-cpu.log --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" "$ROOT"

# A base without a usable Python: one error line, not a failure deep in pip.
if DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain --network host --build-arg BASE_IMAGE="$BASE" \
        --build-arg PYTHON=python3.9 "$ROOT" >"$RUN_DIR/build-bad-python.log" 2>&1; then
    fail "a build with PYTHON=python3.9 (absent) succeeded"
fi
grep -q "error: the runner needs Python 3.11 or 3.12 (its pinned requirements, MindSpore 2.10); the base image's python3.9 is missing" \
    "$RUN_DIR/build-bad-python.log" || { tail -n 20 "$RUN_DIR/build-bad-python.log" >&2; fail "no clear error for a bad PYTHON"; }
say "a base without Python 3.11 is refused with one error line"
secret=()
[ -n "$EXTRA_CA_BUNDLE" ] && secret=(--secret "id=pip_ca,src=$EXTRA_CA_BUNDLE")
if DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain --network host "${secret[@]}" --build-arg BASE_IMAGE="$BASE" \
        --build-arg INSTALL_REQUIREMENTS=0 "$ROOT" >"$RUN_DIR/build-no-mindspore.log" 2>&1; then
    fail "INSTALL_REQUIREMENTS=0 on a base without MindSpore built"
fi
grep -q "error: MindSpore is not importable from the venv; with INSTALL_REQUIREMENTS=0 the base image must have it" \
    "$RUN_DIR/build-no-mindspore.log" || { tail -n 20 "$RUN_DIR/build-no-mindspore.log" >&2; fail "no clear error without MindSpore"; }
say "INSTALL_REQUIREMENTS=0 on a base without MindSpore is refused with one error line"

# An Ascend/CANN-shaped base: MindSpore in the system Python, nothing else of the runner's.
ms_pin=$(grep -i -E '^mindspore==' "$ROOT/requirements.txt")
build build-ms-base.log --build-arg BASE_IMAGE="$BASE" --build-arg MINDSPORE="$ms_pin" \
    -t "$IMAGE_MS_BASE" -f "$ROOT/tests/docker/mindspore-base.Dockerfile" "$ROOT/tests/docker"
build build-system-ms.log --build-arg BASE_IMAGE="$IMAGE_MS_BASE" --build-arg INSTALL_REQUIREMENTS=0 \
    -t "$IMAGE_ASCEND" "$ROOT"
if grep -q "not built" "$RUN_DIR/build-cpu.log" "$RUN_DIR/build-system-ms.log"; then
    fail "the native build skipped a library: $(grep -h 'not built' "$RUN_DIR"/build-*.log | head -n 2)"
fi

run() {  # docker run as ModelArts' ma-user on the host network
    "$DOCKER" run --network host -u 1000:100 "$@"
}

# Both images: the venv interpreter, MindSpore from where it should be, the native libraries.
check_image='
import os, sys, mindspore, yaml, boto3, PIL
from core.nn import cpu_ops
from core.data import jpeg_augment
assert sys.executable == "/opt/mnv3/venv/bin/python", sys.executable
assert sys.prefix == "/opt/mnv3/venv", sys.prefix
expect = os.environ["MS_FROM"]
assert mindspore.__file__.startswith(expect), (mindspore.__file__, expect)
for m in (yaml, boto3, PIL):
    assert m.__file__.startswith("/opt/mnv3/venv/"), m.__file__
assert jpeg_augment.available(), jpeg_augment.load_error()
assert cpu_ops.available()
print("ok:", mindspore.__version__, "from", os.path.dirname(mindspore.__file__),
      "| native libraries load | jpeg:", jpeg_augment.linked_jpeg_library())
'
run --rm -e MS_FROM=/opt/mnv3/venv/ "$IMAGE" "$PY" -c "$check_image"
run --rm -e MS_FROM=/usr/local/lib/python3.11/dist-packages/ "$IMAGE_ASCEND" "$PY" -c "$check_image"
[ "$("$DOCKER" image inspect -f '{{json .Config.Cmd}}' "$IMAGE")" = "[\"$PY\",\"$BOOT\"]" ] \
    || fail "unexpected CMD: $("$DOCKER" image inspect -f '{{json .Config.Cmd}}' "$IMAGE")"
[ "$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")" = "1000:100" ] || fail "image user is not 1000:100"

# --- 5a. the CPU demo -------------------------------------------------------------------------
say "CPU demo: train (configs/cpu_demo.yaml) and eval"
t0=$(date +%s)
run --rm "$IMAGE" bash -c "set -e
    $PY launcher/local.py train --config configs/cpu_demo.yaml --output_dir /tmp/cpu_demo
    $PY launcher/local.py eval --checkpoint_path /tmp/cpu_demo
    cat /tmp/cpu_demo/eval.json" >"$RUN_DIR/demo.log" 2>&1 \
    || { tail -n 30 "$RUN_DIR/demo.log" >&2; fail "the CPU demo failed"; }
grep -q '"Top_1_Acc"' "$RUN_DIR/demo.log" || { tail -n 30 "$RUN_DIR/demo.log" >&2; fail "no eval result"; }
say "CPU demo ok ($(($(date +%s) - t0)) s): $(grep -o '"Top_1_Acc": [0-9.]*' "$RUN_DIR/demo.log" | tail -n 1)"

# --- 5b. a ModelArts-shaped job, stopped with SIGTERM and started again ----------------------
JOB=$RUN_DIR/job
mkdir -p "$JOB/data" "$JOB/outputs"
chown -R 1000:100 "$JOB"
run --rm -v "$JOB/data:/data" "$IMAGE" "$PY" -c \
    "from core.data.synthetic import ensure_demo_dataset; ensure_demo_dataset('/data/imagefolder')" >/dev/null
job_args=(-e VC_TASK_INDEX=0 -e VC_WORKER_NUM=1 -e VC_WORKER_HOSTS=127.0.0.1 -e MA_NUM_GPUS=0
          -e MA_NUM_HOSTS=1 -e MA_VJ_NAME=mnv3-docker-test -e MA_CURRENT_INSTANCE_NAME=mnv3-docker-test-worker-0
          -e MA_CURRENT_IP=127.0.0.1 -e MA_JOB_DIR=/home/ma-user/mnv3 -e MA_LOG_DIR=/tmp/log
          -v "$JOB/data/imagefolder:$INPUT:ro" -v "$JOB/outputs:$OUTPUT"
          "$IMAGE" "$PY" "$BOOT" "--data_url=$INPUT" "--train_url=$OUTPUT" --config=configs/cpu_demo.yaml
          --train.epochs=6)
name=mnv3-docker-test-job-$$
CONTAINERS+=("$name")
say "ModelArts-shaped job: first run"
run -d --name "$name" "${job_args[@]}" >/dev/null
for _ in $(seq 600); do
    compgen -G "$JOB/outputs/checkpoints/*.ckpt" >/dev/null && break
    [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$name")" = true ] \
        || { "$DOCKER" logs --tail 30 "$name" >&2; fail "the job ended before its first checkpoint"; }
    sleep 0.5
done
compgen -G "$JOB/outputs/checkpoints/*.ckpt" >/dev/null || fail "no checkpoint within 300 s"
t0=$(date +%s)
"$DOCKER" stop -t 120 "$name" >/dev/null  # SIGTERM; SIGKILL only after 120 s
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")
"$DOCKER" logs "$name" >"$RUN_DIR/job-1.log" 2>&1
"$DOCKER" rm "$name" >/dev/null
say "SIGTERM: the job exited with $code after $(($(date +%s) - t0)) s"
[ "$code" != 137 ] || { tail -n 30 "$RUN_DIR/job-1.log" >&2; fail "the job had to be killed"; }
status=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$JOB/outputs/summary.json")
[ "$status" = stopped ] || fail "first run's summary.json status is $status, expected stopped"

say "ModelArts-shaped job: second run (resume)"
run --rm "${job_args[@]}" >"$RUN_DIR/job-2.log" 2>&1 \
    || { tail -n 30 "$RUN_DIR/job-2.log" >&2; fail "the resumed job failed"; }
python3 - "$JOB/outputs" <<'EOF' || { tail -n 30 "$RUN_DIR/job-2.log" >&2; fail "the resumed run is wrong"; }
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
s = json.loads((out / "summary.json").read_text())
assert s["status"] == "completed", s["status"]
assert s["start_step"] > 0, f"start_step {s['start_step']}: the second run did not resume"
assert s["step"] == 6 * s["steps_per_epoch"], (s["step"], s["steps_per_epoch"])
ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
assert ckpts, "no checkpoints"
print(f"[docker-test] resumed at step {s['start_step']}, completed step {s['step']}; "
      f"checkpoints: {', '.join(ckpts)}")
EOF
grep -q -i "resumed from" "$RUN_DIR/job-2.log" || fail "the second run's log does not say it resumed"
# --- 6. the gpu target, on a stand-in for the CUDA image (no registry here) --------------------
build build-fake-cuda.log --build-arg BASE_IMAGE="$BASE" -t "$IMAGE_FAKE_CUDA" \
    -f "$ROOT/tests/docker/fake-cuda.Dockerfile" "$ROOT/tests/docker"
build build-gpu.log --build-arg BASE_IMAGE="$BASE" --build-arg CUDA_IMAGE="$IMAGE_FAKE_CUDA" --target gpu \
    -t "$IMAGE_GPU" "$ROOT"
[ "$("$DOCKER" image inspect -f '{{json .Config.Cmd}} {{.Config.User}}' "$IMAGE_GPU")" = "[\"$PY\",\"$BOOT\"] 1000:100" ] \
    || fail "gpu image: unexpected CMD or user"
# A stand-in driver where the NVIDIA container runtime puts it (/usr/local/nvidia).
mkdir -p "$RUN_DIR/nvidia/lib64" "$RUN_DIR/nvidia/bin"
touch "$RUN_DIR/nvidia/lib64/libcuda.so.1"
printf '#!/bin/sh\necho "0, $FAKE_GPU, 535.104.05"\n' >"$RUN_DIR/nvidia/bin/nvidia-smi"
chmod 755 "$RUN_DIR/nvidia/bin/nvidia-smi"
gpu_check() {  # gpu_check [docker run options]: the check as the launchers report it
    run --rm "$@" "$IMAGE_GPU" "$PY" -c "import sys
from launcher.common import run_main
from cloud.cluster.gpu_check import check_gpu_runtime
sys.exit(run_main(lambda argv: print(check_gpu_runtime().summary())))" 2>&1
}
out=$(gpu_check) && fail "gpu check passed without a driver: $out"
[ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ $out == "error: device_target=GPU cannot run: no NVIDIA driver in the container"* ]] \
    || fail "gpu check without a driver: $out"
say "gpu image, no driver: $out"
out=$(gpu_check -v "$RUN_DIR/nvidia:/usr/local/nvidia:ro" -e "FAKE_GPU=Tesla V100-SXM2-32GB, 7.0") \
    || fail "gpu check with a V100: $out"
[[ $out == "GPU runtime: CUDA 11.6, cuDNN 8.4.0, driver 535.104.05, 1 GPU(s): 0: Tesla V100-SXM2-32GB (sm_70)" ]] \
    || fail "gpu check with a V100: $out"
say "gpu image, stand-in V100: $out"
out=$(gpu_check -v "$RUN_DIR/nvidia:/usr/local/nvidia:ro" -e "FAKE_GPU=NVIDIA H100 80GB HBM3, 9.0") \
    && fail "gpu check passed with an H100: $out"
[[ $out == *"GPU 0 NVIDIA H100 80GB HBM3 (sm_90) is not supported"* ]] || fail "gpu check with an H100: $out"
say "gpu image, stand-in H100: $out"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'mnv3|local/' | sed 's/^/  image /'
say "all passed"
