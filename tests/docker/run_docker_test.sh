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
#  5. runs as uid 1000:100: the CPU demo (train + eval), and a ModelArts-shaped job: the job
#     definition's command and parameters (--print-job-spec) through /bin/sh -c, VC_*/MA_*
#     variables, data at /home/ma-user/modelarts/inputs/data_url_0, outputs at
#     /home/ma-user/modelarts/outputs/train_url_0, SeaweedFS (from the project's venv) as OBS:
#     - a control without the command's `exec`: /bin/sh stays the main process and the job is
#       killed (137) at the end of the grace period;
#     - the job stopped with SIGTERM (docker stop) after its first checkpoint: Python is the main
#       process, writes a checkpoint and its manifest, and exits 0 within the 30 s grace period;
#     - its output uploaded to SeaweedFS (as the platform does), the job restarted with an empty
#       output folder: it resumes at the manifest's step from obs://.../out/ and completes;
#  6. builds the gpu target on a stand-in for the CUDA image (tests/docker/fake-cuda.Dockerfile:
#     its layout, empty library files) and runs cloud.cluster.gpu_check in it: no driver, a stand-in
#     V100 (passes), a stand-in H100 (refused). Real CUDA is not exercised here.
#
# Variables: DOCKER_TEST_STATE (data root + base tarball, kept between runs for the layer cache;
# default ~/.cache/mnv3-docker-test), DOCKER_TEST_PYTHON (the project's venv interpreter, for
# SeaweedFS and boto3 on this machine; default .venv/bin/python, which `make docker-test` makes), EXTRA_CA_BUNDLE (CA bundle for pip in the build; default
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
HOST_PY=${DOCKER_TEST_PYTHON:-$ROOT/.venv/bin/python}
BUCKET=mnv3-docker-test
GRACE_S=30  # the boot file's --grace_s default (launcher/signals.py), docker stop's timeout here
S3_PID=

say() { printf '[docker-test %4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
fail() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "docker-test runs dockerd and debootstrap: run it as root"
(cd "$ROOT" && "$HOST_PY" -c "import boto3, launcher.seaweedfs as s; s.weed_binary()") 2>/dev/null \
    || fail "$HOST_PY cannot run SeaweedFS (the stand-in for OBS): run 'make venv' first, or set DOCKER_TEST_PYTHON"

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
    if [ -n "$S3_PID" ] && kill -0 "$S3_PID" 2>/dev/null; then
        kill -TERM "$S3_PID"  # launcher.seaweedfs stops its weed server on SIGTERM
        wait "$S3_PID" 2>/dev/null
    fi
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

# --- 5b. a ModelArts-shaped job ---------------------------------------------------------------
# The job definition's own command and parameters (`--print-job-spec`, the body `submit` sends),
# run as ModelArts runs a boot command: through a shell (/bin/sh -c: its help lets commands be
# chained with ';' and '&&'), the parameters appended as --name=value, the data and the output
# mounted where ModelArts mounts them, the VC_*/MA_* variables set. SeaweedFS on this machine
# stands in for OBS (the node's credentials as OBS_* variables).
say "SeaweedFS (the stand-in for OBS) from $HOST_PY"
mkdir -p "$RUN_DIR/seaweedfs"
(cd "$ROOT" && exec "$HOST_PY" -m launcher.seaweedfs --dir "$RUN_DIR/seaweedfs" --bucket "$BUCKET") \
    >"$RUN_DIR/s3.env" 2>"$RUN_DIR/s3.log" &
S3_PID=$!
for _ in $(seq 120); do
    grep -q '^# SeaweedFS pid' "$RUN_DIR/s3.env" 2>/dev/null && break
    kill -0 "$S3_PID" 2>/dev/null || { tail -n 20 "$RUN_DIR/s3.log" >&2; fail "SeaweedFS did not start"; }
    sleep 0.5
done
grep -q '^# SeaweedFS pid' "$RUN_DIR/s3.env" || fail "SeaweedFS not ready within 60 s"
s3_var() { sed -n "s/^export $1=//p" "$RUN_DIR/s3.env"; }
S3_ENDPOINT=$(s3_var S3_ENDPOINT)

spec=$(run --rm "$IMAGE" "$PY" "$BOOT" --print-job-spec --image "$IMAGE" --flavor modelarts.vm.cpu.8u \
        --device_target CPU --config configs/cpu_demo.yaml --train.epochs=6 \
        --storage.addressing_style=path --data_url "obs://$BUCKET/data" --train_url "obs://$BUCKET/out" \
        2>"$RUN_DIR/spec.err") || { cat "$RUN_DIR/spec.err" >&2; fail "--print-job-spec failed"; }
mapfile -t job < <(printf '%s' "$spec" | python3 -c '
import json, sys
algorithm = json.load(sys.stdin)["algorithm"]
print(algorithm["command"])
for item in algorithm["parameters"]:
    print("--%s=%s" % (item["name"], item["value"]))
for channel in algorithm["inputs"] + algorithm["outputs"]:  # access_method "parameter"
    print("--%s=%s" % (channel["name"], channel["local_dir"]))')
command=${job[0]}
params=("${job[@]:1}")
[ "$command" = "exec $PY $BOOT" ] || fail "the job definition's command does not exec the boot file: $command"
say "the job's command: $command ${params[*]}"

JOB=$RUN_DIR/job
mkdir -p "$JOB/data" "$JOB/outputs" "$JOB/outputs-noexec" "$JOB/outputs-restarted"
chown -R 1000:100 "$JOB"
run --rm -v "$JOB/data:/data" "$IMAGE" "$PY" -c \
    "from core.data.synthetic import ensure_demo_dataset; ensure_demo_dataset('/data/imagefolder')" >/dev/null
job_env=(-e VC_TASK_INDEX=0 -e VC_WORKER_NUM=1 -e VC_WORKER_HOSTS=127.0.0.1 -e MA_NUM_GPUS=0
         -e MA_NUM_HOSTS=1 -e MA_VJ_NAME=mnv3-docker-test -e MA_CURRENT_INSTANCE_NAME=mnv3-docker-test-worker-0
         -e MA_CURRENT_IP=127.0.0.1 -e MA_JOB_DIR=/home/ma-user/mnv3 -e MA_LOG_DIR=/tmp/log
         -e "OBS_ENDPOINT=$S3_ENDPOINT" -e "OBS_ACCESS_KEY_ID=$(s3_var AWS_ACCESS_KEY_ID)"
         -e "OBS_SECRET_ACCESS_KEY=$(s3_var AWS_SECRET_ACCESS_KEY)")
name=mnv3-docker-test-job-$$
start_job() {  # start_job NAME OUTPUT_FOLDER COMMAND: detached, as the platform starts it
    CONTAINERS+=("$1")
    run -d --name "$1" "${job_env[@]}" -v "$JOB/data/imagefolder:$INPUT:ro" -v "$2:$OUTPUT" \
        "$IMAGE" /bin/sh -c "$3 ${params[*]}" >/dev/null
}
wait_for() {  # wait_for NAME GLOB: until a file matches (300 s), failing if the job ends first
    for _ in $(seq 600); do
        compgen -G "$2" >/dev/null && return 0
        [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$1")" = true ] \
            || { "$DOCKER" logs --tail 30 "$1" >&2; fail "$1 ended before $2 appeared"; }
        sleep 0.5
    done
    fail "no $2 within 300 s"
}
stop_job() {  # stop_job NAME GRACE_S LOG: SIGTERM to the main process, SIGKILL after GRACE_S
    local t0
    t0=$(date +%s)
    "$DOCKER" stop -t "$2" "$1" >/dev/null
    STOP_S=$(($(date +%s) - t0))
    STOP_CODE=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$1")
    "$DOCKER" logs "$1" >"$RUN_DIR/$3" 2>&1
    "$DOCKER" rm "$1" >/dev/null
}

# Before the fix, as a control: the same command without `exec` leaves /bin/sh (dash) as the
# container's main process; it ignores SIGTERM, and the job is killed when the grace period ends.
say "control: the command without exec, stopped with SIGTERM"
start_job "$name-noexec" "$JOB/outputs-noexec" "${command#exec }"
wait_for "$name-noexec" "$JOB/outputs-noexec/train.log"
main=$("$DOCKER" exec "$name-noexec" cat /proc/1/comm)
stop_job "$name-noexec" 5 job-noexec.log
[ "$main" = sh ] && [ "$STOP_CODE" = 137 ] \
    || fail "without exec: main process $main, exit $STOP_CODE (expected sh, killed: 137)"
say "control: main process $main, SIGTERM did not reach Python: killed (137) after $STOP_S s (grace 5 s)"

# 5. Stops reach Python: `docker stop` sends SIGTERM to the container's main process (what the
# platform does on a stop or pre-emption) and SIGKILL after the grace period, the boot file's own
# (--grace_s, 30 s): the job must checkpoint and exit 0 before it.
say "ModelArts-shaped job: first run, stopped with SIGTERM after its first checkpoint"
start_job "$name" "$JOB/outputs" "$command"
wait_for "$name" "$JOB/outputs/checkpoints/*.ckpt"
main=$("$DOCKER" exec "$name" cat /proc/1/comm)
[ "$main" = python ] || fail "the container's main process is $main, not the boot file's python"
stop_job "$name" "$GRACE_S" job-1.log
say "SIGTERM: the job exited with $STOP_CODE after $STOP_S s (grace ${GRACE_S} s)"
[ "$STOP_CODE" = 0 ] && [ "$STOP_S" -lt "$GRACE_S" ] \
    || { tail -n 30 "$RUN_DIR/job-1.log" >&2; fail "exit $STOP_CODE after $STOP_S s: expected 0 within the grace period"; }
python3 - "$JOB/outputs" <<'EOF' || { tail -n 30 "$RUN_DIR/job-1.log" >&2; fail "no checkpoint at the stop"; }
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
s = json.loads((out / "summary.json").read_text())
assert s["status"] == "stopped", s["status"]
manifest = json.loads((out / "checkpoints" / "latest.json").read_text())
assert manifest["step"] == s["step"], (manifest["step"], s["step"])
assert (out / "checkpoints" / manifest["key"]).is_file(), manifest["key"]
print(f"[docker-test] stopped at step {s['step']}: {manifest['key']} and its manifest written")
EOF

# 2. A restart that finds its output folder empty (the platform uploaded the output to OBS but
# did not download it again) resumes from the checkpoints there, at the manifest's step.
say "the platform's output upload: $JOB/outputs -> obs://$BUCKET/out/ (SeaweedFS)"
(cd "$ROOT" && env -u AWS_PROFILE "$HOST_PY" - "$JOB/outputs" "$BUCKET" "$S3_ENDPOINT" \
    "$(s3_var AWS_ACCESS_KEY_ID)" "$(s3_var AWS_SECRET_ACCESS_KEY)") <<'EOF' || fail "the upload failed"
import pathlib, sys
import boto3
from botocore.config import Config
out, bucket, endpoint, key, secret = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                  aws_secret_access_key=secret,
                  config=Config(s3={"addressing_style": "path"},
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required"))
files = [p for p in pathlib.Path(out).rglob("*") if p.is_file()]
for path in files:
    s3.upload_file(str(path), bucket, f"out/{path.relative_to(out).as_posix()}")
print(f"[docker-test] uploaded {len(files)} files")
EOF
say "ModelArts-shaped job: restarted with an empty output folder"
start_job "$name-restart" "$JOB/outputs-restarted" "$command"
code=$("$DOCKER" wait "$name-restart")
"$DOCKER" logs "$name-restart" >"$RUN_DIR/job-2.log" 2>&1
"$DOCKER" rm "$name-restart" >/dev/null
[ "$code" = 0 ] || { tail -n 30 "$RUN_DIR/job-2.log" >&2; fail "the restarted job exited with $code"; }
python3 - "$JOB/outputs" "$JOB/outputs-restarted" <<'EOF' || { tail -n 30 "$RUN_DIR/job-2.log" >&2; fail "the restarted run is wrong"; }
import json, pathlib, sys
first, out = map(pathlib.Path, sys.argv[1:])
manifest = json.loads((first / "checkpoints" / "latest.json").read_text())
s = json.loads((out / "summary.json").read_text())
assert s["status"] == "completed", s["status"]
assert s["start_step"] == manifest["step"], \
    f"start_step {s['start_step']}, the manifest's step {manifest['step']}: not resumed from OBS"
assert s["step"] == 6 * s["steps_per_epoch"], (s["step"], s["steps_per_epoch"])
ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
print(f"[docker-test] resumed at the manifest's step {manifest['step']} ({manifest['key']}), "
      f"completed step {s['step']}; checkpoints: {', '.join(ckpts)}")
EOF
grep -q "resuming from obs://$BUCKET/out/" "$RUN_DIR/job-2.log" \
    || { tail -n 30 "$RUN_DIR/job-2.log" >&2; fail "the restarted run's log does not say it resumed from obs://$BUCKET/out/"; }
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
