"""Shared helpers of the benchmark suite: machine description, medians, JSON and README table.

Benchmarks are not tests: they assert no time. Every figure of a run is measured in that run on
the same machine, and peers are reported as ratios to the project's figure.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
PEERS_VENV = Path(os.environ.get("MNV3_PEERS_VENV", BENCH_DIR / ".venv-peers"))
PEERS_PY = PEERS_VENV / "bin" / "python"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    from core import native
    return native.cpu_model()


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                                if f in flags)
    except OSError:
        pass
    return ""


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("mindspore", "numpy", "onnxruntime", "mindcv"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent is fine
            pass
    peer = peer_versions()
    out.update(peer)
    return out


_peer_versions = None


def peer_versions() -> dict:
    global _peer_versions
    if _peer_versions is None:
        _peer_versions = {}
        if PEERS_PY.exists():
            try:
                text = subprocess.run([str(PEERS_PY), "-c", "import torch, torchvision, json; print(json.dumps("
                                       "{'torch (peers)': torch.__version__, 'torchvision (peers)': "
                                       "torchvision.__version__}))"], capture_output=True, text=True,
                                      timeout=120).stdout
                _peer_versions = json.loads(text.strip().splitlines()[-1])
            except Exception:  # noqa: BLE001
                pass
    return _peer_versions


# The instruction-set build of the project's CPU operators the benchmark's project sides run:
# `--isa avx2` on an AVX-512 host reproduces what an AVX2 host runs. Children read it from
# this variable (ms_models.py, bench_eval's project side) or get system.kernel_isa (local.py).
ISA_ENV = "MNV3_BENCH_KERNEL_ISA"


def add_isa_argument(parser) -> None:
    parser.add_argument("--isa", default="auto", choices=("auto", "avx512", "avx2", "baseline", "neon"),
                        help="instruction-set build of the project's CPU operators (default: the "
                             "best this CPU executes); avx2 or baseline reproduce those hosts")


# What the other libraries of a run read to cap their own instruction set, so the peers and
# MindSpore's own operators run their AVX2 (or SSE) paths too: oneDNN (MindSpore's and
# PyTorch's convolutions), PyTorch's ATen kernels, MKL. onnxruntime's MLAS has no such switch:
# it runs its AVX-512 kernels on an AVX-512 host whatever --isa says (a harder peer than it is
# on an AVX2 host).
PEER_ISA_ENV = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "baseline": {"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41",
                 "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def set_isa(isa: str) -> str:
    """Force the project's sides onto build `isa` (checked here: one line if this CPU cannot run
    it), and cap MindSpore's and the peers' libraries to the same instruction set (PEER_ISA_ENV);
    returns the build the project runs. Printed with the CPU at the start of every benchmark."""
    from core import native
    variants = native.host_variants()
    if isa != "auto" and isa not in variants:
        raise SystemExit(f"error: --isa {isa}: this CPU ({cpu_model()}) executes {', '.join(variants)}")
    os.environ[ISA_ENV] = isa
    if isa != variants[0]:
        os.environ.update(PEER_ISA_ENV.get(isa, {}))
    used = variants[0] if isa == "auto" else isa
    print(f"host: {cpu_model()} ({cpu_flags() or 'no AVX2'}), {os.cpu_count()} cores; "
          f"project CPU operators: {used} build", file=sys.stderr)
    return used


def apply_isa() -> None:
    """In a child process, before its model is built: the build the parent chose."""
    isa = os.environ.get(ISA_ENV, "auto")
    if isa != "auto":
        from core.nn import cpu_ops
        cpu_ops.select_variant(isa)


def kernel_isa() -> str:
    from core import native
    isa = os.environ.get(ISA_ENV, "auto")
    return native.host_variants()[0] if isa == "auto" else isa


def machine() -> dict:
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "kernel_isa": kernel_isa(),
            "isa_caps": {k: os.environ[k] for k in PEER_ISA_ENV.get(kernel_isa(), {}) if k in os.environ},
            "cores": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "versions": versions(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def median(values) -> float:
    return float(statistics.median(values))


def ratio(project: float, peer: float, higher_is_better: bool = True) -> float | None:
    """project / peer for throughputs (peer / project for times): > 1 means the project is ahead."""
    if not project or not peer:
        return None
    return round(project / peer if higher_is_better else peer / project, 3)


def need_peers() -> bool:
    if PEERS_PY.exists():
        return True
    print(f"note: {PEERS_PY} not found; PyTorch/torchvision peers skipped. Create it with\n"
          f"  python3.11 -m venv {PEERS_VENV} && {PEERS_VENV}/bin/pip install torch==2.14.1 "
          f"torchvision==0.29.1 pillow numpy", file=sys.stderr)
    return False


def child_env(extra: dict | None = None) -> dict:
    """The environment for every process a benchmark starts: os.environ (what Python saw at
    start-up plus its own changes), not the inherited C environment. Importing
    mindspore.dataset calls setenv("OMP_NUM_THREADS", "1") in C; a child started with the
    inherited environment (subprocess's default) then runs every OpenMP kernel on one thread:
    measured, the project's eval 240 instead of 350 img/s, its network alone 277 instead of 465."""
    env = dict(os.environ)
    env.update(extra or {})
    return env


def peer_env() -> dict:
    """child_env() for a peer (PyTorch, torchvision): without the oneDNN cap the project's
    launchers set for MindSpore (launcher/openmp.py), unless --isa put it there for every side."""
    env = child_env()
    if kernel_isa() not in PEER_ISA_ENV:
        for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
            env.pop(name, None)
    return env


def run_peer(script: str, args: list[str], timeout: int = 1800, env: dict | None = None) -> dict:
    """Run bench/peers/<script> in the peers venv; it prints one JSON line last. `env`: the
    environment (default: peer_env())."""
    cmd = [str(PEERS_PY), str(BENCH_DIR / "peers" / script)] + [str(a) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=peer_env() if env is None else env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_result(name: str, result: dict) -> Path:
    """bench/results/<name>.json; a run forced onto a narrower build than the host's best
    (--isa avx2) writes <name>-<isa>.json beside it."""
    from core import native
    if kernel_isa() != native.host_variants()[0]:
        name = f"{name}-{kernel_isa()}"
        result = dict(result, command=result.get("command", "") + f" --isa {kernel_isa()}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = dict(result, machine=machine())
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    update_readme()
    return path


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(key), 3 if "ratio" in key else 1)
                                       for key, _ in columns) + " |")
    return "\n".join(lines)


ROW_COLUMNS = [("what", "benchmark"), ("unit", "unit"), ("project", "project"), ("peer", "peer"),
               ("peer_value", "peer figure"), ("ratio", "project / peer")]


def legacy_rows(name: str, data: dict) -> list[dict]:
    """Rows for the staging/packed benchmarks, which write their own JSON layout."""
    results = data.get("results") or {}
    rows = []
    if name.startswith("staging") and "ours_cold" in results:
        ours = results["ours_cold"]["seconds"]
        for peer in ("s5cmd", "aws_s3_sync", "boto3_download_loop"):
            if peer in results:
                rows.append({"what": "stage from S3 (SeaweedFS), cold", "unit": "s (lower is better)",
                             "project": ours, "peer": peer, "peer_value": results[peer]["seconds"],
                             "ratio": ratio(ours, results[peer]["seconds"], higher_is_better=False)})
        if "ours_resync_unchanged" in results:
            rows.append({"what": "re-sync, unchanged", "unit": "s", "project":
                         results["ours_resync_unchanged"]["seconds"], "peer": "-"})
    if name.startswith("packed"):
        pairs = [("stage_packed", "stage_imagefolder", "stage packed shards vs per-file ImageFolder", "s (lower is better)"),
                 ("stage_packed", "stage_one_object", "stage packed shards vs one big object", "s (lower is better)")]
        for ours, peer, what, unit in pairs:
            if ours in results and peer in results:
                rows.append({"what": what, "unit": unit, "project": results[ours]["seconds"], "peer": peer,
                             "peer_value": results[peer]["seconds"],
                             "ratio": ratio(results[ours]["seconds"], results[peer]["seconds"], False)})
        for w in ("1w", "2w"):
            a, b = results.get(f"pipeline_packed_{w}"), results.get(f"pipeline_imagefolder_{w}")
            if a and b:
                rows.append({"what": f"train pipeline from packed shards, {w[0]} worker(s)", "unit": "images/s",
                             "project": a["images_per_s"], "peer": "ImageFolder pipeline",
                             "peer_value": b["images_per_s"], "ratio": ratio(a["images_per_s"], b["images_per_s"])})
    return rows


def update_readme() -> Path:
    """Rebuild bench/results/README.md from every results/*.json that has `rows`."""
    parts = ["# Benchmark results", "",
             "Written by the `bench/` scripts (`python bench/run_all.py` runs them all). Each row "
             "compares the project's figure with a peer measured in the same run on the same "
             "machine; `project / peer` > 1 means the project is ahead (for times, the inverse "
             "ratio is used so the same reading holds). Medians of several repetitions. "
             "Benchmarks assert nothing.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        rows = data.get("rows") or legacy_rows(path.stem, data)
        if not rows:
            continue
        m = data.get("machine", {})
        command = data.get("command") or f"python bench/bench_{path.stem.split('-')[0]}.py"
        parts += [f"## {data.get('title', path.stem)} (`{path.name}`)", "",
                  f"Command: `{command}`", "",
                  table(rows, ROW_COLUMNS), ""]
        if data.get("notes"):
            parts += [f"Notes: {data['notes']}", ""]
        if m and "cpu" not in m:  # benchmarks with their own machine record
            parts += [f"Machine: {m}", ""]
        elif m:
            v = ", ".join(f"{k} {val}" for k, val in m.get("versions", {}).items())
            build = f"; the project's CPU operators: {m['kernel_isa']} build" if m.get("kernel_isa") else ""
            caps = ", ".join(f"{k}={val}" for k, val in (m.get("isa_caps") or {}).items())
            parts += [f"Machine: {m.get('cpu')} ({m.get('cpu_flags')}), {m.get('cores')} cores{build}"
                      + (f" (every side capped: {caps})" if caps else "")
                      + f", load average {m.get('load_average')} at {m.get('time')}; {v}.", ""]
    path = RESULTS / "README.md"
    path.write_text("\n".join(parts))
    return path


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
