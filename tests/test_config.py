import json

import pytest

from tfchat.config import PRESETS, GPTConfig


def test_presets_have_documented_shapes():
    small = GPTConfig.from_preset("small")
    assert (small.n_layer, small.n_embd, small.n_head, small.block_size) == (6, 384, 6, 512)
    gpt2 = GPTConfig.from_preset("gpt2")
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.block_size, gpt2.vocab_size) == (12, 768, 12, 1024, 50257)
    medium = GPTConfig.from_preset("gpt2-medium")
    assert (medium.n_layer, medium.n_embd, medium.n_head) == (24, 1024, 16)
    assert set(PRESETS) >= {"tiny", "small", "gpt2", "gpt2-medium"}


def test_json_round_trip():
    cfg = GPTConfig.from_preset("tiny", dropout=0.1)
    assert GPTConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["dropout"] == 0.1


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="tiny, tiny-modern, small, small-modern, gpt2, gpt2-medium"):
        GPTConfig.from_preset("huge")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=100, n_head=3), "divisible"),
        (dict(n_layer=0), "n_layer"),
        (dict(vocab_size=-1), "vocab_size"),
        (dict(block_size=1.5), "block_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(layer_norm_epsilon=0.0), "epsilon"),
    ],
)
def test_invalid_shapes_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kwargs)


def test_unknown_fields_rejected():
    with pytest.raises(ValueError, match="unknown GPTConfig fields: n_layers"):
        GPTConfig.from_dict({"n_layers": 3})


def test_modern_presets_are_the_tiny_and_small_shapes_with_every_option():
    for name, base in (("tiny-modern", "tiny"), ("small-modern", "small")):
        modern, gpt2 = GPTConfig.from_preset(name), GPTConfig.from_preset(base)
        assert (modern.n_layer, modern.n_embd, modern.n_head, modern.block_size) == (
            gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.block_size)
        assert (modern.position, modern.norm, modern.bias, modern.qk_norm, modern.mlp, modern.tie_embeddings) == (
            "rope", "rmsnorm", False, True, "relu2", False)
        assert modern.logit_softcap == 15.0
