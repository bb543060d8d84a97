"""Pretraining and fine-tuning pipelines: packing, masks, sharding, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tfchat.data import batches as pipeline
from tfchat.data import dialogues, sources
from tfchat.text import chat_template

SEQ = 32


def contexts(n):
    return [tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n)
            for i in range(n)]


def batches(ds) -> list[dict]:
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


def stream(batch_list) -> list[int]:
    """Windows back to the token stream: window = token_ids + last target."""
    out = []
    for b in batch_list:
        for ids, tgt in zip(b["token_ids"], b["targets"]):
            out += ids.tolist() + [int(tgt[-1])]
    return out


@pytest.fixture
def docs_source(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = [f"Document {i}: " + ("The quick brown fox. " if i % 2 else "你好，世界。") * (1 + i % 7) for i in range(120)]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(docs)), encoding="utf-8")
    return str(path)


def expected_stream(tok, source, cache, **kw) -> list[int]:
    out = []
    for doc in sources.documents_dataset(source, "train", cache_dir=cache, **kw).as_numpy_iterator():
        out += [tok.eot_id] + tok.encode(doc.decode("utf-8"))
    return out


def test_pretrain_packing_loses_and_duplicates_nothing(data_tokenizer, docs_source, tmp_path):
    tok, cache = data_tokenizer, str(tmp_path / "cache")
    ds = pipeline.pretrain_dataset(docs_source, tok, SEQ, 4, repeat=False, shuffle_buffer=0, cache_dir=cache)
    got = batches(ds)
    b = got[0]
    assert b["token_ids"].shape == (4, SEQ) and b["token_ids"].dtype == np.int32
    assert b["targets"].dtype == np.int32 and b["loss_mask"].dtype == np.float32
    assert (b["loss_mask"] == 1).all()
    for b in got:  # targets are the next tokens
        np.testing.assert_array_equal(b["targets"][:, :-1], b["token_ids"][:, 1:])
    expected = expected_stream(tok, docs_source, cache)
    n_windows = len(expected) // (SEQ + 1)
    assert sum(len(b["token_ids"]) for b in got) == n_windows
    assert stream(got) == expected[: n_windows * (SEQ + 1)]  # in order, nothing lost or repeated
    assert expected.count(tok.eot_id) == sources.source_stats(docs_source, cache)["stats"]["kept"]["train"]


def test_pretrain_sharding_disjoint_and_complete(data_tokenizer, docs_source, tmp_path):
    tok, cache = data_tokenizer, str(tmp_path / "cache")
    all_docs = set(sources.documents_dataset(docs_source, cache_dir=cache).as_numpy_iterator())
    parts = []
    for ctx in contexts(2):
        docs = list(sources.documents_dataset(docs_source, cache_dir=cache, input_context=ctx).as_numpy_iterator())
        parts.append(set(docs))
        ds = pipeline.pretrain_dataset(docs_source, tok, SEQ, 2, repeat=False, shuffle_buffer=0,
                                       cache_dir=cache, input_context=ctx)
        got = stream(batches(ds))
        want = expected_stream(tok, docs_source, cache, input_context=ctx)
        assert got and got == want[: len(got)] and len(want) - len(got) <= SEQ  # this worker's documents only
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == all_docs


def test_pretrain_determinism_and_checkpoint(data_tokenizer, docs_source, tmp_path):
    tok, cache = data_tokenizer, str(tmp_path / "cache")
    make = lambda seed: pipeline.pretrain_dataset(docs_source, tok, SEQ, 4, seed=seed, cache_dir=cache)  # noqa: E731
    first = [b["token_ids"] for b in batches(make(0).take(4))]
    again = [b["token_ids"] for b in batches(make(0).take(4))]
    other = [b["token_ids"] for b in batches(make(1).take(4))]
    assert all((a == b).all() for a, b in zip(first, again))
    assert not all((a == b).all() for a, b in zip(first, other))
    # Resumable: the iterator state goes into a checkpoint.
    it = iter(make(0))
    next(it)
    _assert_resumes(it, tmp_path)


def test_pretrain_on_the_default_bundled_articles(data_tokenizer):
    tok = data_tokenizer
    for split in ("train", "validation"):
        b = next(iter(pipeline.pretrain_dataset(None, tok, 64, 8, split=split)))
        assert b["token_ids"].shape == (8, 64) and b["loss_mask"].shape == (8, 64)
        ids = b["token_ids"].numpy()
        assert ((ids >= 0) & (ids < tok.vocab_size)).all() and len(set(ids.ravel().tolist())) > 50


def test_pretrain_bad_source_errors_early(data_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        pipeline.pretrain_dataset(str(tmp_path / "missing.txt"), data_tokenizer, SEQ, 2)
    bad = tmp_path / "empty.txt"
    bad.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        pipeline.pretrain_dataset(str(bad), data_tokenizer, SEQ, 2, cache_dir=str(tmp_path / "c"))


def write_chats(path, n=40):
    rows = []
    for i in range(n):
        conv = [{"role": "system", "content": "Be kind."}] if i % 3 == 0 else []
        conv += [{"role": "user", "content": f"Question {i}? 问题{i}"},
                 {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 5)}]
        if i % 2:
            conv += [{"role": "user", "content": "More?"}, {"role": "assistant", "content": "Yes, more."}]
        rows.append({"messages": conv})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def rendered(tok, source, seq_len, split="train"):
    convs = [c for c in dialogues.load_conversations(source) if dialogues.split_of(c) == split]
    return [chat_template.render(c, tok, seq_len + 1) for c in convs]


def test_finetune_padded_examples_match_the_template(data_tokenizer, tmp_path):
    tok = data_tokenizer
    source = write_chats(tmp_path / "chats.jsonl")
    got = batches(pipeline.finetune_dataset(source, tok, 64, 4, repeat=False, shuffle_buffer=0))
    rows = [(b["token_ids"][i], b["targets"][i], b["loss_mask"][i]) for b in got for i in range(len(b["token_ids"]))]
    want = rendered(tok, source, 64)
    assert len(rows) == len(want)
    for (ids, targets, mask), (r_ids, r_mask) in zip(rows, want):
        n = len(r_ids) - 1
        assert ids[:n].tolist() == r_ids[:-1] and targets[:n].tolist() == r_ids[1:]
        assert mask[:n].tolist() == r_mask[1:]  # the mask is on the predicted (target) token
        assert (ids[n:] == tok.pad_id).all() and (mask[n:] == 0).all()  # padding never counts
        # the targets with mask 1 are exactly the replies (+ <|end|>) the template kept
        assert mask.sum() == sum(r_mask) > 0
        assert tok.decode(targets[mask == 1]) == tok.decode([t for t, m in zip(r_ids, r_mask) if m])


def test_finetune_truncates_long_conversations(data_tokenizer, tmp_path):
    tok = data_tokenizer
    source = write_chats(tmp_path / "chats.jsonl")
    b = next(iter(pipeline.finetune_dataset(source, tok, 16, 64, repeat=False, shuffle_buffer=0)))
    assert b["token_ids"].shape[1] == 16 and (b["loss_mask"].numpy().sum(axis=1) > 0).all()


def test_finetune_packing_keeps_every_token(data_tokenizer, tmp_path):
    tok = data_tokenizer
    source = write_chats(tmp_path / "chats.jsonl")
    got = batches(pipeline.finetune_dataset(source, tok, SEQ, 4, repeat=False, pack=True, shuffle_buffer=0))
    want = rendered(tok, source, SEQ)
    flat_ids = [t for ids, _ in want for t in ids]
    flat_mask = [m for _, mask in want for m in mask]
    windows, masks = [], []
    for b in got:
        for ids, tgt, mask in zip(b["token_ids"], b["targets"], b["loss_mask"]):
            windows.append(ids.tolist()[:1] + tgt.tolist())
            masks.append([None] + mask.tolist())
    # Every window but the last is full (SEQ + 1 tokens); together they are the stream.
    restored = [t for w in windows[:-1] for t in w] + windows[-1][: len(flat_ids) - (len(windows) - 1) * (SEQ + 1)]
    assert restored == flat_ids
    restored_mask = [m for w in masks for m in w[1:]]
    kept = [m for i, m in enumerate(flat_mask) if i % (SEQ + 1)]  # a window's first token is never a target
    assert restored_mask[: len(kept)] == kept and not any(restored_mask[len(kept):])


def test_finetune_split_sharding_determinism(data_tokenizer):
    tok = data_tokenizer
    valid = batches(pipeline.finetune_dataset(None, tok, 64, 8, split="validation", repeat=False))
    train_first = batches(pipeline.finetune_dataset(None, tok, 64, 8).take(2))
    assert valid and all(b["token_ids"].shape[1] == 64 for b in valid)
    again = batches(pipeline.finetune_dataset(None, tok, 64, 8).take(2))
    assert all((a["token_ids"] == b["token_ids"]).all() for a, b in zip(train_first, again))
    per_worker = []
    for ctx in contexts(2):
        rows = set()
        for b in batches(pipeline.finetune_dataset(None, tok, 64, 8, split="validation", repeat=False,
                                                   input_context=ctx)):
            rows |= {tuple(r) for r in b["token_ids"].tolist()}
        per_worker.append(rows)
    everything = {tuple(r) for b in valid for r in b["token_ids"].tolist()}
    assert not per_worker[0] & per_worker[1] and per_worker[0] | per_worker[1] == everything


def test_finetune_checkpoint(data_tokenizer, tmp_path):
    tok = data_tokenizer
    source = write_chats(tmp_path / "chats.jsonl")
    it = iter(pipeline.finetune_dataset(source, tok, SEQ, 4, pack=True))
    next(it)
    _assert_resumes(it, tmp_path)


def test_finetune_bad_source(data_tokenizer, tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"chats\.jsonl: no usable messages conversations"):
        pipeline.finetune_dataset(str(path), data_tokenizer, SEQ, 2)


def _assert_resumes(it, tmp_path):
    """The iterator's state goes into a checkpoint: restoring it replays the same batches."""
    ckpt = tf.train.Checkpoint(iterator=it)
    path = ckpt.save(str(tmp_path / "ckpt" / "data"))
    want = [next(it)["token_ids"].numpy() for _ in range(3)]
    ckpt.restore(path)
    assert all((next(it)["token_ids"].numpy() == w).all() for w in want)
