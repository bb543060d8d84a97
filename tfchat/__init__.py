"""tfchat: train your own small ChatGPT with TensorFlow and Keras."""

from tfchat.config import PRESETS, GPTConfig
from tfchat.model import build_gpt, call_with_cache, init_cache
from tfchat.model_dir import LoadedModel, load_model, save_model
from tfchat.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "GPTConfig",
    "LoadedModel",
    "Tokenizer",
    "build_gpt",
    "call_with_cache",
    "init_cache",
    "load_model",
    "load_tokenizer",
    "save_model",
    "train_tokenizer",
]
