#!/bin/sh
# Build the project's native CPU libraries next to their sources; `make kernels` and the
# Dockerfile both call this.
#   libmnv3_depthwise.so  kxk convolutions as MindSpore custom operators (core/fast_conv.py)
#   libmnv3_jpeg.so       training-image crop-decode + augmentation (core/jpeg_augment.py),
#                         linked against the SIMD libjpeg-turbo that Pillow ships and loads
# Usage: core/kernels/build.sh [PYTHON]   (PYTHON: the interpreter that has Pillow installed)
# A library newer than its source is kept. Without a C++ compiler, or without Pillow's libjpeg,
# a library is skipped with a warning: the runner then uses nn.Conv2d and MindSpore's dataset
# ops (system.depthwise_impl=auto, data.decoder=auto); results are the same, only slower.
# A compiler without GCC's x86 function multiversioning (target_clones) gets a plain build.
set -u
PY=${1:-python3}
CXX=${CXX:-g++}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$(dirname "$HERE")")

if ! command -v "$CXX" >/dev/null 2>&1; then
    echo "warning: $CXX not found; native libraries not built (slower CPU convs and decoding)"
    exit 0
fi

fresh() { [ -f "$1" ] && [ ! "$1" -ot "$2" ] && [ ! "$1" -ot "$HERE/multi_isa.h" ]; }

# compile OUTPUT SOURCE [extra arguments...]: the multi-ISA build, else the plain one
compile() {
    out=$1 src=$2
    shift 2
    "$CXX" -O3 -fPIC -shared -std=c++17 -o "$out" "$src" "$@" 2>/dev/null \
        || "$CXX" -O3 -fPIC -shared -std=c++17 -DMNV3_NO_MULTI_ISA -o "$out" "$src" "$@" \
        || return 1
    echo "built $out"
}

status=0
lib=$HERE/libmnv3_depthwise.so
fresh "$lib" "$HERE/depthwise_conv.cc" || compile "$lib" "$HERE/depthwise_conv.cc" -fopenmp || status=1

lib=$HERE/libmnv3_jpeg.so
# also rebuilt when it no longer loads, e.g. after a Pillow upgrade renamed its libjpeg
loads() { (cd "$ROOT" && "$PY" -c "from core import jpeg_augment as j; raise SystemExit(not j.available())") 2>/dev/null; }
if ! fresh "$lib" "$HERE/jpeg_augment.cc" || ! loads; then
    jpeg=$(cd "$ROOT" && "$PY" -c "from core.jpeg_augment import jpeg_library_file as f; print(f() or '')" 2>/dev/null)
    if [ -z "$jpeg" ]; then
        echo "warning: Pillow's libjpeg not found with $PY; $lib not built (MindSpore decodes instead)"
    else
        compile "$lib" "$HERE/jpeg_augment.cc" -I"$HERE/third_party/libjpeg-turbo" \
            -L"$(dirname "$jpeg")" -l:"$(basename "$jpeg")" && echo "  (libjpeg: $jpeg)" || status=1
    fi
fi
exit $status
