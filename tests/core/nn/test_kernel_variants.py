"""The kernel library (core/kernels/cpu_ops.cc) on every ISA code path, without MindSpore
(issue 23, items 3 and 4): the standalone C++ harness tests/kernels/parity.cc calls every exported
entry point on random inputs of the network's shapes and compares with a double-precision
reference. It is compiled together with the kernel source once per variant this host executes
(x86-64: -march=x86-64-v4 with AVX-512, -march=x86-64-v3 with AVX2 + FMA, -march=x86-64 always),
each with -DMNV3_NO_MULTI_ISA so the whole library is that ISA's code, and once for aarch64 with
the cross compiler, run under qemu-user (NEON: the path of Ascend hosts' CPUs). Builds go to a
temporary directory. A missing cross compiler or qemu fails (never skips): install them with
tests/kernels/install_cross.sh. Two tests show the harness can fail: errors injected into every
output are all caught, and a kernel compiled with a wrong hard-swish fails the hard-swish cases."""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from core import native
from core.native import machine

from tests.paths import REPO
KERNEL_DIR = REPO / "core" / "kernels"
KERNEL_SOURCE = KERNEL_DIR / "cpu_ops.cc"
HARNESS = REPO / "tests" / "kernels" / "parity.cc"
FLAGS = ["-DMNV3_NO_MULTI_ISA", "-O3", "-fopenmp", "-std=c++17"]

CROSS_CXX = "aarch64-linux-gnu-g++"
CROSS_OBJDUMP = "aarch64-linux-gnu-objdump"
QEMU = "qemu-aarch64"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
INSTALL_HINT = ("install the Debian packages g++-aarch64-linux-gnu and qemu-user (`apt-get install -y "
                "g++-aarch64-linux-gnu qemu-user`, or `sh tests/kernels/install_cross.sh`)")
EM_X86_64, EM_AARCH64 = 62, 183

COMPILE_TIMEOUT = 600
RUN_TIMEOUT = 300  # the whole harness takes well under 1 s natively, about 5 s under qemu
QEMU_TIMEOUT = 900

# each build's compiler flags (as core/kernels/build.sh gives them) and the harness's ISA line
VARIANT_FLAGS = {"avx512": (["-march=x86-64-v4"], "AVX-512"), "avx2": (["-march=x86-64-v3"], "AVX2"),
                 "baseline": (["-march=x86-64"], "baseline"), "neon": ([], "aarch64 NEON"),
                 "generic": ([], "")}


def native_variants() -> list:
    """(name, compiler flags, ISA line) of every build this host executes, best first (the
    runner's own detection, core.native.host_variants)."""
    return [(name, *VARIANT_FLAGS[name]) for name in native.host_variants()]


NATIVE = native_variants()
FIRST = NATIVE[0][0]
BASELINE = NATIVE[-1][0]


def run(cmd, timeout, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)


def compile_and_link(cxx: str, arch_flags: list, out_dir: Path, kernel_source: Path = KERNEL_SOURCE,
                     harness_object: Path = None) -> dict:
    """Harness and kernel compiled side by side (two processes), then linked: the binary and the
    two object files (`harness_object`: one already compiled with the same flags)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = {"harness": (HARNESS, harness_object or out_dir / "parity.o"),
               "kernel": (kernel_source, out_dir / "kernel.o")}
    procs = {}
    for name, (src, obj) in objects.items():
        if name == "harness" and harness_object:
            continue
        cmd = [cxx, *arch_flags, *FLAGS, f"-I{KERNEL_DIR}", "-c", str(src), "-o", str(obj)]
        procs[name] = (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True))
    errors = []
    for name, (cmd, proc) in procs.items():
        _, err = proc.communicate(timeout=COMPILE_TIMEOUT)
        if proc.returncode != 0:
            errors.append(f"compiling the {name} failed ({' '.join(cmd)}):\n{err[-6000:]}")
    if errors:
        pytest.fail("\n".join(errors))
    binary = out_dir / "parity"
    cmd = [cxx, *arch_flags, "-fopenmp", objects["harness"][1], objects["kernel"][1], "-o", binary, "-ldl"]
    link = run(cmd, COMPILE_TIMEOUT)
    assert link.returncode == 0, f"linking failed ({' '.join(map(str, cmd))}):\n{link.stderr[-6000:]}"
    return {"binary": binary, "kernel_object": objects["kernel"][1],
            "harness_object": objects["harness"][1]}


class Builds:
    """One build per variant, made on first use in the session's temporary directory."""

    def __init__(self, root: Path):
        self.root = root
        self.made = {}

    def native(self, variant: str) -> dict:
        if variant not in self.made:
            (_, arch_flags, _), = [v for v in NATIVE if v[0] == variant]
            self.made[variant] = compile_and_link("g++", arch_flags, self.root / variant)
        return self.made[variant]

    def aarch64(self) -> dict:
        """The aarch64 build: cross-compiled (run under qemu), or native on an aarch64 host."""
        if "aarch64" not in self.made:
            if machine() == "aarch64":
                self.made["aarch64"] = compile_and_link("g++", [], self.root / "aarch64")
                return self.made["aarch64"]
            missing = [tool for tool in (CROSS_CXX, QEMU) if shutil.which(tool) is None]
            if missing or not Path(AARCH64_SYSROOT, "lib").is_dir():
                pytest.fail(f"{', '.join(missing) or AARCH64_SYSROOT} missing: the aarch64 (NEON) kernel "
                            f"path cannot be tested; {INSTALL_HINT}")
            self.made["aarch64"] = compile_and_link(CROSS_CXX, [], self.root / "aarch64")
        return self.made["aarch64"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return Builds(tmp_path_factory.mktemp("kernel_variants"))


def harness_env(threads: int) -> dict:
    # PASSIVE: idle OpenMP workers sleep (as launcher/openmp.py sets for the runner); spinning
    # ones make the harness 10-20x slower on a loaded 2-core machine
    return dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")


SUMMARY = re.compile(
    r"^parity: (\d+) cases, (\d+) entry points called, ([\d.]+) s: (\d+) passed, (\d+) failed$", re.M)


def summary(proc: subprocess.CompletedProcess) -> dict:
    m = SUMMARY.search(proc.stdout)
    assert m, f"no summary line (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    cases, entries, secs, passed, failed = m.groups()
    return {"cases": int(cases), "entries": int(entries), "seconds": float(secs), "passed": int(passed),
            "failed": int(failed)}


def failures(proc: subprocess.CompletedProcess) -> list:
    return [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]


def assert_parity(proc: subprocess.CompletedProcess, what: str, isa: str) -> dict:
    bad = failures(proc) + [line for line in proc.stderr.splitlines() if line.startswith("CRASH")]
    assert proc.returncode == 0 and not bad, (
        f"{what}: kernel parity failed (exit {proc.returncode}):\n" + "\n".join(bad[:60])
        + f"\n--- stdout tail ---\n{proc.stdout[-3000:]}\n--- stderr tail ---\n{proc.stderr[-3000:]}")
    first = proc.stdout.splitlines()[0]
    assert isa in first, f"{what}: the harness was not compiled for {isa}: {first}"
    s = summary(proc)
    assert s["failed"] == 0 and s["passed"] == s["cases"] >= 200, s
    assert s["entries"] == len(HARNESS_ENTRIES), s
    return s


def _harness_entries() -> list:
    text = HARNESS.read_text()
    block = text[text.index("#define KERNEL_ENTRIES(X)"):text.index("// Weak:")]
    return sorted(set(re.findall(r"X\((\w+)\)", block)))


HARNESS_ENTRIES = _harness_entries()


def exported_entry_points(kernel_object: Path) -> set:
    """extern "C" functions the kernel object defines (unmangled global text symbols)."""
    nm = run(["nm", "--defined-only", "-g", kernel_object], 120)
    assert nm.returncode == 0, nm.stderr
    names = set()
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "T" and not parts[2].startswith("_"):
            names.add(parts[2])
    return names


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[4] == 2, f"{path} is not a 64-bit ELF file"
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def disassembly(objdump: str, path: Path) -> str:
    proc = run([objdump, "-d", "--no-show-raw-insn", path], 300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("variant", [v[0] for v in NATIVE])
def test_every_entry_point_matches_the_reference_on_each_isa_this_host_runs(builds, variant):
    """AVX-512, AVX2 and baseline x86-64 builds, each the whole library at that ISA (vector widths
    16, 8 and 4 floats), with one thread and with three (uneven work splits); then with the
    buffers page-aligned after a guard page (accesses before a buffer's start)."""
    (_, _, isa), = [v for v in NATIVE if v[0] == variant]
    build = builds.native(variant)
    if machine() == "x86_64":  # the object really is that ISA's code
        asm = disassembly("objdump", build["kernel_object"])
        zmm, ymm = len(re.findall(r"%zmm\d", asm)), len(re.findall(r"%ymm\d", asm))
        expect = {"avx512": zmm > 0, "avx2": ymm > 0 and zmm == 0,
                  "baseline": ymm == 0 and zmm == 0}[variant]
        assert expect, f"{variant} kernel object: {zmm} zmm and {ymm} ymm operands"
    for threads, options in ((1, []), (3, []), (2, ["--front-guard"])):
        start = time.monotonic()
        proc = run([build["binary"], *options], RUN_TIMEOUT, env=harness_env(threads))
        s = assert_parity(proc, f"{variant}, {threads} thread(s) {' '.join(options)}", isa)
        print(f"{variant} ({threads} thread(s) {' '.join(options)}): {s['cases']} cases "
              f"in {time.monotonic() - start:.2f} s")


def test_every_entry_point_matches_the_reference_on_aarch64_under_qemu(builds):
    """The NEON path (4-float vectors; Ascend hosts' CPUs), cross-compiled and run under
    qemu-user with the aarch64 libraries of the cross toolchain."""
    build = builds.aarch64()
    binary = build["binary"]
    assert elf_machine(binary) == EM_AARCH64, f"{binary} is not an aarch64 executable"
    assert elf_machine(build["kernel_object"]) == EM_AARCH64
    if shutil.which(CROSS_OBJDUMP):  # vector code: NEON fused multiply-adds on .4s lanes
        asm = disassembly(CROSS_OBJDUMP, build["kernel_object"])
        assert re.search(r"fmla\s+v\d+\.4s", asm), "no NEON vector multiply-add in the aarch64 kernel"
    cmd = [binary] if machine() == "aarch64" else [QEMU, "-L", AARCH64_SYSROOT, binary]
    for options in ([], ["--small", "--front-guard"]):
        start = time.monotonic()
        proc = run(cmd + options, QEMU_TIMEOUT, env=harness_env(2))
        s = assert_parity(proc, f"aarch64 under qemu {' '.join(options)}", "aarch64 NEON")
        print(f"aarch64 under qemu (2 threads {' '.join(options)}): {s['cases']} cases "
              f"in {time.monotonic() - start:.2f} s")


def test_the_harness_covers_every_exported_entry_point(builds):
    """A new entry point of the library without a parity case fails here."""
    exported = exported_entry_points(builds.native(BASELINE)["kernel_object"])
    listed = run([builds.native(BASELINE)["binary"], "--list-entries"], 60).stdout.split()
    assert sorted(listed) == HARNESS_ENTRIES
    assert exported == set(HARNESS_ENTRIES), (
        f"exported but not tested: {sorted(exported - set(HARNESS_ENTRIES))}; "
        f"tested but not exported: {sorted(set(HARNESS_ENTRIES) - exported)}")


def test_the_harness_catches_an_error_in_any_output(builds):
    """--inject puts one element of every output of every case 100x its tolerance off (the
    last element: a vector tail in most shapes); each comparing case must then fail."""
    binary = builds.native(FIRST)["binary"]
    clean = run([binary], RUN_TIMEOUT, env=harness_env(2))
    rejects = len(re.findall(r"^PASS  reject ", clean.stdout, re.M))
    compared = summary(clean)["cases"] - rejects
    injected = run([binary, "--inject"], RUN_TIMEOUT, env=harness_env(2))
    assert injected.returncode == 1, injected.stdout[-3000:]
    s = summary(injected)
    assert s["failed"] == compared and s["passed"] == rejects, s
    assert len(failures(injected)) == compared


def test_the_harness_catches_a_wrong_kernel(builds, tmp_path):
    """The kernel compiled with hard-swish's 6 replaced by 5 (in the activation, its gradient and
    squeeze-excite's hard-sigmoid): exactly the hard-swish and squeeze-excite cases fail, on
    every entry point that has a hard-swish, and the rest pass."""
    source = KERNEL_SOURCE.read_text()
    mutated, count = re.subn(r"(?<![\w.])6\.f\b", "5.f", source)
    assert count >= 3, "the kernel no longer writes hard-swish's constant as 6.f: update this mutation"
    mutant = tmp_path / "depthwise_conv_mutant.cc"
    mutant.write_text(mutated)
    (name, arch_flags, _) = NATIVE[-1]
    build = compile_and_link("g++", arch_flags, tmp_path / f"mutant-{name}", kernel_source=mutant,
                             harness_object=builds.native(name)["harness_object"])
    proc = run([build["binary"]], RUN_TIMEOUT, env=harness_env(2))
    assert proc.returncode == 1, proc.stdout[-3000:]
    failed = [line.split()[1] for line in failures(proc)]
    assert failed and all(e.endswith("Hswish") or e == "SqueezeExcite" for e in failed), failed
    hswish_entries = {e for e in HARNESS_ENTRIES if e.endswith("Hswish")} | {"SqueezeExcite"}
    assert set(failed) == hswish_entries
    assert re.search(r"^PASS  DepthwiseFwdBiasRelu ", proc.stdout, re.M)


@pytest.mark.parametrize("where", ["--back-guard", "--front-guard"])
def test_the_harness_catches_an_access_outside_a_buffer(builds, where):
    """The guard pages around every buffer work: a read past the end (before the start, with
    --front-guard) stops the harness with the case named."""
    options = ["--guard-selftest"] + (["--front-guard"] if where == "--front-guard" else [])
    proc = run([builds.native(FIRST)["binary"], *options], RUN_TIMEOUT, env=harness_env(1))
    assert proc.returncode == 4, (proc.returncode, proc.stdout, proc.stderr)
    assert "CRASH  guard self-test: SIGSEGV" in proc.stderr


@pytest.mark.parametrize("variant", [v[0] for v in NATIVE])
def test_the_libraries_build_sh_made_pass_the_harness(builds, variant):
    """The libraries the runner loads (core/kernels/libmnv3_cpu_ops.<isa>.so, built by
    build.sh with its own flags), not only the harness's own compiles of the source."""
    (_, _, isa), = [v for v in NATIVE if v[0] == variant]
    library = native.variant_library("libmnv3_cpu_ops", variant)
    assert library.exists(), f"{library} not built: run 'make kernels'"
    proc = run([builds.native(variant)["binary"], "--lib", str(library)], RUN_TIMEOUT, env=harness_env(2))
    assert_parity(proc, f"{library.name} --lib", isa)
