"""Model configuration: one dataclass, named presets, JSON round trip.

Example:

>>> cfg = GPTConfig.from_preset("small")
>>> (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.block_size)
(6, 384, 6, 512)
>>> GPTConfig.from_json(cfg.to_json()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import json


POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Shape and architecture of a decoder-only transformer; the defaults are GPT-2's.

    Attributes:
        vocab_size: number of token ids (tokenizer ids, special ones included).
        block_size: maximum context length.
        n_layer: transformer blocks.
        n_head: attention heads; must divide `n_embd`.
        n_embd: model width.
        dropout: dropout rate on embeddings, attention weights and residuals.
        layer_norm_epsilon: epsilon of every norm (GPT-2 uses 1e-5).
        position: "learned" (GPT-2's position table) or "rope" (rotary
            embeddings on queries and keys, no table; Su et al. 2021).
        rope_theta: RoPE base frequency.
        norm: "layernorm" (GPT-2) or "rmsnorm" (no mean subtraction, no bias).
        bias: biases in every projection and norm (GPT-2: yes).
        qk_norm: RMS-normalise queries and keys per head before attention.
        mlp: "gelu" (GPT-2, 4x width), "relu2" (ReLU squared, 4x width), or
            "swiglu" (gated, 8/3x width rounded up to a multiple of 64, about
            the same parameters as a 4x MLP).
        tie_embeddings: the LM head is the token table transposed (GPT-2); else
            a separate `lm_head` matrix.
        logit_softcap: if > 0, logits become `cap * tanh(logits / cap)`
            (Gemma 2, modded-nanogpt); 0 = off.
    """

    vocab_size: int = 8192
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    position: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    bias: bool = True
    qk_norm: bool = False
    mlp: str = "gelu"
    tie_embeddings: bool = True
    logit_softcap: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"GPTConfig.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        for name, choices in (("position", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"GPTConfig.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        for name in ("bias", "qk_norm", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig: rope needs an even head size, got {self.head_dim}")
        if not self.rope_theta > 0:
            raise ValueError(f"GPTConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        if not self.logit_softcap >= 0:
            raise ValueError(f"GPTConfig.logit_softcap must be >= 0 (0 = off), got {self.logit_softcap!r}")

    @property
    def mlp_width(self) -> int:
        """Hidden width of the MLP (per branch for SwiGLU)."""
        if self.mlp == "swiglu":
            return -(-(8 * self.n_embd // 3) // 64) * 64
        return 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a GPT config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "GPTConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named preset, optionally with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# What won the ablation in README ("A better model per CPU-minute"): rotary positions, RMSNorm without
# biases, QK-norm, ReLU² MLP, untied head, logits soft-capped at 15.
MODERN = dict(position="rope", norm="rmsnorm", bias=False, qk_norm=True, mlp="relu2", tie_embeddings=False,
              logit_softcap=15.0)

PRESETS: dict[str, dict] = {
    # Trains in a few minutes on a 2-core CPU.
    "tiny": dict(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=128),
    "tiny-modern": dict(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=128, **MODERN),
    "small": dict(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384),
    "small-modern": dict(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384, **MODERN),
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
}
