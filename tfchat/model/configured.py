"""`@configured`: `get_config` / `from_config` for a Keras layer or model built from a `GPTConfig` alone.

The model's layers take the whole config (as nanoGPT's do) instead of a
growing list of arguments; this stores it as plain JSON-able data.

Example:

>>> import keras
>>> from tfchat.config import GPTConfig
>>> @configured
... class Probe(keras.layers.Layer):
...     def __init__(self, config, **kwargs):
...         super().__init__(**kwargs)
...         self.config = config
>>> Probe.from_config(Probe(GPTConfig(n_layer=2)).get_config()).config.n_layer
2
"""

from __future__ import annotations

from tfchat.config import GPTConfig


def configured(cls):
    base_get_config = cls.get_config

    def get_config(self):
        return {**base_get_config(self), "config": self.config.to_dict()}

    def from_config(klass, config):
        config = dict(config)
        return klass(GPTConfig.from_dict(config.pop("config")), **config)

    cls.get_config, cls.from_config = get_config, classmethod(from_config)
    return cls
