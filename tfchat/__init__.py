"""tfchat: train your own small ChatGPT with TensorFlow and Keras.

The names below load lazily, so `import tfchat` (and every command's
`--help`) stays fast until TensorFlow is really needed.

Example:

>>> import tfchat
>>> tfchat.GPTConfig.from_preset("tiny").n_layer
4
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "GPTConfig": "tfchat.config",
    "PRESETS": "tfchat.config",
    "GPTBackbone": "tfchat.model",
    "CausalLM": "tfchat.model",
    "build_gpt": "tfchat.model",
    "Tokenizer": "tfchat.text.tokenizer",
    "load_tokenizer": "tfchat.text.tokenizer",
    "train_tokenizer": "tfchat.text.tokenizer",
    "LoadedModel": "tfchat.checkpoint.model_dir",
    "load_model": "tfchat.checkpoint.model_dir",
    "save_model": "tfchat.checkpoint.model_dir",
    "SamplingParams": "tfchat.inference.sampling",
    "generate_text": "tfchat.inference.generation",
    "TextClassifier": "tfchat.inference.classifier",
    "ContentFilter": "tfchat.inference.classifier",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tfchat' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
