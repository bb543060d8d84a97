"""How a Dense layer multiplies when the fast decode path feeds one token to one row.

XLA:CPU emits a dot whose left side is a single row as a hand-tiled
matrix-vector loop on one thread, so a batch-1 decode step reads every weight
on one core. Cut in two along the input axis, the same product is a batch of
two half-products, `[2, 1, C/2] @ [2, C/2, N]` (the kernel reshaped in place,
no copy), summed: XLA:CPU runs a dot with a batch dimension through Eigen's
threaded matmul, on all cores. On the 2-core development machine the small
preset's batch-1 step runs 1.3-1.5x faster, and still 1.1x faster while
another process keeps one core busy (a multiply + reduce formulation, also
multi-threaded, materialises the products and fell to 0.77x there). From two
rows on, the dot is threaded anyway, so the switch is for one row only, and
only while the fast path traces its batch-1 program (`one_row_products`);
training, scoring and the XLA-free signatures that TF Serving runs always use
the layer's own matmul.

Example:

>>> import keras, numpy as np
>>> layer = keras.layers.Dense(3)
>>> x = np.ones((1, 1, 4), "float32")
>>> product = layer(x)  # builds the layer: a matmul
>>> with one_row_products():
...     halves = project(layer, x)
>>> halves.shape, bool(np.allclose(halves, product, atol=1e-6))
(TensorShape([1, 1, 3]), True)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfchat.model.trace_switch import TraceSwitch

_halves = TraceSwitch()


def one_row_products():
    """While tracing under this, `project` computes [1, 1, C] inputs as two half-products."""
    return _halves.on()


def project(layer: keras.layers.Dense, x) -> tf.Tensor:
    """`layer(x)`; under `one_row_products()`, for one row of one token (even C), the same product in two halves."""
    width = x.shape[-1]
    if not _halves or tuple(x.shape[:-1]) != (1, 1) or width % 2:
        return layer(x)
    kernel = tf.cast(layer.kernel, layer.compute_dtype)  # [C, N]
    halves = tf.matmul(tf.reshape(tf.cast(x, layer.compute_dtype), [2, 1, width // 2]),
                       tf.reshape(kernel, [2, width // 2, kernel.shape[1]]))  # [2, 1, N]
    y = halves[0] + halves[1]  # [1, N]
    if layer.use_bias:
        y = y + tf.cast(layer.bias, y.dtype)
    return layer.activation(y)[None]  # [1, 1, N]
