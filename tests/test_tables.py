"""Table sources: Parquet files and Hugging Face datasets (offline, on sets the tests build), as pretraining
documents and as conversations; held-out split, sharding, resume, column mapping and the errors."""

from __future__ import annotations

import json
import os
import sys

# Before `datasets` is first imported: no test may reach the Hub.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfchat.data import batches as pipeline  # noqa: E402
from tfchat.data import dialogues, sources, tables  # noqa: E402
from tfchat.data.io import split_of  # noqa: E402
from tfchat.data.tables import Columns  # noqa: E402

SEQ = 32


def contexts(n):
    return [tf.distribute.InputContext(num_input_pipelines=n, input_pipeline_id=i, num_replicas_in_sync=n)
            for i in range(n)]


def wiki_rows(n=160):
    """Wikipedia-shaped rows (id, url, title, text), English and Chinese, with an empty and a null text."""
    rows = []
    for i in range(n):
        body = ("The quick brown fox jumps. " if i % 2 else "维基百科是一个自由的百科全书。") * (1 + i % 6)
        rows.append({"id": str(1000 + i), "url": f"https://example.org/{i}", "title": f"Article {i}",
                     "text": f"Article {i}\n\n{body}" if i % 5 == 0 else body})
    rows[3]["text"], rows[4]["text"] = "   ", None
    return rows


def expected_documents(rows, split, text="text"):
    out = set()
    for r in rows:
        if isinstance(r[text], str) and r[text].strip() and split_of(r["id"]) == split:
            body = r[text].strip()
            out.add(body if body.startswith(r["title"]) else f"{r['title']}\n\n{body}")
    return out


def write_parquet(path, rows, row_group_size=16):
    pq.write_table(pa.Table.from_pylist(rows), str(path), row_group_size=row_group_size)
    return str(path)


def docs(source, split="train", **kw) -> list[str]:
    return [d.decode("utf-8") for d in sources.documents_dataset(source, split, **kw).as_numpy_iterator()]


@pytest.fixture(scope="module")
def rows():
    return wiki_rows()


@pytest.fixture
def parquet_glob(tmp_path, rows):
    write_parquet(tmp_path / "wiki-00000.parquet", rows[:100])
    write_parquet(tmp_path / "wiki-00001.parquet", rows[100:])
    return str(tmp_path / "wiki-*.parquet")


@pytest.fixture
def hf(tmp_path, monkeypatch):
    """The `datasets` library, offline, with its cache in a temp dir."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return datasets


# ------------------------------------------------------------- documents


def test_parquet_documents_split_layout_and_skips(parquet_glob, rows):
    train, valid = docs(parquet_glob), docs(parquet_glob, "validation")
    assert set(train) == expected_documents(rows, "train") and len(train) == len(set(train))
    assert set(valid) == expected_documents(rows, "validation") and valid
    assert "Article 0\n\n维基百科是一个自由的百科全书。" in train + valid  # the title, once
    assert "Article 5\n\nArticle 5" not in "".join(train + valid)
    assert len(train) + len(valid) == len(rows) - 2  # the blank and the null text are skipped


def test_every_backend_reads_the_same_documents(hf, tmp_path, parquet_glob, rows):
    hf.Dataset.from_list(rows).save_to_disk(str(tmp_path / "disk"))
    hf.DatasetDict({"train": hf.Dataset.from_list(rows), "test": hf.Dataset.from_list(rows[:10])}).save_to_disk(
        str(tmp_path / "dict"))
    for split in ("train", "validation"):
        want = expected_documents(rows, split)
        assert set(docs(f"hf:{tmp_path / 'disk'}", split)) == want
        assert set(docs(f"hf:{tmp_path / 'dict'}@train", split)) == want
        assert set(docs(f"hf:{tmp_path / 'dict'}", split)) == want  # train is the default split
    # A local dataset folder (prepared as Arrow), and the same folder streamed: one shard per file.
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        write_parquet(folder / f"part-{i}.parquet", rows[i::3])
    assert set(docs(f"hf:{folder}", "validation")) == expected_documents(rows, "validation")
    stream = tables.StreamTable("s", hf.load_dataset(str(folder), split="train", streaming=True), "streamed")
    assert stream.num_chunks == 3
    for split in ("train", "validation"):
        got = [d.decode() for c in range(3) for batch in tables.documents(stream, c, "text", split) for d in batch]
        assert sorted(got) == sorted(expected_documents(rows, split))


def test_text_column(tmp_path, rows):
    renamed = [{"id": r["id"], "title": r["title"], "content": r["text"]} for r in rows]
    path = write_parquet(tmp_path / "c.parquet", renamed)
    assert set(docs(path, text_column="content")) == expected_documents(renamed, "train", "content")
    jsonl = tmp_path / "c.jsonl"  # the same flag names a JSONL field
    jsonl.write_text("".join(json.dumps({"id": r["id"], "content": r["content"]}, ensure_ascii=False) + "\n"
                             for r in renamed if r["content"]), encoding="utf-8")
    assert len(docs(str(jsonl), text_column="content", cache_dir=str(tmp_path / "cache"))) > 100


def test_table_sharding_is_disjoint_and_complete(parquet_glob, tmp_path, rows):
    one_group = write_parquet(tmp_path / "one.parquet", rows, row_group_size=1000)  # fewer chunks than workers
    for source in (parquet_glob, one_group):
        everything = docs(source)
        for n in (2, 3):
            parts = [set(docs(source, input_context=ctx)) for ctx in contexts(n)]
            assert all(parts) and sum(map(len, parts)) == len(everything)
            assert set().union(*parts) == set(everything)


def test_pretrain_pipeline_on_parquet_is_deterministic_and_resumes(data_tokenizer, parquet_glob):
    tok = data_tokenizer
    make = lambda seed: pipeline.pretrain_dataset(parquet_glob, tok, SEQ, 4, seed=seed)  # noqa: E731
    first = [b["token_ids"].numpy() for b in make(0).take(6)]
    again = [b["token_ids"].numpy() for b in make(0).take(6)]
    other = [b["token_ids"].numpy() for b in make(1).take(6)]
    assert all((a == b).all() for a, b in zip(first, again))
    assert not all((a == b).all() for a, b in zip(first, other))
    # Resuming replays the pipeline: skipping the steps done continues exactly where it stopped.
    resumed = [b["token_ids"].numpy() for b in make(0).skip(4).take(2)]
    assert all((a == b).all() for a, b in zip(first[4:], resumed))


def test_pretrain_pipeline_packs_table_documents_like_any_source(data_tokenizer, parquet_glob):
    tok = data_tokenizer
    expected = []
    for doc in docs(parquet_glob):
        expected += [tok.eot_id] + tok.encode(doc)
    got = []
    for b in pipeline.pretrain_dataset(parquet_glob, tok, SEQ, 4, repeat=False, shuffle_buffer=0):
        for ids, tgt in zip(b["token_ids"].numpy(), b["targets"].numpy()):
            got += ids.tolist() + [int(tgt[-1])]
    n = len(expected) // (SEQ + 1) * (SEQ + 1)
    assert got == expected[:n]


# ---------------------------------------------------------- conversations


SHAPES = [
    ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello"}]}, None,
     [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]),
    ({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                        {"from": "gpt", "value": "A"}, {"from": "human", "value": "dangling"}]}, None,
     [("system", "S"), ("user", "Q"), ("assistant", "A")]),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Part one, "}, {"type": "text", "text": "two"}]},
                   {"role": "assistant", "content": "ok"}]}, None, [("user", "Part one, two"), ("assistant", "ok")]),
    ({"messages": json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])}, None,
     [("user", "q"), ("assistant", "a")]),
    ({"instruction": "Translate.", "input": "你好", "output": "Hello"}, None,
     [("user", "Translate.\n\n你好"), ("assistant", "Hello")]),
    ({"instruction": "Name a colour.", "input": "", "output": "Blue"}, None,
     [("user", "Name a colour."), ("assistant", "Blue")]),
    ({"instruction": "Summarise.", "context": "Long text.", "response": "Short."}, None,
     [("user", "Summarise.\n\nLong text."), ("assistant", "Short.")]),
    ({"prompt": "2+2?", "completion": "4"}, None, [("user", "2+2?"), ("assistant", "4")]),
    ({"question": "Capital of France?", "answer": "Paris"}, None, [("user", "Capital of France?"), ("assistant", "Paris")]),
    ({"query": "Why?", "reply": "Because.", "messages": "ignored"}, Columns(prompt="query", response="reply"),
     [("user", "Why?"), ("assistant", "Because.")]),
    ({"dialog": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}, Columns(messages="dialog"),
     [("user", "u"), ("assistant", "a")]),
]


@pytest.mark.parametrize("row,columns,want", SHAPES)
def test_row_shapes(row, columns, want):
    shape = dialogues.row_shape(row.keys(), columns)
    messages = dialogues.messages_from_row(row, shape)
    assert [(m["role"], m["content"]) for m in messages] == want
    assert dialogues.validate(messages) is None


def test_conversations_from_parquet_save_to_disk_and_jsonl(hf, tmp_path):
    rows = [row for row, _, _ in SHAPES[:2] + SHAPES[4:5]]
    want = [[{"role": r, "content": c} for r, c in w] for _, _, w in SHAPES]
    write_parquet(tmp_path / "openai.parquet", [SHAPES[0][0]] * 3)
    assert dialogues.load_conversations(str(tmp_path / "openai.parquet")) == [want[0]] * 3
    hf.Dataset.from_list([SHAPES[1][0]] * 2).save_to_disk(str(tmp_path / "sharegpt"))
    assert dialogues.load_conversations(f"hf:{tmp_path / 'sharegpt'}") == [want[1]] * 2
    write_parquet(tmp_path / "alpaca.parquet", [SHAPES[4][0], SHAPES[5][0]])
    assert dialogues.load_conversations(str(tmp_path / "alpaca.parquet")) == want[4:6]
    explicit = tmp_path / "pairs.parquet"
    write_parquet(explicit, [SHAPES[9][0]])
    assert dialogues.load_conversations(str(explicit), columns=SHAPES[9][1]) == [want[9]]
    jsonl = tmp_path / "mixed.jsonl"  # JSONL records in any of the shapes
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert dialogues.load_conversations(str(jsonl)) == [want[0], want[1], want[4]]
    assert dialogues.is_dialogue_source(str(tmp_path / "alpaca.parquet"))
    assert dialogues.is_dialogue_source(f"hf:{tmp_path / 'sharegpt'}")


def test_finetune_batches_from_a_table_equal_those_from_jsonl(data_tokenizer, tmp_path):
    convs = [[{"role": "user", "content": f"Question {i}? 问题{i}"},
              {"role": "assistant", "content": f"Answer {i}. " * (1 + i % 4)}] for i in range(60)]
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
    path = write_parquet(tmp_path / "chats.parquet", [{"conversations": [
        {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in c]} for c in convs])
    for split, kw in (("train", {"pack": True}), ("validation", {})):
        a = list(pipeline.finetune_dataset(str(jsonl), data_tokenizer, SEQ, 4, split=split, repeat=False, **kw))
        b = list(pipeline.finetune_dataset(path, data_tokenizer, SEQ, 4, split=split, repeat=False, **kw))
        assert a and len(a) == len(b)
        for x, y in zip(a, b):
            assert all((x[k].numpy() == y[k].numpy()).all() for k in x)


# ----------------------------------------------------------------- errors


def test_error_missing_column_names_the_columns(parquet_glob, data_tokenizer):
    with pytest.raises(ValueError, match=r"no column 'body' \(columns: id, url, title, text\).*--text-column"):
        pipeline.pretrain_dataset(parquet_glob, data_tokenizer, SEQ, 2, text_column="body")
    with pytest.raises(ValueError, match=r"column 'id' holds int64, not text"):
        docs(write_parquet(os.path.join(os.path.dirname(parquet_glob), "ints.parquet"), [{"id": 1, "text": "x"}]),
             text_column="id")
    with pytest.raises(ValueError, match=r"no conversation columns \(columns: id, url, title, text\)"):
        dialogues.load_conversations(parquet_glob)
    with pytest.raises(ValueError, match=r"no column 'reply' \(columns: id, url, title, text\)"):
        dialogues.load_conversations(parquet_glob, columns=Columns(prompt="title", response="reply"))


def test_error_unknown_config_and_split(hf, tmp_path):
    folder = tmp_path / "multi"
    for config in ("20231101.en", "20231101.zh"):
        (folder / config).mkdir(parents=True)
        write_parquet(folder / config / "train-0.parquet", wiki_rows(20))
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/*.parquet\n"
        for c in ("20231101.en", "20231101.zh")) + "---\n")
    assert len(docs(f"hf:{folder}:20231101.zh", "validation") + docs(f"hf:{folder}:20231101.zh")) == 18
    with pytest.raises(ValueError, match=r"no config '20231101.eng' \(configs: 20231101.en, 20231101.zh\)"):
        docs(f"hf:{folder}:20231101.eng")
    with pytest.raises(ValueError, match=r"needs a config, .*:CONFIG with one of: 20231101.en, 20231101.zh"):
        docs(f"hf:{folder}")
    with pytest.raises(ValueError, match=r"no split 'test' \(splits: train\)"):
        docs(f"hf:{folder}:20231101.en@test")


def test_error_offline_without_a_local_copy(hf):
    with pytest.raises(ConnectionError, match=r"hf:nobody/no-such-set:en: not in the local Hugging Face cache and "
                                              r"offline mode is on .*save_to_disk directory"):
        docs("hf:nobody/no-such-set:en")


def test_error_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(RuntimeError, match=r"pip install 'tfchat\[hf\]'"):
        docs("hf:some/set-only-hf-can-read")


def test_error_other_bad_tables(hf, tmp_path):
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("not parquet")
    with pytest.raises(ValueError, match=r"fake\.parquet: not a readable Parquet file"):
        docs(str(not_parquet))
    tiny = write_parquet(tmp_path / "tiny.parquet", [{"id": "1000", "text": "one document"}])
    assert split_of("1000") == "train"
    with pytest.raises(ValueError, match=r"tiny\.parquet: no documents in the 'validation' split"):
        docs(tiny, "validation")
    hf.Dataset.from_list([{"text": "x"}]).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(ValueError, match=r"holds one Dataset, not a DatasetDict; drop '@dev'"):
        docs(f"hf:{tmp_path / 'one'}@dev")
    script = tmp_path / "my_set.py"
    script.write_text("import datasets\n")
    if int(hf.__version__.split(".")[0]) >= 4:
        with pytest.raises(ValueError, match=r"no longer runs loading scripts"):
            docs(f"hf:{script}")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_parquet(mixed / "a.parquet", wiki_rows(8))
    (mixed / "b.txt").write_text("text")
    with pytest.raises(ValueError, match=r"Parquet files cannot be mixed"):
        docs(str(mixed / "*"))


# ------------------------------------------------------ training commands


SMALL = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--eval-batches", "2", "--warmup-steps", "1",
         "--no-progress", "--precision", "fp32"]


def chat_rows(n=60):
    return [{"conversations": [{"from": "human", "value": f"Question {i}? 问题{i}"},
                               {"from": "gpt", "value": f"Answer {i}. " * (1 + i % 4)}]} for i in range(n)]


def test_pretrain_and_finetune_on_parquet_and_save_to_disk(hf, tmp_path, rows):
    from tfchat.checkpoint.model_dir import load_model
    from training import finetune, pretrain

    wiki = write_parquet(tmp_path / "wiki.parquet", [{"id": r["id"], "title": r["title"], "content": r["text"]}
                                                      for r in rows])
    run = str(tmp_path / "pretrain")
    args = [*SMALL, "--vocab-size", "512", "--data", wiki, "--text-column", "content", "--out", run, "--eval-every", "3"]
    assert pretrain.main([*args, "--steps", "3"]) == 0
    assert load_model(run).metadata["step"] == 3 and load_model(run).metadata["data"] == wiki
    assert pretrain.main([*args, "--steps", "5"]) == 0  # resumes from step 3
    assert load_model(run).metadata["step"] == 5

    # (save_to_disk pretraining reads the same documents as Parquet: test_every_backend_reads_the_same_documents)
    hf.Dataset.from_list(chat_rows()).save_to_disk(str(tmp_path / "chats"))
    chat = str(tmp_path / "chat")
    assert finetune.main(["--from", run, "--data", f"hf:{tmp_path / 'chats'}", "--out", chat, "--steps", "2",
                          *SMALL[2:], "--eval-every", "2"]) == 0
    assert load_model(chat).metadata["job"] == "finetune"
    pairs = write_parquet(tmp_path / "pairs.parquet", [{"query": f"Q{i}?", "reply": f"A{i}."} for i in range(80)])
    assert finetune.main(["--from", run, "--data", pairs, "--prompt-column", "query", "--response-column", "reply",
                          "--out", str(tmp_path / "chat-pairs"), "--steps", "2", *SMALL[2:], "--eval-every", "2"]) == 0


def test_commands_report_table_errors_in_one_line(parquet_glob, tmp_path, capsys):
    from training import finetune, pretrain

    out = str(tmp_path / "run")
    assert pretrain.main([*SMALL, "--data", parquet_glob, "--text-column", "body", "--out", out, "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "no column 'body' (columns: id, url, title, text)" in err and "Traceback" not in err
    assert pretrain.main([*SMALL, "--data", "hf:nobody/no-such-set", "--out", out, "--steps", "1"]) == 1
    assert "not in the local Hugging Face cache" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        finetune.main(["--prompt-column", "q", "--out", out])
    assert e.value.code == 2 and "go together" in capsys.readouterr().err
