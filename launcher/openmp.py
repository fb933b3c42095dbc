"""Native runtime settings for the CPU kernels, applied before MindSpore loads libgomp and oneDNN.

Both libraries read their settings once, when they are loaded (importing MindSpore does that), so
every entry point imports this module before anything else; a value the user has set is kept.

- OMP_WAIT_POLICY=PASSIVE: the project's CPU operators (core/kernels) run their loops with
  OpenMP, and by default libgomp's idle threads spin after every parallel region, taking the
  cores from MindSpore's operators that run between two kernel calls (training several times
  slower on a shared machine). Passive threads sleep.
- ONEDNN_MAX_CPU_ISA=AVX2 (x86-64): oneDNN runs MindSpore's own CPU convolutions (those the
  project's operators do not replace, and every one with system.cpu_ops=native) and, when
  it may use AVX-512, picks code for MindSpore's plain NCHW tensors that is an order of
  magnitude slower than its AVX2 code (README "CPU speed" has the figures). ALL lifts the cap.
"""
import os
import platform

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
