"""Shared test fixtures (data layer)."""

from __future__ import annotations

import os

import pytest

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Albedo is the fraction of light reflected.",
    "Anarchism is a political philosophy. History\n\nIn the 19th century, many thinkers wrote.",
    "Hello! How are you today? I am fine, thank you. What can I do for you?",
    "你好，世界。今天天气很好。我们去公园散步吧！维基百科是一个自由的百科全书。",
    "User: what is 2 + 2? Assistant: 2 + 2 = 4.",
]


@pytest.fixture(scope="session", autouse=True)
def _tfchat_cache_dir(tmp_path_factory):
    """Points the tfchat cache at a temp dir: tests never write to ~/.cache."""
    old = os.environ.get("TFCHAT_CACHE_DIR")
    os.environ["TFCHAT_CACHE_DIR"] = str(tmp_path_factory.mktemp("tfchat-cache"))
    yield os.environ["TFCHAT_CACHE_DIR"]
    if old is None:
        os.environ.pop("TFCHAT_CACHE_DIR", None)
    else:
        os.environ["TFCHAT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def data_tokenizer():
    """A 400-id SentencePiece tokenizer trained on a few sentences (English + Chinese)."""
    from tfchat.text.tokenizer import train_tokenizer

    return train_tokenizer(_CORPUS * 20, vocab_size=400)


@pytest.fixture(scope="session")
def moderation_classifier(tmp_path_factory):
    """A moderation classifier trained on `tests.fixtures.separable_examples` (insults and threats are flagged)."""
    from tests.fixtures import tiny_moderation

    return tiny_moderation(tmp_path_factory.mktemp("moderation"))


# Commands run in this process (`main([...])`) leave file descriptor 2 to pytest's capture.
os.environ.setdefault("TFCHAT_RAW_STDERR", "1")


@pytest.fixture(scope="session")
def tagged_export(tmp_path_factory):
    """(LoadedModel, version dir): a tiny chat model with control tags, exported once for the serving tests of tags."""
    from tests.fixtures import tiny_tagged_export

    return tiny_tagged_export(tmp_path_factory.mktemp("tagged"))
