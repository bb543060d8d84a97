"""How a Dense layer multiplies when the fast decode path feeds one token to one row.

XLA:CPU emits a dot whose left side is a single row as a hand-tiled
matrix-vector loop on one thread, so a batch-1 decode step reads every weight
on one core. The same product written as a broadcast multiply followed by a
sum over the input axis is a reduction, which XLA:CPU fuses (no [C, N]
intermediate) and splits across all cores: on the 2-core development machine
the small preset's batch-1 step runs about 20% faster. From two rows on, the
dot calls Eigen's multi-threaded matmul and is faster than the reduction, so
the switch is for one row only, and only while the fast path traces its
batch-1 program (`one_row_products`); training, scoring and the XLA-free
signatures that TF Serving runs always use the layer's own matmul.

Example:

>>> import keras, numpy as np
>>> layer = keras.layers.Dense(3)
>>> x = np.ones((1, 1, 4), "float32")
>>> product = layer(x)  # builds the layer: a matmul
>>> with one_row_products():
...     reduced = project(layer, x)
>>> reduced.shape, bool(np.allclose(reduced, product, atol=1e-6))
(TensorShape([1, 1, 3]), True)
"""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

_state = threading.local()


@contextlib.contextmanager
def one_row_products():
    """While tracing under this, `project` computes [1, 1, C] inputs as multiply + reduce."""
    previous = getattr(_state, "on", False)
    _state.on = True
    try:
        yield
    finally:
        _state.on = previous


def project(layer: keras.layers.Dense, x) -> tf.Tensor:
    """`layer(x)`; under `one_row_products()` and for one row of one token, the same product as a reduction."""
    if not getattr(_state, "on", False) or tuple(x.shape[:-1]) != (1, 1):
        return layer(x)
    # Summed in float32 whatever the compute dtype, as the matmul accumulates.
    kernel = tf.cast(layer.kernel, tf.float32)  # [C, N]
    y = tf.reduce_sum(tf.cast(x, tf.float32)[0, 0, :, None] * kernel, axis=0)  # [N]
    if layer.use_bias:
        y = y + tf.cast(layer.bias, tf.float32)
    return layer.activation(tf.cast(y, layer.compute_dtype))[None, None]  # [1, 1, N]
