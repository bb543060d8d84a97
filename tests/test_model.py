import keras
import numpy as np
import pytest
import tensorflow as tf

from tfchat.model.attention import CausalSelfAttention
from tfchat.config import GPTConfig
from tfchat.model import CausalLM, GPTBackbone, build_gpt, param_count

CFG = GPTConfig(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_gpt(CFG)


def test_shapes_and_dtypes(model):
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (3, 7)).astype("int32")
    logits = model(ids)
    assert logits.shape == (3, 7, CFG.vocab_size)
    assert logits.dtype == tf.float32
    assert model.inputs[0].dtype == "int32"


def test_lm_head_is_tied(model):
    # No separate output matrix: the only [vocab, width] weight is the token table.
    vocab_shaped = [w for w in model.weights if tuple(w.shape) in {(CFG.vocab_size, CFG.n_embd), (CFG.n_embd, CFG.vocab_size)}]
    assert len(vocab_shaped) == 1
    per_block = 12 * CFG.n_embd**2 + 13 * CFG.n_embd
    expected = CFG.vocab_size * CFG.n_embd + CFG.block_size * CFG.n_embd + CFG.n_layer * per_block + 2 * CFG.n_embd
    assert model.count_params() == param_count(CFG) == expected


def test_changing_a_future_token_never_changes_earlier_logits(model):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, CFG.vocab_size, (2, 12)).astype("int32")
    base = model(ids).numpy()
    for t in (0, 5, 11):
        changed = ids.copy()
        changed[:, t] = (changed[:, t] + 7) % CFG.vocab_size
        out = model(changed).numpy()
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert np.abs(out[:, t:] - base[:, t:]).max() > 1e-6


def test_padding_mask_hides_padded_keys():
    attn = CausalSelfAttention(GPTConfig(n_embd=8, n_head=2))
    x = np.random.default_rng(2).normal(size=(1, 6, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    y = attn(x, padding_mask=mask).numpy()
    x2 = x.copy()
    x2[:, 4:] = 100.0  # values at padded positions must not matter for any query
    y2 = attn(x2, padding_mask=mask).numpy()
    np.testing.assert_allclose(y[:, :4], y2[:, :4], atol=1e-6)


def _left_padded(prompts, max_len):
    width = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), width), "int32")
    key_mask = np.ones((len(prompts), max_len), bool)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = p
        key_mask[b, : width - len(p)] = False
    positions = np.maximum(np.cumsum(key_mask, axis=1) - 1, 0).astype("int32")
    return ids, key_mask, positions


def test_cached_decoding_matches_full_forward(model):
    """Batch of 3, prompts of lengths 3/9/6, then 8 single-token steps."""
    rng = np.random.default_rng(3)
    lengths, steps, max_len = [3, 9, 6], 8, 24
    seqs = [rng.integers(0, CFG.vocab_size, n + steps).astype("int32") for n in lengths]
    reference = [model(s[None]).numpy()[0] for s in seqs]  # one full pass per row, no padding

    ids, key_mask, positions = _left_padded([s[:n] for s, n in zip(seqs, lengths)], max_len)
    width = ids.shape[1]
    step = tf.function(lambda *a: model.call_with_cache(*a))
    caches = model.init_cache(len(seqs), max_len)
    logits, caches = step(ids, positions[:, :width], caches, 0, key_mask)
    worst = 0.0
    for b, n in enumerate(lengths):
        worst = max(worst, np.abs(logits[b, -1] - reference[b][n - 1]).max())
    for t in range(steps - 1):
        new = np.array([[s[n + t]] for s, n in zip(seqs, lengths)], "int32")
        index = width + t
        logits, caches = step(new, positions[:, index : index + 1], caches, index, key_mask)
        for b, n in enumerate(lengths):
            worst = max(worst, np.abs(logits[b, 0] - reference[b][n + t]).max())
    assert worst <= 1e-4, worst


def test_cache_is_written_only_at_new_positions(model):
    caches = model.init_cache(1, 10)
    ids = np.array([[5, 6, 7]], "int32")
    _, caches = model.call_with_cache(ids, np.arange(3)[None].astype("int32"), caches, 0, np.ones((1, 10), bool))
    for c in caches:
        assert c.shape == (10, 1, 2, CFG.n_head, CFG.n_embd // CFG.n_head)
        assert np.abs(c[:3].numpy()).sum() > 0
        assert np.abs(c[3:].numpy()).sum() == 0


def test_no_xla_only_ops_in_cached_step(model):
    fn = tf.function(lambda *a: model.call_with_cache(*a))
    caches = model.init_cache(1, 8)
    graph = fn.get_concrete_function(
        tf.TensorSpec([1, None], tf.int32), tf.TensorSpec([1, None], tf.int32),
        [tf.TensorSpec(c.shape, c.dtype) for c in caches], tf.TensorSpec([], tf.int32), tf.TensorSpec([1, 8], tf.bool),
    ).graph
    ops = {op.type for op in graph.get_operations()}
    assert "TensorScatterUpdate" in ops
    assert not {t for t in ops if t.startswith("Xla")}


def test_get_config_and_keras_save_load(model, tmp_path):
    clone = CausalLM.from_config(model.get_config())
    assert len(clone.weights) == len(model.weights)
    path = str(tmp_path / "gpt.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ids = np.array([[1, 2, 3, 4]], "int32")
    np.testing.assert_allclose(loaded(ids), model(ids), atol=1e-6)


def test_mixed_precision_softmax_in_float32():
    model = build_gpt(CFG, dtype="mixed_bfloat16")
    ids = np.array([[1, 2, 3, 4]], "int32")
    logits = model(ids)
    assert logits.dtype == tf.float32
    assert model.backbone.blocks[0].attn.compute_dtype == "bfloat16"
    fn = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec([1, 4], tf.int32))
    softmax_types = {op.inputs[0].dtype for op in fn.graph.get_operations() if op.type == "Softmax"}
    assert softmax_types == {tf.float32}


def test_backbone_is_shared_by_the_head_and_configured_by_its_config(model):
    assert isinstance(model.backbone, GPTBackbone) and model.config == CFG
    ids = np.array([[1, 2, 3]], "int32")
    hidden = model.backbone(ids)
    assert hidden.shape == (1, 3, CFG.n_embd)
    # The LM head is the token table transposed: logits = hidden @ wte^T.
    table = model.backbone.embeddings.token_embedding.numpy()
    np.testing.assert_allclose(model(ids).numpy(), hidden.numpy() @ table.T, atol=1e-5)
    # Weight paths do not depend on how the model is nested.
    assert {v.path for v in model.weights} == {v.path for v in model.backbone.weights}


# ----------------------------------------------------------------------------- architecture options

OPTIONS = {
    "rope": dict(position="rope"),
    "rmsnorm-nobias": dict(norm="rmsnorm", bias=False),
    "qk-norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu"),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=15.0),
    "all": dict(position="rope", norm="rmsnorm", bias=False, qk_norm=True, mlp="relu2", tie_embeddings=False,
                logit_softcap=15.0),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_architecture_option_builds_counts_and_caches_exactly(name):
    cfg = CFG.replace(**OPTIONS[name])
    keras.utils.set_random_seed(0)
    model = build_gpt(cfg)
    assert model.count_params() == param_count(cfg)
    rng = np.random.default_rng(4)
    lengths, steps, max_len = [3, 7], 5, 16
    seqs = [rng.integers(0, CFG.vocab_size, n + steps).astype("int32") for n in lengths]
    reference = [model(s[None]).numpy()[0] for s in seqs]
    ids, key_mask, positions = _left_padded([s[:n] for s, n in zip(seqs, lengths)], max_len)
    width = ids.shape[1]
    caches = model.init_cache(len(seqs), max_len)
    logits, caches = model.call_with_cache(ids, positions[:, :width], caches, 0, key_mask)
    worst = max(np.abs(logits[b, -1] - reference[b][n - 1]).max() for b, n in enumerate(lengths))
    for t in range(steps - 1):
        new = np.array([[s[n + t]] for s, n in zip(seqs, lengths)], "int32")
        logits, caches = model.call_with_cache(new, positions[:, width + t: width + t + 1], caches, width + t, key_mask)
        worst = max(worst, max(np.abs(logits[b, 0] - reference[b][n + t]).max() for b, n in enumerate(lengths)))
    assert worst <= 1e-4, worst
    if cfg.logit_softcap:
        assert np.abs(reference[0]).max() < cfg.logit_softcap
    if not cfg.tie_embeddings:
        assert any(v.path == "lm_head/kernel" for v in model.weights)
    if cfg.position == "rope":
        assert not any("position_embedding" in v.path for v in model.weights)


def test_rope_attention_depends_on_relative_positions_only():
    from tfchat.model.rope import rotate

    rng = np.random.default_rng(5)
    q, k = (rng.normal(size=(1, 2, 4, 8)).astype("float32") for _ in range(2))
    scores = lambda offset: tf.matmul(rotate(q, tf.range(offset, offset + 4)), rotate(k, tf.range(offset, offset + 4)),
                                      transpose_b=True).numpy()  # noqa: E731
    np.testing.assert_allclose(scores(0), scores(17), atol=1e-4)
    assert np.abs(scores(0) - tf.matmul(q, k, transpose_b=True).numpy()).max() > 1e-3  # and it does rotate


def test_option_configs_survive_keras_serialization(tmp_path):
    cfg = CFG.replace(**OPTIONS["all"])
    model = build_gpt(cfg)
    path = str(tmp_path / "all.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ids = np.array([[1, 2, 3, 4]], "int32")
    np.testing.assert_allclose(loaded(ids), model(ids), atol=1e-6)
    assert loaded.config == cfg
