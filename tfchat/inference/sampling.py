"""Sampling settings: `SamplingParams`, their defaults and validation, in one place.

Every caller that generates (the library, the SavedModel signatures, the
server's REST and OpenAI routes, the terminal chat, the web chat) takes its
defaults from `SamplingParams()` and its checks from `check_sampling`, so a
request is judged the same way everywhere (the graph-side twin of the
checks, for tensors, is `tfchat.inference.generation.graph_checks`). A model
directory may store the defaults its trainer recommends (`tfchat.json`
"sampling"); the server and the chat CLI start from those. Importing this
module does not import TensorFlow (clients use it).

Example:

>>> SamplingParams().temperature
0.8
>>> SamplingParams(top_k=2**40)
Traceback (most recent call last):
...
ValueError: top_k must be an integer in 0 .. 2147483647 (0 = off), got 1099511627776
>>> SamplingParams.greedy(max_new_tokens=8).temperature
0.0
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
import sys

import numpy as np

INT32_MAX = 2**31 - 1
# Classifier-free guidance scales of tagged replies (tfchat.inference.guidance): 0 = untagged, 1 = off.
MAX_GUIDANCE = 30.0


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_tensor(x) -> bool:
    tf = sys.modules.get("tensorflow")  # no TensorFlow imported: no tensors either
    return tf is not None and tf.is_tensor(x)


def _f32(x) -> float:
    """`x` as the float32 the graph computes with: 1e300 is inf there, 1e-300 is 0, and so is a subnormal
    such as 1e-40 (TF's CPU kernels flush them to zero)."""
    with np.errstate(over="ignore", under="ignore"):
        y = float(np.float32(x))
    return 0.0 if abs(y) < np.finfo(np.float32).tiny else y


def check_sampling(
    max_new_tokens=None, temperature=None, top_k=None, top_p=None, seed=None, *, max_new_limit: int | None = None,
    guidance=None,
) -> None:
    """Raises ValueError naming the first bad Python value; None and tensors are skipped (tensors are
    checked in the graph, see `tfchat.inference.generation.graph_checks`).

    Args:
        max_new_limit: the most new tokens the context leaves room for.
    """
    if max_new_tokens is not None and not _is_tensor(max_new_tokens):
        high = INT32_MAX if max_new_limit is None else max_new_limit
        if not _is_int(max_new_tokens) or not 1 <= max_new_tokens <= high:
            room = " (what the context leaves room for)" if max_new_limit is not None else ""
            raise ValueError(f"max_new_tokens must be an integer in 1 .. {high}{room}, got {max_new_tokens!r}")
    if temperature is not None and not _is_tensor(temperature):
        if not _is_real(temperature) or not math.isfinite(_f32(temperature)) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and not _is_tensor(top_k):
        if not _is_int(top_k) or not 0 <= top_k <= INT32_MAX:
            raise ValueError(f"top_k must be an integer in 0 .. {INT32_MAX} (0 = off), got {top_k!r}")
    if top_p is not None and not _is_tensor(top_p):
        if not _is_real(top_p) or not (math.isfinite(top_p) and 0 < _f32(top_p) <= 1):
            raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {top_p!r}")
    if seed is not None and not _is_tensor(seed):
        if not _is_int(seed) or not -(2**31) <= seed <= INT32_MAX:
            raise ValueError(f"seed must be an integer in {-(2**31)} .. {INT32_MAX}, got {seed!r}")
    if guidance is not None and not _is_tensor(guidance):
        if not _is_real(guidance) or not (math.isfinite(guidance) and 0 <= _f32(guidance) <= MAX_GUIDANCE):
            raise ValueError(f"guidance must be a number in 0 .. {MAX_GUIDANCE:g} (1 = off), got {guidance!r}")


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, validated on creation.

    Attributes:
        max_new_tokens: most tokens to generate (the stop token included).
        temperature: softmax temperature; 0 = greedy.
        top_k: keep the k most likely tokens; 0 = all.
        top_p: nucleus mass in (0, 1]; 1 = all.
        seed: the stateless-noise seed; None = a fresh random one per request
            (`resolved()`).
        guidance: classifier-free guidance of a tagged chat reply
            (`tfchat.inference.guidance`): 1 = off, above 1 the tags steer harder
            (each guided row also decodes its untagged twin).
    """

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    seed: int | None = None
    guidance: float = 1.0

    def __post_init__(self):
        check_sampling(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed,
                       guidance=self.guidance)
        for name in ("temperature", "top_p", "guidance"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def greedy(cls, max_new_tokens: int = 64) -> "SamplingParams":
        """Deterministic decoding: argmax at every step."""
        return cls(max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0)

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    def resolved(self) -> "SamplingParams":
        """The same settings with a concrete seed (a random one when `seed` is None)."""
        return self if self.seed is not None else self.replace(seed=random.randrange(2**31))

    def check_fits(self, max_new_limit: int) -> "SamplingParams":
        """Raises ValueError when max_new_tokens exceeds what the context leaves room for."""
        check_sampling(self.max_new_tokens, max_new_limit=max_new_limit)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None, base: "SamplingParams | None" = None) -> "SamplingParams":
        """`base` (default: the defaults) with the keys of `d` replaced; unknown keys are an error."""
        base = base or cls()
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}")
        return base.replace(**d)
