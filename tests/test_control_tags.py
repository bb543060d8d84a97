"""Control tags on the data and evaluation side: readers, tag dropout, rendering, the control agreement."""

import gzip
import json

import numpy as np
import pytest

from tfchat.data import batches, dialogues, io, labelled
from tfchat.data.io import ReadStats
from tfchat.text.control_tags import TagVocabulary


def test_topical_chat_turns_carry_style_and_their_conversations_topic():
    conversations = dialogues.load_conversations("chat-sample")
    tagged = [c for c in conversations if any(m.get("tags") for m in c)]
    assert len(tagged) == 1078  # both Topical-Chat files; the OASST trees carry no tags
    values = dialogues.tag_values(conversations)
    assert values["topic"] == ["books", "entertainment_general", "fashion", "movies", "music", "politics",
                               "sci_tech", "sports"]
    assert values["style"] == ["angry", "curious", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"]
    # The raw file: sentiment per turn, topic by the majority of the reading set's entities.
    path = io.resource_path("topical-chat-valid-freq.json.gz")
    with gzip.open(path, "rt") as f:
        conv_id, raw = next(iter(json.load(f).items()))
    first = next(c for c in conversations if c[0]["content"] == raw["content"][0]["message"])
    assert [m["tags"]["style"] for m in first] == [dialogues.topical_chat_style(t["sentiment"])
                                                   for t in raw["content"]][:len(first)]
    assert {m["tags"]["topic"] for m in first} == {dialogues.topical_chat_topics(path)[conv_id]}
    assert dialogues.topical_chat_style("Curious to dive deeper") == "curious"


def test_topical_chat_without_reading_sets_gets_style_only(tmp_path, caplog):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"c1": {"content": [
        {"agent": "agent_1", "message": "hi there", "sentiment": "Happy"},
        {"agent": "agent_2", "message": "hello", "sentiment": "Neutral"}]}}))
    [conv] = dialogues.load_conversations(f"topical-chat:{path}")
    assert [m["tags"] for m in conv] == [{"style": "happy"}, {"style": "neutral"}]
    assert "no topic" in caplog.text


def test_messages_jsonl_tags_conversation_and_message_level(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                      {"role": "user", "content": "more"},
                      {"role": "assistant", "content": "sure", "tags": {"style": "sad"}}],
         "tags": {"topic": "music", "style": "happy"}},
        {"prompt": "q", "response": "a", "tags": {"topic": "books"}},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "tags": {"style": 3}}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "tags": ["music"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = ReadStats()
    first, second = dialogues.load_conversations(str(path), stats)
    assert [m.get("tags") for m in first] == [None, {"topic": "music", "style": "happy"}, None,
                                              {"topic": "music", "style": "sad"}]
    assert second[1]["tags"] == {"topic": "books"}
    assert sum(stats.skipped.values()) == 2 and "tags is not an object" in " ".join(stats.first_problems.values())
    # Written back, the tags survive; tagging does not move a conversation between splits.
    out = tmp_path / "out.jsonl"
    dialogues.write_messages_jsonl([first], str(out))
    assert dialogues.load_conversations(str(out)) == [first]
    untagged = [{k: v for k, v in m.items() if k != "tags"} for m in first]
    assert dialogues.split_of(first) == dialogues.split_of(untagged)


def test_tag_dropout_drops_names_per_conversation():
    conv = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "a", "tags": {"topic": "music", "style": "happy"}},
            {"role": "assistant", "content": "b", "tags": {"topic": "music", "style": "sad"}}]
    rng = np.random.default_rng(0)
    assert batches.drop_tags(conv, rng, 0.0) == conv
    assert all(not m.get("tags") for m in batches.drop_tags(conv, rng, 1.0))
    kept = [batches.drop_tags(conv, rng, 0.2) for _ in range(2000)]
    for name in ("topic", "style"):
        present = [[name in (m.get("tags") or {}) for m in c[1:]] for c in kept]
        assert all(a == b for a, b in present)  # a name goes from the whole conversation or not at all
        assert 0.17 < 1 - np.mean([p[0] for p in present]) < 0.23
    assert conv[1]["tags"] == {"topic": "music", "style": "happy"}  # the input is not modified


def test_rendered_tags_precede_replies_and_are_never_learned(data_tokenizer):
    tok = data_tokenizer
    vocab = TagVocabulary({"style": ["happy", "sad"], "topic": ["music", "sports"]}, tok.special)
    conv = [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "tags": {"topic": "sports", "style": "sad"}}]
    (ids,), (mask,), _ = batches.render_conversations([conv], tok, 64, tags=vocab)
    controls = set(tok.special.controls)
    at = list(ids).index(tok.assistant_id)
    assert list(ids[at + 1: at + 3]) == vocab.ids({"style": "sad", "topic": "sports"})
    assert not any(m for t, m in zip(ids, mask) if t in controls)
    (plain,), _, _ = batches.render_conversations([conv], tok, 64)  # a model without tags ignores them
    assert not controls & set(plain.tolist()) and len(plain) == len(ids) - 2
    (dropped,), _, _ = batches.render_conversations([conv], tok, 64, tags=vocab, tag_dropout=0.999)
    assert dropped.tolist() == plain.tolist()
    with pytest.raises(ValueError, match="unknown topic 'jazz'"):
        batches.render_conversations([[conv[0], {**conv[1], "tags": {"topic": "jazz"}}]], tok, 64, tags=vocab)


def test_style_and_topic_examples_follow_the_chat_split():
    assert {e.labels[0] for e in labelled.read_labelled_source("topic-sample")} >= {"sports", "music", "fashion"}
    path = io.resource_path("topical-chat-valid-rare.json.xz")
    examples = list(labelled.read_labelled_source(f"topical-chat-style:{path}"))
    conversations = dialogues.load_conversations(f"topical-chat:{path}")
    held_out = [" ".join(m["content"].split()) for c in conversations if dialogues.split_of(c) == "validation"
                for m in c]
    assert held_out and sorted(e.text for e in examples if e.split == "validation") == sorted(held_out)
    assert labelled.TASKS["style"].default_data == "style-sample"


class _RuleClassifier:
    """Labels a reply by its length: a stand-in whose agreement can be counted by hand."""

    def __init__(self, labels):
        self.labels, self.path = list(labels), "rule"

    def predict(self, texts):
        return [[self.labels[len(t) % len(self.labels)]] for t in texts]


def test_control_agreement_counts_what_the_classifier_says(tmp_path):
    from tests.fixtures import tiny_chat_dir
    from tfchat.checkpoint.model_dir import load_model
    from tfchat.eval.control import control_agreement
    from tfchat.eval.evaluate import greedy_replies
    from tfchat.text import chat_template

    loaded = tiny_chat_dir(tmp_path / "chat")
    with open(tmp_path / "chat" / "tfchat.json") as f:
        meta = json.load(f)
    meta["tags"] = {"style": ["happy", "sad"], "topic": ["music", "sports"]}
    with open(tmp_path / "chat" / "tfchat.json", "w") as f:
        json.dump(meta, f)
    loaded = load_model(str(tmp_path / "chat"))
    classifier = _RuleClassifier(["happy", "sad"])
    prompts = ["the cat sat", "a dog ran far", "hello there"]
    result = control_agreement(loaded, {"style": classifier}, prompts, {"style": {"happy": 0.9, "sad": 0.1}},
                               max_new_tokens=6, batch_size=2)
    style = result["style"]
    assert result["prompts"] == 3 and "topic" not in result and style["counted"] == ["happy", "sad"]
    samples = result["samples"]
    assert len(samples) == 3 * 3  # untagged + one run per style value
    for value in ("happy", "sad"):
        tagged = [s["reply"] for s in samples if s["tags"] == {"style": value}]
        assert style["per_tag"][value]["tagged"] == pytest.approx(np.mean([classifier.predict([r])[0][0] == value
                                                                           for r in tagged]))
    assert style["tagged"] == pytest.approx((style["per_tag"]["happy"]["tagged"] + style["per_tag"]["sad"]["tagged"]) / 2)
    untagged = [s for s in samples if not s["tags"]]
    assert [s["style"] for s in untagged] == [classifier.predict([s["reply"]])[0][0] for s in untagged]

    # The reference: the classifier on real replies with their tags (the rule says happy for even lengths).
    real = [("ab", {"style": "happy"}), ("abcd", {"style": "happy"}), ("x", {"style": "happy"}),
            ("abc", {"style": "sad"}), ("yz", {"topic": "music"})]
    ref = control_agreement(loaded, {"style": classifier}, prompts[:1], {"style": {"happy": 0.9, "sad": 0.1}},
                            max_new_tokens=2, references=real)["style"]["reference"]
    # happy: 2 of its 3 replies said happy, 2 of all 4 style replies; sad: 1 of 1, 2 of 4.
    assert ref == {"tagged": pytest.approx((2 / 3 + 1) / 2), "untagged": pytest.approx(0.5), "replies": 4}
    assert "reference" not in style

    # With guidance, each tagged reply is decoded against its untagged prompt; the untagged replies stay.
    guided = control_agreement(loaded, {"style": classifier}, prompts, max_new_tokens=6, guidance=3.0)
    assert guided["guidance"] == 3.0 and result["guidance"] == 1.0
    assert [s["reply"] for s in guided["samples"] if not s["tags"]] == [s["reply"] for s in untagged]
    tok, context = loaded.tokenizer, loaded.config.block_size
    chats = [[{"role": "user", "content": p}] for p in prompts]
    plain = [chat_template.prompt(c, tok, context - 6, tags=loaded.tags) for c in chats]
    happy = [chat_template.prompt(c, tok, context - 6, tags=loaded.tags, reply_tags={"style": "happy"}) for c in chats]
    want = greedy_replies(loaded, happy, 6, guidance=3.0, unguided=plain)
    assert [s["reply"] for s in guided["samples"] if s["tags"] == {"style": "happy"}] == want
    with pytest.raises(ValueError, match="lacks the model's values"):
        control_agreement(loaded, {"style": _RuleClassifier(["happy", "angry"])}, prompts, max_new_tokens=2)


def test_evaluate_control_needs_a_tagged_model(tmp_path, capsys):
    from tests.fixtures import tiny_chat_dir
    from training import evaluate

    tiny_chat_dir(tmp_path / "chat")
    assert evaluate.main(["--model", str(tmp_path / "chat"), "--control"]) == 1
    assert "has no tag vocabulary" in capsys.readouterr().err
    for flags in (["--style-classifier", "x"], ["--guidance", "3"], ["--control", "--guidance", "31"]):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--model", str(tmp_path / "chat"), *flags, "--data", "chat-sample"])
        assert e.value.code == 2
