#!/bin/sh
# Build the project's native CPU libraries next to their sources; `make kernels` and the
# Dockerfile both call this.
#   libmnv3_cpu_ops.<isa>.so  the CPU operators (convs, BN + activation, pooling, squeeze-
#                         excite, normalisation, fused inference) as MindSpore custom operators
#                         (core/nn/cpu_ops.py), one library per instruction set: x86-64 gets
#                         avx512 (x86-64-v4), avx2 (x86-64-v3) and baseline (x86-64) builds, each
#                         with vectors of its own register width; aarch64 one neon build. The
#                         runner loads the best one the CPU executes (system.kernel_isa).
#   libmnv3_jpeg.so       training-image crop-decode + augmentation (core/data/jpeg_augment.py),
#                         linked against the SIMD libjpeg-turbo that Pillow ships and loads
# Usage: core/kernels/build.sh [PYTHON]   (PYTHON: the interpreter that has Pillow installed)
# A library newer than its source is kept (no compiler needed). A library that cannot be built
# (no C++ compiler, no Pillow libjpeg) is skipped with a warning: the runner then uses nn.Conv2d
# and MindSpore's dataset ops (system.cpu_ops=auto, data.decoder=auto); results are the
# same, only slower. With MNV3_REQUIRE_KERNELS=1 (`make test`, CI) that is an error instead:
# the tests of the native code paths must run. A failed compile is always an error.
# A compiler without GCC's x86 function multiversioning (target_clones) gets a plain build of
# libmnv3_jpeg.so. A failed compile prints the compiler's messages.
set -u
PY=${1:-python3}
CXX=${CXX:-g++}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REQUIRE=${MNV3_REQUIRE_KERNELS:-0}

status=0
# cannot LIBRARY REASON: a library that cannot be built here
cannot() {
    if [ "$REQUIRE" = 1 ]; then
        echo "error: $1 not built: $2 (MNV3_REQUIRE_KERNELS=1: the native code paths must be tested)"
        status=1
    else
        echo "warning: $1 not built: $2 (the runner falls back: slower CPU convs and decoding)"
    fi
}

fresh() { [ -f "$1" ] && [ ! "$1" -ot "$2" ] && [ ! "$1" -ot "$HERE/multi_isa.h" ] && [ ! "$1" -ot "$HERE/build.sh" ]; }
have_compiler() { command -v "$CXX" >/dev/null 2>&1; }

# compile OUTPUT SOURCE [extra arguments...]: the multi-ISA build, else the plain one;
# false when nothing was built
compile() {
    out=$1 src=$2
    shift 2
    if ! have_compiler; then
        cannot "$out" "C++ compiler $CXX not found (install g++, or set CXX)"
        return 1
    fi
    log=$(mktemp)
    if "$CXX" -O3 -fPIC -shared -std=c++17 -o "$out" "$src" "$@" 2>"$log"; then :
    elif grep -q "target_clones\|target specific option" "$log" \
            && "$CXX" -O3 -fPIC -shared -std=c++17 -DMNV3_NO_MULTI_ISA -o "$out" "$src" "$@" 2>"$log"; then :
    else
        cat "$log" >&2
        echo "error: compiling $out failed (the compiler's messages are above)"
        rm -f "$log"; status=1; return 1
    fi
    rm -f "$log"
    echo "built $out"
}

# The instruction-set variants of the CPU operators for the compiler's target, as isa:flag.
variants() {
    case $("$CXX" -dumpmachine 2>/dev/null) in
        x86_64*|amd64*) echo "avx512:-march=x86-64-v4 avx2:-march=x86-64-v3 baseline:-march=x86-64" ;;
        aarch64*|arm64*) echo "neon:" ;;
        *) echo "generic:" ;;
    esac
}

rm -f "$HERE/libmnv3_cpu_ops.so" "$HERE"/libmnv3_depthwise*.so  # earlier builds: one multi-ISA library, old names
if ! have_compiler; then
    cannot "$HERE/libmnv3_cpu_ops.so" "C++ compiler $CXX not found (install g++, or set CXX)"
else
    for spec in $(variants); do
        lib=$HERE/libmnv3_cpu_ops.${spec%%:*}.so
        # shellcheck disable=SC2086  # one flag or none
        fresh "$lib" "$HERE/cpu_ops.cc" || compile "$lib" "$HERE/cpu_ops.cc" -fopenmp -Wno-psabi ${spec#*:} || :
    done
fi

lib=$HERE/libmnv3_jpeg.so
# also rebuilt when it no longer loads, e.g. after a Pillow upgrade renamed its libjpeg
loads() { (cd "$ROOT" && "$PY" -c "from core import jpeg_augment as j; raise SystemExit(not j.available())") 2>/dev/null; }
if ! fresh "$lib" "$HERE/jpeg_augment.cc" || ! loads; then
    jpeg=$(cd "$ROOT" && "$PY" -c "from core.data.jpeg_augment import jpeg_library_file as f; print(f() or '')" 2>/dev/null)
    if [ -z "$jpeg" ]; then
        cannot "$lib" "Pillow's libjpeg not found with $PY"
    else
        compile "$lib" "$HERE/jpeg_augment.cc" -I"$HERE/third_party/libjpeg-turbo" \
            -L"$(dirname "$jpeg")" -l:"$(basename "$jpeg")" && echo "  (libjpeg: $jpeg)"
    fi
fi
exit $status
