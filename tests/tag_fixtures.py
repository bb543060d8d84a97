"""A tiny chat model trained (in name) with control tags, exported once per test session and shared by the serving
tests of tags (export, C++ loader, server, OpenAI SDK, terminal and web chat)."""

from __future__ import annotations

VOCABULARY = {"style": ["happy", "sad"], "topic": ["music", "sports"]}
_made: dict = {}  # id(tmp_path_factory) -> (factory, result): one export per test session


def tiny_tagged_export(tmp_path_factory):
    """(LoadedModel, version dir) of a tiny random chat model like `tests.fixtures.tiny_export`'s, with VOCABULARY
    as its tags; made once per session (`tmp_path_factory` is the same object for every module) under its temp dir."""
    made = _made.get(id(tmp_path_factory))
    if made is not None and made[0] is tmp_path_factory:
        return made[1]
    _made[id(tmp_path_factory)] = (tmp_path_factory, _export(tmp_path_factory))
    return _made[id(tmp_path_factory)][1]


def _export(tmp_path_factory):
    import keras

    from serving.exporter import export
    from tests.fixtures import SERVING_TEXTS
    from tfchat.checkpoint.model_dir import load_model, save_model
    from tfchat.config import GPTConfig
    from tfchat.model import build_gpt
    from tfchat.text.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tagged")
    tok = train_tokenizer(SERVING_TEXTS, vocab_size=400)
    assert len(tok.special.controls) >= 4  # the reserved <|control_i|> ids the tags map to
    keras.utils.set_random_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)
    save_model(str(root / "model"), build_gpt(cfg), tok, cfg, metadata={"tags": VOCABULARY})
    loaded = load_model(str(root / "model"))
    assert loaded.tags is not None and loaded.tags.to_dict() == VOCABULARY
    return loaded, export(loaded, str(root / "tfchat"))


def items(tags: dict) -> list[str]:
    """{name: value} as a `chat_tagged` row of "name=value" items."""
    return [f"{name}={value}" for name, value in tags.items()]
