"""Shared by the benchmarks: the machine description printed with every measurement."""

from __future__ import annotations

import json
import os
import platform


def machine() -> dict:
    import tensorflow as tf

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": gpus,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "platform": platform.platform(),
    }


def emit(record: dict) -> None:
    """One JSON object per measurement on stdout, with the machine it ran on."""
    print(json.dumps({**record, "machine": machine()}), flush=True)
