"""Dialogue readers, validation and the convert command."""

from __future__ import annotations

import gzip
import json
import logging

import pytest
import tensorflow as tf

from tfchat.data import dialogues
from training import convert_dialogues


def msg(role, content):
    return {"role": role, "content": content}


def test_bundled_samples():
    stats = dialogues.ReadStats()
    conversations = dialogues.load_conversations("dialogues-sample", stats)
    assert stats.read == 639 and len(conversations) == 639 and not stats.skipped
    assert all(dialogues.validate(c) is None for c in conversations)
    # The first OASST tree: the rank-0 reply is followed.
    assert conversations[0][0] == msg("user", "How can I find the best 401k plan for my needs?")
    assert conversations[0][1]["content"].startswith("The first step is to research your options.")
    # Topical-Chat: agent_1 opens (user), agent_2 replies (assistant); no trailing user turn.
    topical = conversations[100]
    assert topical[0] == {**msg("user", "Are you a football fan?"), "tags": {"style": "curious", "topic": "sports"}}
    assert topical[1] == {**msg("assistant", "yes, I'm. a football fan."), "tags": {"style": "curious", "topic": "sports"}}
    assert all(c[-1]["role"] == "assistant" for c in conversations)
    splits = [dialogues.split_of(c) for c in conversations]
    assert 0 < splits.count("validation") < 100
    assert splits == [dialogues.split_of(c) for c in dialogues.load_conversations("dialogues-sample")]


def oasst_tree(tree_id, prompt_text, replies, deleted=False):
    return {"message_tree_id": tree_id, "tree_state": "ready_for_export",
            "prompt": {"message_id": tree_id, "text": prompt_text, "role": "prompter", "deleted": deleted,
                       "replies": replies}}


def reply(text, role="assistant", rank=None, replies=(), deleted=False):
    node = {"text": text, "role": role, "deleted": deleted, "replies": list(replies)}
    if rank is not None:
        node["rank"] = rank
    return node


def test_oasst_best_ranked_thread(tmp_path):
    trees = [
        oasst_tree("t1", "Question?", [
            reply("Second best", rank=1),
            reply("Deleted best", rank=0, deleted=True),
            reply("Best answer", rank=0, replies=[
                reply("Follow-up A", role="prompter"),
                reply("Follow-up B", role="prompter", replies=[reply("Unused")]),
            ]),
            reply("Unranked"),
        ]),
        oasst_tree("t2", "你好吗？", [reply("我很好。", rank=0)]),
        oasst_tree("t3", "Deleted prompt", [reply("x", rank=0)], deleted=True),
        oasst_tree("t4", "No answer yet", []),
    ]
    path = tmp_path / "trees.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in trees))
    stats = dialogues.ReadStats()
    convs = list(dialogues.read_conversations("oasst", str(path), stats))
    # Follow-up A (first unranked prompter) ends the thread: trailing user turn cut.
    assert convs == [[msg("user", "Question?"), msg("assistant", "Best answer")],
                     [msg("user", "你好吗？"), msg("assistant", "我很好。")]]
    assert stats.read == 4 and dict(stats.skipped) == {"deleted prompt": 1, "no assistant turn": 1}


def test_topical_chat_fixture(tmp_path):
    data = {
        "t_1": {"content": [{"agent": "agent_1", "message": "Do you like jazz?"},
                            {"agent": "agent_2", "message": "Yes, Miles Davis!"},
                            {"agent": "agent_1", "message": "Me too."}]},
        "t_2": {"content": [{"agent": "agent_1", "message": "Hi"}, {"agent": "agent_3", "message": "Who?"}]},
    }
    path = tmp_path / "tc.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    stats = dialogues.ReadStats()
    convs = list(dialogues.read_conversations("topical-chat", str(path), stats))
    assert convs == [[msg("user", "Do you like jazz?"), msg("assistant", "Yes, Miles Davis!")]]
    assert dict(stats.skipped) == {"unknown role": 1}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json: not a Topical-Chat JSON file"):
        list(dialogues.read_conversations("topical-chat", str(tmp_path / "bad.json")))


def test_cornell_fixture(tmp_path):
    sep = " +++$+++ "
    lines = [
        ["L1", "u0", "m0", "BIANCA", "Can we make this quick?  Café?"],
        ["L2", "u2", "m0", "CAMERON", "Well, I thought we'd start with pronunciation."],
        ["L3", "u0", "m0", "BIANCA", "Not the hacking and gagging."],
        ["L4", "u0", "m0", "BIANCA", "And spitting part."],
        ["L5", "u2", "m0", "CAMERON", "Okay... then how 'bout we try out some French cuisine."],
        ["L6", "u3", "m1", "JOE", "Alone."],
    ]
    corpus = tmp_path / "cornell"
    corpus.mkdir()
    (corpus / "movie_lines.txt").write_bytes("\n".join(sep.join(row) for row in lines).encode("iso-8859-1"))
    convs = [
        ["u0", "u2", "m0", "['L1', 'L2', 'L3', 'L4', 'L5']"],
        ["u3", "u4", "m1", "['L6', 'L99']"],  # refers to a missing line
        ["u3", "u4", "m1", "['L6']"],  # one speaker only: no assistant turn
    ]
    with gzip.open(corpus / "movie_conversations.txt.gz", "wb") as f:  # .gz is read transparently
        f.write("\n".join(sep.join(row) for row in convs).encode("iso-8859-1"))
    stats = dialogues.ReadStats()
    result = list(dialogues.read_conversations("cornell", str(corpus), stats))
    assert result == [[
        msg("user", "Can we make this quick?  Café?"),
        msg("assistant", "Well, I thought we'd start with pronunciation."),
        msg("user", "Not the hacking and gagging.\nAnd spitting part."),
        msg("assistant", "Okay... then how 'bout we try out some French cuisine."),
    ]]
    assert dict(stats.skipped) == {"refers to missing lines": 1, "no assistant turn": 1}


def test_dolly_tfds_mock_and_jsonl(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    examples = {"instruction": ["Summarize.", "Say hi."], "context": ["Long text.", ""],
                "response": ["Short.", "Hi!"], "category": ["summarization", "open_qa"]}
    as_dataset = lambda self, split, **kw: tf.data.Dataset.from_tensor_slices(examples)  # noqa: E731
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        convs = dialogues.load_conversations("tfds:databricks_dolly")
    assert convs == [[msg("user", "Summarize.\n\nLong text."), msg("assistant", "Short.")],
                     [msg("user", "Say hi."), msg("assistant", "Hi!")]]
    with tfds.testing.mock_data(num_examples=3):  # random mock data flows through too
        assert len(dialogues.load_conversations("tfds:databricks_dolly")) == 3
    path = tmp_path / "dolly.jsonl"
    path.write_text(json.dumps({"instruction": "Q", "context": "", "response": "A", "category": "x"}) + "\n")
    assert dialogues.load_conversations(f"dolly:{path}") == [[msg("user", "Q"), msg("assistant", "A")]]


BAD_LINES = [
    json.dumps({"messages": [msg("user", "Hi 你好"), msg("assistant", "Hello 你好")]}, ensure_ascii=False),
    "{not json",
    json.dumps({"text": "no messages"}),
    json.dumps({"messages": [{"role": "user"}, msg("assistant", "x")]}),
    json.dumps({"messages": [msg("robot", "beep"), msg("assistant", "x")]}),
    json.dumps({"messages": [msg("user", "   "), msg("assistant", "x")]}),
    json.dumps({"messages": [msg("user", "only a question")]}),
    json.dumps({"messages": [msg("user", "q"), msg("system", "late"), msg("assistant", "a")]}),
    json.dumps({"messages": [msg("system", "Be brief."), msg("user", "q"), msg("assistant", "a")]}),
]


def test_messages_jsonl_validation(tmp_path, caplog):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    stats = dialogues.ReadStats()
    with caplog.at_level(logging.WARNING):
        convs = dialogues.load_conversations(str(path), stats)
    assert convs == [json.loads(BAD_LINES[0])["messages"], json.loads(BAD_LINES[-1])["messages"]]
    assert stats.read == 9 and stats.total_kept == 2
    assert dict(stats.skipped) == {
        "not JSON": 1, 'no "messages" list': 1, "message lacks role or content": 1, "unknown role": 1,
        "empty content": 1, "no assistant turn": 1, "system message not first": 1,
    }
    assert f"{path}:2: skipped: not JSON" in caplog.text
    assert f"{path}:7: skipped: no assistant turn" in caplog.text


def test_nothing_usable_names_the_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_LINES[1:8]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: no usable messages conversations .*bad\.jsonl:1: not JSON"):
        dialogues.load_conversations(str(path))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        dialogues.load_conversations(str(tmp_path / "missing.jsonl"))


def test_convert_command(tmp_path, capsys):
    src = tmp_path / "chats.jsonl"
    src.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "clean.jsonl"
    assert convert_dialogues.main(["--format", "messages", "--input", str(src), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["read"], report["written"], report["skipped"]) == (9, 2, 7)
    assert dialogues.load_conversations(str(out)) == dialogues.load_conversations(str(src))
    assert sorted(p.name for p in out.parent.iterdir()) == ["clean.jsonl"]  # no temp file left

    # OASST sample -> messages-JSONL, gzip output.
    out_gz = tmp_path / "oasst.jsonl.gz"
    oasst = dialogues.parse_dialogue_source("dialogues-sample")[0][1]
    assert convert_dialogues.main(["--format", "oasst", "--input", oasst, "--out", str(out_gz)]) == 0
    assert len(dialogues.load_conversations(str(out_gz))) == 100

    # Nothing usable: exit 1, a message naming the file, no output file.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    assert convert_dialogues.main(["--format", "messages", "--input", str(bad), "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "bad.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_a_line_nested_past_pythons_stack_is_skipped_as_not_json(tmp_path, caplog):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n" + BAD_LINES[0] + "\n", encoding="utf-8")
    stats = dialogues.ReadStats()
    with caplog.at_level(logging.WARNING):
        convs = dialogues.load_conversations(str(path), stats)
    assert convs == [json.loads(BAD_LINES[0])["messages"]] and dict(stats.skipped) == {"not JSON": 1}
    assert f"{path}:1: skipped: not JSON (nested too deeply)" in caplog.text
