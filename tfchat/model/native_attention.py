"""Attention of the fast decode path on a CPU, on all cores: a small C++ kernel called from XLA.

XLA:CPU runs each head's attention dots (`[1, D] x [D, S]`) through Eigen,
whose cost model keeps a product that small on one thread, and its thunk
executor runs the heads one after another. So at batch 1 the cache is read
at one core's bandwidth while the weights stream on all cores, and a step's
time grows with the position: on the 2-core development machine the small
preset's dots take ~0.55 ms of a ~2.9 ms step at 512 positions against
~0.1 ms at 96.

`slot_attention.cc` is that attention as an XLA custom call: softmax(q.k /
sqrt(D)) . v for one query per (row, head) over keys `0 .. cache_index[row]`,
the (row, head) pairs split across the cores (workers sleep between calls,
so they take no core from the dots around them), reading each row's filled
prefix only instead of the whole masked slot. Small calls stay on the
calling thread. It computes what the masked XLA attention computes, in
float32 (masked keys weigh exactly 0 there too); only the order of the sums
differs.

The kernel is compiled on first use (`g++`, or `$CXX`; about 7 s) against
the installed TensorFlow into the per-user cache (`tfchat.cache`), keyed by
its source, the TensorFlow version and the CPU, and moved into place only
once built.
Without a compiler, or with `TFCHAT_NATIVE_ATTENTION=0`, the fast path keeps
XLA's own dots. Only XLA programs traced under `native_slot_attention()`
use it (the fast path on a CPU); training, scoring and the XLA-free
signatures that TF Serving runs never do.

Example:

>>> import numpy as np, tensorflow as tf
>>> q, k, v = np.ones([1, 2, 1, 8], "float32"), np.ones([1, 2, 4, 8], "float32"), np.ones([1, 2, 4, 8], "float32")
>>> slot_attention(q, k, v, tf.constant([2])) is None  # outside native_slot_attention(): the caller's own ops
True
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import tensorflow as tf

from tfchat import atomic
from tfchat.cache import default_cache_dir
from tfchat.model.trace_switch import TraceSwitch

SOURCE = Path(__file__).with_name("slot_attention.cc")
TARGET = "tfchat_slot_attention"
_native = TraceSwitch()
_lock = threading.Lock()
_loaded: dict = {}  # "ok": whether the kernel loaded in this process, once tried


def native_slot_attention():
    """While tracing under this, `slot_attention` calls the kernel (when it could be built)."""
    return _native.on()


def available() -> bool:
    """Whether the kernel is built and loaded in this process (building it on the first call)."""
    with _lock:
        if "ok" not in _loaded:
            _loaded["ok"] = _load()
        return _loaded["ok"]


def slot_attention(q, k, v, cache_index) -> tf.Tensor | None:
    """Attention of q [B, H, 1, D] over k, v [B, H, S, D] at keys 0 .. cache_index[b] -> [B, H, 1, D];
    None (the caller computes it) unless traced under `native_slot_attention()` with the kernel loaded
    and float32 inputs of static B, H, D."""
    if not _native or q.dtype != tf.float32 or k.dtype != tf.float32:
        return None
    batch, heads, _, dim = q.shape
    if None in (batch, heads, dim) or not available():
        return None
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops  # XLA's own op set: only inside jit_compile

    y = gen_xla_ops.xla_custom_call_v2(
        operands=[q[:, :, 0], k, v, tf.cast(cache_index, tf.int32), tf.shape(k, out_type=tf.int32)],
        call_target_name=TARGET, backend_config="", has_side_effect=False,
        result_dtypes=[tf.float32], result_shapes=[tf.TensorShape([batch, heads, dim])],
    )[0]  # [B, H, D]
    return y[:, :, None]


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def _load() -> bool:
    if os.environ.get("TFCHAT_NATIVE_ATTENTION", "1") == "0":
        return False
    if platform.system() != "Linux":  # the kernel's threads use Linux's affinity mask and futexes
        return False
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        logging.info("native attention: no C++ compiler (g++) on PATH; the fast path uses XLA's dots")
        return False
    tf_dir = tf.sysconfig.get_lib()
    flags = ["-O3", "-march=native", "-shared", "-fPIC", "-w", *tf.sysconfig.get_compile_flags(), "-std=c++20",
             f"-L{tf_dir}", "-l:libtensorflow_cc.so.2", "-l:libtensorflow_framework.so.2", f"-Wl,-rpath,{tf_dir}",
             "-Wl,--no-undefined"]
    key = hashlib.sha256("\0".join([SOURCE.read_text(), tf.__version__, tf_dir, cxx, _cpu(), *flags]).encode())
    path = Path(default_cache_dir()) / "native" / f"slot_attention-{key.hexdigest()[:16]}.so"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.remove_stale_temps(str(path.parent), path.name)
            logging.info("native attention: compiling %s (once per machine and TensorFlow version)", SOURCE.name)
            tmp = atomic.temp_path(str(path))
            try:
                done = subprocess.run([cxx, str(SOURCE), *flags, "-o", tmp], capture_output=True, text=True,
                                      timeout=300)
                if done.returncode != 0:
                    logging.warning("native attention: %s failed; the fast path uses XLA's dots:\n%s", cxx,
                                    done.stderr[-2000:])
                    return False
                os.replace(tmp, path)  # a killed build leaves a temp that the next build sweeps, never a bad .so
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        except (OSError, subprocess.TimeoutExpired) as e:
            logging.warning("native attention: could not build the kernel (%s); the fast path uses XLA's dots", e)
            return False
    try:
        ctypes.CDLL(str(path))  # its static initialiser registers the custom call target with XLA
    except OSError as e:
        logging.warning("native attention: could not load %s (%s); the fast path uses XLA's dots", path, e)
        return False
    return True
