"""OpenMP runtime setting for the CPU kernels, applied before MindSpore loads libgomp.

The project's CPU convolution kernels (core/kernels) run their loops with OpenMP. By default
libgomp's idle worker threads spin after every parallel region; between two kernel calls
MindSpore runs its own operators on the same cores, and the spinning threads steal them.
Measured on the 2-core test machine under load: training at 64 px 3-6x slower, inference
2.5x slower than with OMP_WAIT_POLICY=PASSIVE (idle threads sleep). libgomp reads the variable
once, when it is loaded (importing MindSpore does that), so every entry point imports this
module before anything else; a value the user has set is kept.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
