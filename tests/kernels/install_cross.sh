#!/bin/sh
# Installs what tests/core/nn/test_kernel_variants.py needs to test the kernels' aarch64 (NEON) path on
# an x86-64 machine: the aarch64 cross compiler (Debian package g++-aarch64-linux-gnu, which
# brings the aarch64 libc, libstdc++ and libgomp under /usr/aarch64-linux-gnu) and qemu-user
# (qemu-aarch64). Idempotent: nothing is installed, and apt is not touched, when both commands
# are already on PATH. Debian/Ubuntu; root, or sudo when there is one.
#   sh tests/kernels/install_cross.sh
set -eu

need=""
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need="$need g++-aarch64-linux-gnu"
command -v qemu-aarch64 >/dev/null 2>&1 || need="$need qemu-user"
if [ -z "$need" ]; then
    echo "install_cross: aarch64-linux-gnu-g++ and qemu-aarch64 present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install_cross: need root (or sudo) to install:$need" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_cross: no apt-get here; install by hand:$need" >&2
    exit 1
fi
echo "install_cross: installing$need"
$SUDO apt-get update -qq
# shellcheck disable=SC2086  # $need is a list of package names
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1 || {
    echo "install_cross: installed$need but aarch64-linux-gnu-g++ or qemu-aarch64 is still missing" >&2
    exit 1
}
echo "install_cross: done"
