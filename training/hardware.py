"""What the machine computes fast, probed without initialising the TensorFlow runtime.

MultiWorkerMirroredStrategy must be built before the TF runtime starts
(otherwise: "Collective ops must be configured at program startup"), and
the training commands choose a precision before they build their strategy.
So nothing here creates a TF context: TPUs are recognised by their device
files or `TPU_NAME`, GPUs through `tf.config.list_physical_devices` (which
lists without initialising), CPUs by their `/proc/cpuinfo` flags.

Example:

>>> resolve_precision("fp32")
'fp32'
"""

from __future__ import annotations

import glob
import os
import re


def tpu_attached() -> bool:
    """A Cloud TPU VM (device files) or a TPU named by `TPU_NAME`."""
    return bool(os.environ.get("TPU_NAME") or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matmuls run natively on this CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 where the hardware computes it natively (TPU, Ampere+ GPU, AVX512-BF16/AMX CPU),
    fp16 on older GPUs, else fp32. Other values are returned as they are."""
    if precision != "auto":
        return precision
    if tpu_attached():
        return "bf16"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # lists devices without starting the runtime
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "bf16" if details.get("compute_capability", (0, 0)) >= (8, 0) else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def measure_peak_flops(dtype: str = "float32", size: int = 2048, seconds: float = 1.0) -> float:
    """Best matmul FLOP/s of `dtype` over ~`seconds` on the default device: the peak MFU divides by.

    Measured rather than taken from a datasheet (this starts the TF runtime: call it after the strategy exists).
    """
    import time

    import tensorflow as tf

    a = tf.cast(tf.random.normal([size, size], dtype="float32"), dtype)
    matmul = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[:1, :1], "float32")))
    matmul(a).numpy()  # warm up and trace
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        matmul(a).numpy()
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
    return best
