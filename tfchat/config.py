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


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Shape of a GPT-2 style decoder.

    Attributes:
        vocab_size: number of token ids (tokenizer ids, special ones included).
        block_size: maximum context length (number of learned positions).
        n_layer: transformer blocks.
        n_head: attention heads; must divide `n_embd`.
        n_embd: model width.
        dropout: dropout rate on embeddings, attention weights and residuals.
        layer_norm_epsilon: LayerNorm epsilon (GPT-2 uses 1e-5).
    """

    vocab_size: int = 8192
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

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


PRESETS: dict[str, dict] = {
    # Trains in a few minutes on a 2-core CPU.
    "tiny": dict(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_embd=128),
    "small": dict(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384),
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
}
