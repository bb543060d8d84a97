"""Model FLOPs and the machine's measured peak, for MFU.

MFU = achieved model FLOP/s / peak matmul FLOP/s of the same dtype, the peak
measured on this machine rather than taken from a datasheet.
"""

from __future__ import annotations

import time

import tensorflow as tf

from tfchat.config import GPTConfig


def params_excluding_positions(config: GPTConfig) -> int:
    c, l = config.n_embd, config.n_layer
    return config.vocab_size * c + l * (12 * c * c + 13 * c) + 2 * c


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12·L·C·T (PaLM appendix B, as nanoGPT)."""
    return 6 * params_excluding_positions(config) + 12 * config.n_layer * config.n_embd * seq_len


def measure_peak_flops(dtype: str = "float32", size: int = 2048, seconds: float = 1.0) -> float:
    """Best matmul FLOP/s of `dtype` over ~`seconds` on the default device."""
    a = tf.random.normal([size, size], dtype="float32")
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x)[:1, :1], "float32")))
    matmul(a).numpy()  # warm up and trace
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        matmul(a).numpy()
        best = max(best, 2 * size**3 / (time.perf_counter() - t))
    return best
