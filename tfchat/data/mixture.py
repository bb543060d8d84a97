"""Mixtures of text sources: `--data enwiki-2018:0.7,zhwiki-sample:0.3`.

A mixture is a comma-separated list of sources (any `tfchat.data.sources`
name), each with an optional weight after its last colon; weights are
relative (normalised to sum to 1) and default to 1, so
`enwiki-2018,zhwiki-sample` is half and half. A single source is never a
mixture (no comma), so `hf:NAME:CONFIG` is read as it always was; inside a
mixture a trailing `:NUMBER` is a weight, so give such a source its weight
explicitly (`hf:NAME:2:1`, config "2", weight 1).

What a weight is the share of: pretraining (`tfchat.data.batches.pretrain_dataset`)
packs each source into its own token windows and draws every window from
source i with probability w_i, so a weight is the share of training tokens
(and of held-out tokens in evaluation); `documents_dataset` draws documents
the same way (what a new tokenizer learns from). The draws come from
`tf.data.Dataset.sample_from_datasets` with the run's seed: the same seed
gives the same sequence, so a resumed run replays it, and each source is
sharded across input pipelines like a source on its own. A finite stream (the
held-out split) goes on with the other sources when one runs out.

Example:

>>> parse_mixture("enwiki-2018:0.7,zhwiki-sample:0.3")
[('enwiki-2018', 0.7), ('zhwiki-sample', 0.3)]
>>> parse_mixture("enwiki-2018,zhwiki-sample")
[('enwiki-2018', 0.5), ('zhwiki-sample', 0.5)]
>>> parse_mixture("hf:wikimedia/wikipedia:20231101.zh")
[('hf:wikimedia/wikipedia:20231101.zh', 1.0)]
"""

from __future__ import annotations

import math
import re

import tensorflow as tf

_WEIGHT = re.compile(r"^(.+):([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def is_mixture(spec: str | None) -> bool:
    """True for a comma-separated list of sources."""
    return isinstance(spec, str) and "," in spec


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """[(source, weight)] with weights summing to 1; a single source is [(spec, 1.0)].

    Raises:
        ValueError: an empty part, a weight that is not positive and finite, or a source named twice.
    """
    if not is_mixture(spec):
        return [(spec, 1.0)]
    parts = []
    for part in spec.split(","):
        part = part.strip()
        match = _WEIGHT.match(part)
        name, weight = (match.group(1).strip(), float(match.group(2))) if match else (part, 1.0)
        if not name:
            raise ValueError(f"{spec!r}: an empty source in the mixture; expected SOURCE[:WEIGHT],SOURCE[:WEIGHT]...")
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"{spec!r}: the weight of {name} must be a positive number, got {weight}")
        parts.append((name, weight))
    names = [name for name, _ in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"{spec!r}: a source appears twice in the mixture")
    total = sum(w for _, w in parts)
    return [(name, w / total) for name, w in parts]


def sample(datasets: list[tf.data.Dataset], weights: list[float], seed: int | None) -> tf.data.Dataset:
    """Draws each element from dataset i with probability weights[i] (one dataset: itself)."""
    if len(datasets) == 1:
        return datasets[0]
    return tf.data.Dataset.sample_from_datasets(datasets, weights=weights, seed=0 if seed is None else seed,
                                                stop_on_empty_dataset=False)
