"""Preference data: hh-rlhf, OpenAssistant and preference-JSONL readers, sources, split, rendering, batches, conversion."""

import gzip
import json

import numpy as np
import pytest

from tfchat.data import preferences
from tfchat.data.io import ReadStats
from tfchat.data.pair_batches import pair_batches, preference_splits, render_pairs
from tfchat.data.preferences import Pair, load_pairs, read_pairs
from tfchat.text import chat_template
from tests.fixtures import tiny_tokenizer, write_preferences
from training import convert_dialogues


def _write(path, records, raw_lines=()):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return str(path)


def _hh(*turns):
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


# ----------------------------------------------------------------------------- hh-rlhf


def test_hh_rlhf_common_prefix_is_the_multi_turn_prompt(tmp_path):
    context = [("Human", "Hi there "), ("Assistant", "Hello."), ("Human", "How do I pick a lock?")]
    path = _write(tmp_path / "hh.jsonl", [
        {"chosen": _hh(*context, ("Assistant", " I would rather not help with that. ")),
         "rejected": _hh(*context, ("Assistant", "Use a bobby pin."))},
    ])
    [pair] = read_pairs("hh-rlhf", path)
    assert pair.messages == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
                             {"role": "user", "content": "How do I pick a lock?"}]
    assert (pair.chosen, pair.rejected, pair.source) == ("I would rather not help with that.", "Use a bobby pin.",
                                                         "hh-rlhf")


def test_hh_rlhf_unusable_pairs_are_skipped_and_counted(tmp_path):
    good = {"chosen": _hh(("Human", "Q?"), ("Assistant", "A.")), "rejected": _hh(("Human", "Q?"), ("Assistant", "B."))}
    early = {"chosen": _hh(("Human", "Q?"), ("Assistant", "A."), ("Human", "More?"), ("Assistant", "C.")),
             "rejected": _hh(("Human", "Q?"), ("Assistant", "B."), ("Human", "More?"), ("Assistant", "D."))}
    extra_turn = {"chosen": _hh(("Human", "Q?"), ("Assistant", "A."), ("Human", "Hm")),
                  "rejected": _hh(("Human", "Q?"), ("Assistant", "B."))}
    empty = {"chosen": _hh(("Human", "Q?")) + "\n\nAssistant:", "rejected": _hh(("Human", "Q?"), ("Assistant", "B."))}
    same = {"chosen": good["chosen"], "rejected": good["chosen"]}
    path = _write(tmp_path / "hh.jsonl", [good, early, extra_turn, empty, same])
    stats = ReadStats()
    pairs = list(read_pairs("hh-rlhf", path, stats))
    assert [(p.chosen, p.rejected) for p in pairs] == [("A.", "B.")]
    assert stats.read == 5 and stats.kept["pairs"] == 1
    assert stats.skipped == {"transcripts differ before the final assistant reply": 2, "empty reply": 1,
                             "identical replies": 1}


@pytest.mark.parametrize("bad_line", ['{"chosen": "x"', '{"chosen": "\\n\\nHuman: q"}', '["not", "a", "record"]'])
def test_hh_rlhf_malformed_line_is_an_error_with_its_line_number(tmp_path, bad_line):
    good = {"chosen": _hh(("Human", "Q?"), ("Assistant", "A.")), "rejected": _hh(("Human", "Q?"), ("Assistant", "B."))}
    path = _write(tmp_path / "hh.jsonl", [good, good], raw_lines=["", bad_line])
    with pytest.raises(ValueError, match=r"hh\.jsonl:4: "):
        list(read_pairs("hh-rlhf", path))


def test_bundled_hh_rlhf_sample():
    stats = ReadStats()
    pairs = load_pairs("hh-rlhf-sample", stats)
    # 2,312 pairs, 5 whose transcripts differ before the last reply and 4 with an empty reply.
    assert stats.read == 2312 and len(pairs) == 2303
    assert stats.skipped == {"transcripts differ before the final assistant reply": 5, "empty reply": 4}
    assert all(p.messages[-1]["role"] == "user" and p.chosen != p.rejected for p in pairs)


# ----------------------------------------------------------------------------- OpenAssistant


def _node(role, text, rank=None, replies=(), **extra):
    return {"role": role, "text": text, "rank": rank, "replies": list(replies), "message_id": text, **extra}


def test_oasst_ranked_siblings_ties_and_deep_context(tmp_path):
    follow_up = _node("prompter", "And in winter?", replies=[
        _node("assistant", "Wear a coat.", rank=1), _node("assistant", "Stay warm and dry.", rank=0)])
    tree = {"message_tree_id": "t1", "prompt": _node("prompter", "How do I dress for a hike?", replies=[
        _node("assistant", "Layers and good boots.", rank=0, replies=[follow_up]),
        _node("assistant", "Jeans.", rank=1),
        _node("assistant", "Shorts.", rank=1),                      # ties with "Jeans."
        _node("assistant", "Anything.", rank=None),                  # unranked: in no pair
        _node("assistant", "Deleted.", rank=2, deleted=True),         # never used
    ])}
    path = _write(tmp_path / "trees.jsonl", [tree])
    stats = ReadStats()
    pairs = list(read_pairs("oasst", path, stats))
    top = [(p.chosen, p.rejected) for p in pairs if len(p.messages) == 1]
    assert top == [("Layers and good boots.", "Jeans."), ("Layers and good boots.", "Shorts.")]
    [deep] = [p for p in pairs if len(p.messages) > 1]
    assert deep.messages == [{"role": "user", "content": "How do I dress for a hike?"},
                             {"role": "assistant", "content": "Layers and good boots."},
                             {"role": "user", "content": "And in winter?"}]
    assert (deep.chosen, deep.rejected) == ("Stay warm and dry.", "Wear a coat.")
    assert stats.skipped["tie"] == 1 and stats.skipped["unranked reply"] == 1


def test_oasst_malformed_line_is_an_error_with_its_line_number(tmp_path):
    tree = {"prompt": _node("prompter", "Q?", replies=[_node("assistant", "A", rank=0), _node("assistant", "B", rank=1)])}
    path = _write(tmp_path / "trees.jsonl", [tree, {"no_prompt": 1}])
    with pytest.raises(ValueError, match=r"trees\.jsonl:2: not an OpenAssistant message tree"):
        list(read_pairs("oasst", path))


def test_bundled_oasst_pairs():
    stats = ReadStats()
    pairs = load_pairs("oasst-pairs-sample", stats)
    assert len(pairs) > 500 and all(p.source == "oasst" for p in pairs)
    assert stats.skipped.get("tie", 0) + stats.skipped["unranked reply"] > 0
    assert any(len(p.messages) > 1 for p in pairs)  # follow-ups give pairs too


# ----------------------------------------------------------------------------- preference JSONL and sources


def test_preference_jsonl_reader_and_its_errors(tmp_path):
    ok = {"messages": [{"role": "user", "content": "Hi"}], "chosen": {"role": "assistant", "content": "Hello!"},
          "rejected": "Go away."}
    [pair] = read_pairs("messages", _write(tmp_path / "ok.jsonl", [ok]))
    assert (pair.chosen, pair.rejected) == ("Hello!", "Go away.")
    assert pair.to_json()["rejected"] == {"role": "assistant", "content": "Go away."}
    bad = [
        ({**ok, "chosen": {"role": "user", "content": "x"}}, "chosen"),
        ({**ok, "messages": [{"role": "robot", "content": "Hi"}]}, "unknown role"),
        ({**ok, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
         "does not end with a user message"),
        ({"chosen": "a", "rejected": "b"}, "not a preference record"),
    ]
    for i, (record, message) in enumerate(bad):
        path = _write(tmp_path / f"bad{i}.jsonl", [ok, record])
        with pytest.raises(ValueError, match=rf"bad{i}\.jsonl:2: .*{message}"):
            list(read_pairs("messages", path))


def test_source_names_formats_and_sniffing(tmp_path):
    prefs = write_preferences(tmp_path / "p.jsonl", 5)
    hh = _write(tmp_path / "hh.jsonl", [{"chosen": _hh(("Human", "Q"), ("Assistant", "A")),
                                         "rejected": _hh(("Human", "Q"), ("Assistant", "B"))}])
    assert preferences.parse_source(prefs) == [("messages", prefs)]
    assert preferences.parse_source(hh) == [("hh-rlhf", hh)]
    assert preferences.parse_source(f"hh-rlhf:{hh}") == [("hh-rlhf", hh)]
    assert preferences.parse_source(f"oasst-pairs:{hh}")[0][0] == "oasst"
    assert [f for f, _ in preferences.parse_source("preferences-sample")] == ["hh-rlhf", "oasst"]
    with pytest.raises(FileNotFoundError, match="not a bundled sample"):
        preferences.parse_source(str(tmp_path / "missing.jsonl"))
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    with pytest.raises(ValueError, match="FORMAT:PATH"):
        preferences.parse_source(str(text))
    with pytest.raises(ValueError, match="no usable hh-rlhf preference pairs"):
        list(read_pairs("hh-rlhf", _write(tmp_path / "empty.jsonl", [])))


def test_split_is_by_prompt_and_deterministic():
    pairs = load_pairs("oasst-pairs-sample")
    by_prompt = {}
    for p in pairs:
        by_prompt.setdefault(p.prompt_key, set()).add(preferences.split_of(p))
    assert all(len(splits) == 1 for splits in by_prompt.values())  # one prompt, one side
    held = [p for p in pairs if preferences.split_of(p) == "validation"]
    assert 0.1 < len(held) / len(pairs) < 0.3  # VALIDATION_PERCENT = 20
    assert held == preferences.in_split(load_pairs("oasst-pairs-sample"), "validation")


# ----------------------------------------------------------------------------- rendering and batches


def _pair(context_turns=0, chosen="The fox is quick.", rejected="No."):
    messages = []
    for i in range(context_turns):
        messages += [{"role": "user", "content": f"Question {i} about the lazy dog?"},
                     {"role": "assistant", "content": f"Answer {i}: the dog is lazy."}]
    messages.append({"role": "user", "content": "Tell me about the fox."})
    return Pair(messages, chosen, rejected)


def test_render_reply_masks_the_final_reply_only():
    tok = tiny_tokenizer()
    pair = _pair(context_turns=2)
    roles = [m["role"] for m in pair.messages]
    encoded = [tok.encode(m["content"]) for m in pair.messages]
    reply = tok.encode(pair.chosen)
    ids, mask = chat_template.render_reply(roles, encoded, reply, tok, max_len=512)
    full, full_mask = chat_template.render(pair.messages + [{"role": "assistant", "content": pair.chosen}], tok, 512)
    assert ids == full  # the same ids as fine-tuning renders
    start = len(ids) - len(reply) - 1
    assert mask == [0] * start + [1] * (len(reply) + 1)
    assert ids[start - 1] == tok.assistant_id and ids[-1] == tok.end_id
    assert sum(full_mask) > sum(mask)  # fine-tuning also trains the earlier replies; preferences do not


def test_render_pairs_share_context_drop_old_turns_and_skip_what_cannot_fit():
    tok = tiny_tokenizer()
    long_reply = "The quick brown fox jumps over the lazy dog. " * 3
    pairs = [_pair(0), _pair(3, chosen=long_reply), _pair(0, chosen=long_reply * 8)]
    rendered = render_pairs(pairs, tok, max_len=96)
    assert rendered.skipped == 1 and rendered.pairs == pairs[:2]  # the third cannot fit whole
    for c, r, n in zip(rendered.chosen, rendered.rejected, rendered.prompt_lengths):
        assert c[:n] == r[:n] and c[n - 1] == tok.assistant_id  # same context for both replies
        assert len(c) <= 96 and len(r) <= 96
    full = chat_template.prompt(pairs[1].messages, tok, 10_000)
    kept = rendered.chosen[1][: rendered.prompt_lengths[1]]
    assert len(kept) < len(full) and full[-len(kept) + 1:] == kept[1:]  # oldest whole turns dropped
    assert rendered.reply_lengths()[0].tolist() == [len(tok.encode(pairs[0].chosen)) + 1,
                                                    len(tok.encode(pairs[0].rejected)) + 1]


def test_pair_batches_layout_reference_values_and_shards():
    tok = tiny_tokenizer()
    rendered = render_pairs([_pair(i % 2, chosen=f"The fox {i}.") for i in range(6)], tok, max_len=64)
    ref = np.arange(12, dtype=np.float32).reshape(6, 2)
    ds = pair_batches(rendered, 64, 4, tok.pad_id, ref_logps=ref, repeat=False)
    batches = list(ds.as_numpy_iterator())
    assert [b["token_ids"].shape for b in batches] == [(4, 2, 64), (2, 2, 64)]
    ids = np.concatenate([b["token_ids"] for b in batches])
    mask = np.concatenate([b["loss_mask"] for b in batches])
    lengths = np.concatenate([b["lengths"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["ref_logps"] for b in batches]), ref)
    for i in range(6):
        for row, seq in enumerate((rendered.chosen[i], rendered.rejected[i])):
            assert lengths[i, row] == len(seq) and ids[i, row, : len(seq)].tolist() == seq
            assert (ids[i, row, len(seq):] == tok.pad_id).all()
            assert np.flatnonzero(mask[i, row]).tolist() == list(range(rendered.prompt_lengths[i], len(seq)))

    class Ctx:
        num_input_pipelines, input_pipeline_id = 2, 1

    shard = list(pair_batches(rendered, 64, 8, tok.pad_id, input_context=Ctx(), repeat=False).as_numpy_iterator())
    assert shard[0]["token_ids"].shape[0] == 3
    np.testing.assert_array_equal(shard[0]["token_ids"][:, 0], ids[1::2, 0])
    a = next(iter(pair_batches(rendered, 64, 4, tok.pad_id, seed=3)))["token_ids"].numpy()
    b = next(iter(pair_batches(rendered, 64, 4, tok.pad_id, seed=3)))["token_ids"].numpy()
    np.testing.assert_array_equal(a, b)


def test_no_pair_fits_is_a_clear_error(tmp_path):
    path = write_preferences(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="no preference pair of the 'train' split fits 12 tokens"):
        preference_splits(path, tiny_tokenizer(), 12)


# ----------------------------------------------------------------------------- conversion


def test_convert_hh_rlhf_to_preference_jsonl(tmp_path, capsys):
    context = [("Human", "Hi"), ("Assistant", "Hello."), ("Human", "Tell me a joke.")]
    records = [{"chosen": _hh(*context, ("Assistant", f"A joke {i}.")), "rejected": _hh(*context, ("Assistant", "No."))}
               for i in range(3)]
    src = tmp_path / "hh.jsonl.gz"
    with gzip.open(src, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    out = tmp_path / "pairs.jsonl"
    assert convert_dialogues.main(["--format", "hh-rlhf", "--input", str(src), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["written"] == 3 and report["skipped"] == 0
    assert [(p.messages, p.chosen) for p in load_pairs(str(out))] == [
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
          {"role": "user", "content": "Tell me a joke."}], f"A joke {i}.") for i in range(3)]


def test_convert_malformed_preferences_names_the_line(tmp_path, capsys):
    src = _write(tmp_path / "hh.jsonl", [], raw_lines=["{not json"])
    out = tmp_path / "pairs.jsonl"
    assert convert_dialogues.main(["--format", "hh-rlhf", "--input", src, "--out", str(out)]) == 1
    assert "hh.jsonl:1: not JSON" in capsys.readouterr().err
    assert not out.exists()
