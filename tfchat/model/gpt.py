"""The GPT as a whole: `build_gpt(config)`, the heads a model directory can hold, and size and cost from the config.

`HEADS` names each head on the backbone: "lm" (`CausalLM`, what
`build_gpt` builds) and "reward" (`RewardModel`). `build_model(config, head)`
builds either; `head_of(model)` names a built one (the model directory
stores it in `tfchat.json`).

Example:

>>> import numpy as np
>>> from tfchat.config import GPTConfig
>>> cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
>>> model = build_gpt(cfg)
>>> model(np.array([[1, 2, 3]], "int32")).shape
TensorShape([1, 3, 50])
>>> param_count(cfg) == model.count_params()
True
"""

from __future__ import annotations

from tfchat.config import GPTConfig
from tfchat.model.backbone import GPTBackbone
from tfchat.model.heads import CausalLM, RewardModel

HEADS = {"lm": CausalLM, "reward": RewardModel}


def build_gpt(config: GPTConfig, dtype: str | None = None) -> CausalLM:
    """The language model for `config`: int32 ids [B, T] -> float32 logits [B, T, vocab].

    Args:
        config: the model shape.
        dtype: a Keras dtype policy name ("float32", "mixed_bfloat16",
            "mixed_float16"); default: the global policy.
    """
    return CausalLM(GPTBackbone(config, dtype=dtype))


def build_model(config: GPTConfig, head: str = "lm", dtype: str | None = None):
    """The model with `head` ("lm" or "reward") on a new backbone for `config`."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    return HEADS[head](GPTBackbone(config, dtype=dtype))


def head_of(model) -> str:
    """The `HEADS` name of a built model."""
    for name, cls in HEADS.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"{type(model).__name__} is not a tfchat head ({', '.join(HEADS)})")


def param_count(config: GPTConfig, exclude_positions: bool = False) -> int:
    """Parameters of `build_gpt(config)`; `exclude_positions` leaves out the position table (nanoGPT's count)."""
    c, b = config.n_embd, int(config.bias)
    norm = c * (1 + b) if config.norm == "layernorm" else c
    hidden = config.mlp_width
    mlp_in = hidden * (2 if config.mlp == "swiglu" else 1)
    attn = c * 3 * c + 3 * c * b + c * c + c * b
    mlp = c * mlp_in + mlp_in * b + hidden * c + c * b
    positions = config.block_size * c if config.position == "learned" and not exclude_positions else 0
    head = 0 if config.tie_embeddings else config.vocab_size * c
    return config.vocab_size * c + positions + config.n_layer * (2 * norm + attn + mlp) + norm + head


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12·L·C·T (PaLM appendix B, as nanoGPT)."""
    return 6 * param_count(config, exclude_positions=True) + 12 * config.n_layer * config.n_embd * seq_len
