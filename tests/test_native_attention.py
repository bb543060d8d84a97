"""The fast path's native attention kernel (tfchat.model.native_attention) against XLA's attention ops."""

import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tfchat.config import GPTConfig
from tfchat.inference.slots import SlotDecoder
from tfchat.model import build_gpt, native_attention
from tfchat.model.attention import MASK_VALUE, slot_attention_mask

COMPILER = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler (g++/c++) on PATH; install g++ to run")


def _xla_attention(q, k, v, cache_index):
    """The slot branch of CausalSelfAttention without the kernel: masked dots over the whole slot."""
    mask = slot_attention_mask(cache_index, tf.shape(k)[2])
    scores = tf.where(mask, tf.matmul(q, k, transpose_b=True) * (q.shape[-1] ** -0.5), MASK_VALUE)
    return tf.matmul(tf.nn.softmax(scores, axis=-1), v)


def _native(q, k, v, cache_index):
    with native_attention.native_slot_attention():
        y = native_attention.slot_attention(q, k, v, cache_index)
    assert y is not None
    return y


@pytest.mark.parametrize("shape, positions", [
    ((3, 4, 96, 24), [0, 50, 95]),  # one thread; a head size that is not a multiple of 16
    ((2, 6, 512, 64), [511, 300]),  # enough to split across the cores
    ((1, 2, 8, 8), [20]),  # a position past the slot reads the whole slot, as XLA's clamped step does
])
def test_the_kernel_computes_the_masked_attention_of_xla(shape, positions):
    assert native_attention.available()  # a compiler is here: the kernel must build
    rng = np.random.default_rng(0)
    b, h, s, d = shape
    q, k, v = (tf.constant(rng.normal(size=size).astype("float32")) for size in ([b, h, 1, d], [b, h, s, d], [b, h, s, d]))
    index = tf.constant(positions, tf.int32)
    with tf.device("/CPU:0"):  # the kernel is an XLA:CPU custom call
        got = tf.function(_native, jit_compile=True)(q, k, v, index).numpy()
        want = tf.function(_xla_attention, jit_compile=True)(q, k, v, tf.minimum(index, s - 1)).numpy()
    assert got.shape == want.shape == (b, h, 1, d)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_outside_the_fast_path_or_for_other_dtypes_the_caller_computes_attention():
    q, k = tf.zeros([1, 2, 1, 8]), tf.zeros([1, 2, 4, 8])
    assert native_attention.slot_attention(q, k, k, tf.constant([1])) is None  # not under native_slot_attention()
    with native_attention.native_slot_attention():
        half = tf.cast(k, tf.float16)
        assert native_attention.slot_attention(tf.cast(q, tf.float16), half, half, tf.constant([1])) is None


def test_the_cpu_fast_path_uses_the_kernel_and_can_be_told_not_to():
    model = build_gpt(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16))
    assert SlotDecoder(model).native == (not tf.config.list_physical_devices("GPU"))  # XLA:GPU keeps its own
    assert not SlotDecoder(model, native=False).native
    assert not SlotDecoder(model, jit=False).native  # a custom call exists only inside XLA


def test_without_a_working_compiler_the_kernel_is_off_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TFCHAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", shutil.which("false"))
    with caplog.at_level(logging.WARNING):
        assert native_attention._load() is False
    assert "failed; the fast path uses XLA's dots" in caplog.text
    assert not list((tmp_path / "native").iterdir())  # nothing half-written left in the cache
    monkeypatch.setenv("TFCHAT_NATIVE_ATTENTION", "0")
    assert native_attention._load() is False
